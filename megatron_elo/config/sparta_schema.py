"""``players`` and ``algorithm.sparta``: SPARTA's tribe of trained models (algorithm.name=sparta).

Kept apart from ``schema.py`` for length only; ``schema.RunConfig`` holds them like every group.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Literal

from megatron_elo.config.schema_base import opt


@dataclass(kw_only=True)
class TribePlayerConfig:
    """One trained model of a SPARTA tribe: ``model`` (architecture, dtype, tokenizer settings) with its own weights."""

    name: str = opt(MISSING, "Unique name (metrics, checkpoints' shard files, its HF export).")
    path: str = opt(MISSING, "Its HF checkpoint directory; the architecture must be model.arch (the tribe shares "
                             "model's architecture, dtype and layer spec; the tokenizer is model.tokenizer, else this directory's).")
    lr: float | None = opt(None, "Its peak learning rate; default trainer.lr.")
    judge_noise: float = opt(0.0, "algorithm.sparta.panel=checker: probability that this player's score of an answer "
                                  "is a uniform draw from 1-10 instead of the checker's (the tiny demo's stand-in for a "
                                  "weaker model judging worse).")


@dataclass(kw_only=True)
class SpartaConfig:
    """Duels, the panel and its weighting (the DPO update is ``algorithm.pairs``: loss, beta, reference, epochs)."""

    first: Literal["round_robin", "uniform"] = opt(
        "round_robin", "Who answers first in each duel: the players in turn over the iteration's instructions, or uniform.")
    p_random: float = opt(0.6, "Probability that the opponent is uniform among the other players; otherwise uniform "
                               "among the `nearest` closest in reputation (authors: 0.6).")
    nearest: int = opt(5, "How many reputation neighbours the opponent is drawn from otherwise (authors: 5).")
    panel: Literal["checker", "llm"] = opt(
        "llm", "Who scores the answers: llm: every other player, on its own engine, from score_template (a JSON "
               "reply; a judge with an unparsable reply on either answer of a duel scores both 5, "
               "counted); checker: the task's checker (10 - |error|, at least 1) with each "
               "player's judge_noise (verifiable tasks, the tiny demo).")
    weighting: Literal["reputation", "uniform"] = opt(
        "reputation", "How the panel's scores are aggregated into the pair label: reputation-weighted mean (SPARTA) "
                      "or plain mean (the ablation; the other aggregate is measured beside it either way).")
    score_template: str | None = opt(None, "panel=llm: the scoring prompt ({question}, {answer}; the reply holds "
                                           "{\"score\": 1-10}); default configs/sparta/score.txt.")
    score_max_new_tokens: int = opt(64, "panel=llm: a judge's reply cap, tokens (greedy).")
    slices: int = opt(1, "Players side by side: the world is cut into this many slices of parallel.tp*pp*dp ranks "
                         "each (the world is slices x that), each slice with its own TP / PP / DP groups and colocated "
                         "engines (rollout.engine.tp*dp = one slice), the players dealt in order, len(players) / slices "
                         "to a slice; slices answer, judge and train at the same time, a slice's players take turns. "
                         "1: every player on every rank.")
    offload_idle: bool = opt(False, "Keep each player's trainer (weights, fp32 main weights, Adam state, and its frozen "
                                    "reference; gradient buffers are freed, not copied) in host memory except during its own update, weight sync and "
                                    "checkpoint write, so only one player's trainer holds device memory at a time "
                                    "(engines sleep between their turns either way); costs a host-device copy of each "
                                    "trainer per iteration. For tribes whose trainers do not fit on the devices together.")
