"""``algorithm.pairs``: preference-pair training (algorithm.name pairs_online / pairs_offline).

Kept apart from ``schema.py`` for length only; ``schema.AlgorithmConfig`` holds it like every group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_elo.config.schema_base import opt


@dataclass(kw_only=True)
class PairsConfig:
    """The pair loss, how online iterations make pairs, and the offline pair file."""

    loss: Literal["dpo", "ipo", "simpo", "orpo", "sppo", "inpo"] = opt(
        "dpo", "The pair loss (loss/pairs.py): dpo, ipo, simpo (no reference), orpo (no reference), sppo (against the "
               "iteration's start), inpo (initial model and iteration start).")
    beta: float = opt(0.1, "DPO / IPO / SimPO beta; SPPO: 1 / eta (authors' eta 1000 -> 0.001); INPO: eta (authors 0.005).")
    label_smoothing: float = opt(0.0, "DPO / SimPO: probability a label is flipped (conservative DPO); with robust: "
                                      "robust DPO's noise rate (< 0.5).")
    robust: bool = opt(False, "DPO: the robust (unbiased) estimator under label_smoothing noise instead of the conservative one.")
    ipo_length_normalize: bool = opt(False, "IPO: divide each answer's log-ratio by its length (TRL's form); false: the "
                                            "paper's summed log-ratios.")
    simpo_gamma_beta_ratio: float = opt(0.55, "SimPO: target margin gamma / beta (authors: 0.55 with beta 2.5).")
    orpo_lambda: float = opt(0.1, "ORPO: weight lambda of the odds-ratio term beside the chosen answer's NLL.")
    inpo_tau_ratio: float = opt(1.0 / 3.0, "INPO: tau / eta, the weight of the initial model's log-ratio (authors 1/3).")
    reference: Literal["initial", "previous_iterate"] = opt(
        "initial", "DPO / IPO reference: the initial model (a frozen copy), or the weights at the start of each "
                   "iteration (SPARTA's and INPO's 'previous iterate': no extra model).")
    sppo_targets: Literal["hard", "win_rate"] = opt(
        "hard", "SPPO: hard targets (P = 1 chosen, 0 rejected) or each answer's win rate in this iteration's games.")
    games: Literal["tournament", "opponents"] = opt(
        "tournament", "pairs_online: judge the n samples of a prompt against each other (knock-out: n - 1 games to the "
                      "best, n/2 - 1 more to the worst) or each against an opponent drawn from the Elo pool "
                      "(algorithm.elo; the ratings update from every decided game). Read by pairs_online only (eva: "
                      "algorithm.eva.scorer).")
    rule: Literal["best_vs_worst", "winner_vs_beaten", "all_decided"] = opt(
        "best_vs_worst", "Which pairs a prompt gives: its best sample vs its worst (a decided difference), the "
                         "tournament winner vs each answer it beat (tournament only), or every decided game's "
                         "(winner, loser) (opponents: every higher-reward vs lower-reward sample). pairs_online and "
                         "eva; tsr and evolve pair by their own rules.")
    epochs: int = opt(1, "pairs_online: passes over each iteration's pairs (reshuffled per pass) before the reference moves.")
    path: str | None = opt(None, "pairs_offline: the pair file (.jsonl / .parquet).")
    prompt_field: str | None = opt("prompt", "Pair file: the prompt (text or chat messages); None: the prompt is the "
                                             "conversation before chosen's last message (implicit prompt).")
    chosen_field: str = opt("chosen", "Pair file: the preferred answer (text, or messages ending in the assistant's).")
    rejected_field: str = opt("rejected", "Pair file: the other answer (same layout as chosen).")
    id_field: str | None = opt("id", "Pair file: a unique row id; rows without it get a content hash.")
