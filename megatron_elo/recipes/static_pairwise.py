"""Static pairwise (the paper's baseline): every prompt against one fixed opponent
(``algorithm.static_opponent``), judged pairwise, GRPO on win / loss / tie. The Elo ratings are
still tracked (for comparison with Elo-Evolve), never used to choose.
"""

from __future__ import annotations

from megatron_elo.elo.pool import EloPool
from megatron_elo.matchmaking.matchmakers import StaticMatchmaker
from megatron_elo.recipes.games import GamesRecipe
from megatron_elo.runner.context import RunContext


def build(ctx: RunContext) -> GamesRecipe:
    """The configured opponent for every prompt, pairwise games, GRPO."""
    cfg = ctx.cfg
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    opponent = pool.member(cfg.algorithm.static_opponent or "").name
    return GamesRecipe(ctx, pool=pool, matchmaker=StaticMatchmaker(opponent, samples=cfg.rollout.n_per_prompt))
