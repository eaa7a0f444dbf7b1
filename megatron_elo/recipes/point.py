"""Point-based (the paper's baseline): no opponent; a point-wise reward model (algorithm.reward_model,
an HF sequence classifier), the LLM judge grading 1-10 (judge.kind=llm: ``judges/grading.py``) or the
task's checker scores each answer alone and the score is the reward (GRPO over the n samples of a prompt). Evaluation still plays pairs (checker or the LLM judge). The opponents' ratings are kept (for the
same reports as the pairwise methods) and never move.
"""

from __future__ import annotations

from megatron_elo.elo.pool import EloPool
from megatron_elo.matchmaking.matchmakers import AbsoluteMatchmaker
from megatron_elo.recipes.games import GamesRecipe
from megatron_elo.runner.context import RunContext


def build(ctx: RunContext) -> GamesRecipe:
    """Single-answer games scored by algorithm.reward_model, the LLM judge's 1-10 grades or the task's checker; GRPO."""
    cfg = ctx.cfg
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    return GamesRecipe(ctx, pool=pool, matchmaker=AbsoluteMatchmaker(samples=cfg.rollout.n_per_prompt))
