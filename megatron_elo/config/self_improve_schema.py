"""``algorithm.eva``, ``algorithm.tsr``, ``algorithm.evolve``: the self-improvement methods' settings
(algorithm.name eva / tsr / evolve; their update is ``algorithm.pairs``: loss, beta, reference, epochs).

Kept apart from ``schema.py`` for length only; ``schema.AlgorithmConfig`` holds them like every group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_elo.config.schema_base import opt


@dataclass(kw_only=True)
class EvaConfig:
    """eva (arXiv 2411.00062): a creator evolves the most informative prompts; the solver trains on a mix."""

    scorer: Literal["absolute", "opponents"] = opt(
        "absolute", "What rewards the solver's samples: absolute: the judge's grade of each answer alone (or "
                    "algorithm.reward_model); opponents: each sample's game against an opponent drawn from the Elo pool "
                    "(win 1, loss 0: pairwise games turned into win rates; the ratings update).")
    informativeness: Literal["max_min", "max_mean", "variance"] = opt(
        "max_min", "A prompt's informativeness from its samples' rewards: max - min (authors' default), max - mean, "
                   "or their variance.")
    evolve_fraction: float = opt(0.25, "Share of each step's prompts drawn (without replacement, weights: min-max "
                                       "normalised informativeness) for the creator (authors: 0.25).")
    rewrites: int = opt(4, "Rewrites the creator makes of each drawn prompt (authors: 4), one template each in turn.")
    evolved_share: float = opt(0.8, "Share of each step's prompts taken from the evolved buffer while it has them, the "
                                    "rest from the data set (the authors' 80% evolved / 20% original is of pairs; with "
                                    "one best-vs-worst pair per prompt the two differ only by prompts without a pair).")
    buffer_size: int = opt(512, "Evolved prompts waiting to be trained on, at most; the oldest are dropped first (counted).")
    creator: str = opt("programmatic", "Who rewrites: programmatic (the arithmetic task's harder variants: one more "
                                       "term, or a wider operand; references recomputed) or the name of an opponent "
                                       "whose engine rewrites each prompt from the templates (no references: use an "
                                       "LLM judge or a reward model).")
    templates: list[str] = opt(factory=list, help="creator=<opponent>: the rewrite prompt files ({prompt}); empty: the "
                                                  "EvolInstruct-style ones in configs/eva/ (deepen, constraints, "
                                                  "concretize, reasoning).")


@dataclass(kw_only=True)
class TsrConfig:
    """Temporal Self-Rewarding (arXiv 2508.06026): the initial model anchors the rejected side, a look-ahead
    model the chosen one."""

    anchor: str | None = opt(None, "The opponent that serves M_0, the initial checkpoint (its own engine, sampling like "
                                   "rollout; each prompt's k samples are drawn once with the run's seed, stored and "
                                   "reused); required.")
    future: bool = opt(True, "Phase 2, future-guided chosen: train a look-ahead copy M_f on the phase-1 pairs, let its "
                             "best sample replace chosen when it scores higher, then train M_i on those pairs (M_f is "
                             "discarded); false: the anchored-rejection pairs train M_i directly (the ablation).")


@dataclass(kw_only=True)
class EvolveConfig:
    """EVOLVE: answer, refine the draft r times, learn from both kinds of pairs."""

    chain: int = opt(2, "Refinements chained after each answer (the draft, then refinements 1..chain of the previous "
                        "link), in training and evaluation.")
    refine_share: float = opt(0.5, "Share of each iteration's pairs that are 'refine this draft' pairs (the rest: direct "
                                   "answers' best vs worst); the larger kind is subsampled to reach it; an iteration with "
                                   "only one kind keeps it whatever the share (our choice: the paper leaves the mix open).")
    refine_template: str | None = opt(None, "The refinement prompt ({prompt}, {draft}); default "
                                            "configs/evolve/refine.txt.")
