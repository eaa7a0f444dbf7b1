"""Elo-Evolve: the policy plays an adaptive pool. Each prompt draws its opponent from
softmax(-|R_policy - R_j| / T) over the Elo pool (``algorithm.elo``), a judge picks each winner,
win / loss / tie is the reward (GRPO over the n samples of a prompt), and the ratings move after
every step, so the curriculum follows the policy's strength.

Where the next methods plug in: a prompt creator (eva) wraps ``recipe.prompts``; snapshot players
(Temporal Self-Rewarding) join ``ctx.opponents()`` as frozen players whose model is an exported
checkpoint; the pair losses are ``pairs_online.py`` (with ``algorithm.pairs.games=opponents`` it plays
this same Elo pool: Elo-Evolve with DPO); several trained players (SPARTA) are several
``TrainedPlayer``s and a round-robin matchmaker.
"""

from __future__ import annotations

from megatron_elo.elo.pool import EloPool
from megatron_elo.matchmaking.matchmakers import EloMatchmaker
from megatron_elo.recipes.games import GamesRecipe
from megatron_elo.runner.context import RunContext


def build(ctx: RunContext) -> GamesRecipe:
    """The pool at its initial ratings, Elo-orchestrated matches, pairwise games, GRPO."""
    cfg = ctx.cfg
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    matchmaker = EloMatchmaker(pool, cfg.algorithm.elo, total_steps=cfg.trainer.steps, samples=cfg.rollout.n_per_prompt)
    return GamesRecipe(ctx, pool=pool, matchmaker=matchmaker)
