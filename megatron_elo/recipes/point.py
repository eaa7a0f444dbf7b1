"""Point-based (the paper's baseline): no opponent; the judge scores each answer alone and the
score is the reward (GRPO over the n samples of a prompt). The opponents' ratings are kept (for the
same reports as the pairwise methods) and never move.
"""

from __future__ import annotations

from megatron_elo.elo.pool import EloPool
from megatron_elo.matchmaking.matchmakers import AbsoluteMatchmaker
from megatron_elo.recipes.base import NotSupportedYet
from megatron_elo.recipes.games import GamesRecipe
from megatron_elo.runner.context import RunContext


def build(ctx: RunContext) -> GamesRecipe:
    """Single-answer games scored by the judge, GRPO. The LLM judge compares pairs only: refused."""
    cfg = ctx.cfg
    if cfg.judge.kind == "llm":
        raise NotSupportedYet("absolute (point-wise) scoring with an LLM judge is not built yet; use a pairwise "
                              "algorithm or judge.kind=programmatic")
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    return GamesRecipe(ctx, pool=pool, matchmaker=AbsoluteMatchmaker(samples=cfg.rollout.n_per_prompt))
