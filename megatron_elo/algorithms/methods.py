"""The three methods of the Elo-Evolve comparison, as strategies behind ``Algorithm``.

- ``elo_evolve``: each prompt draws its opponent from softmax(-distance / T) over the Elo pool.
- ``static_pairwise``: every prompt plays the one configured opponent (ratings still tracked).
- ``point``: no opponent; the judge (or a point-wise reward model) scores each answer alone and the
  score is the reward (the paper's point-based GRPO baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megatron_elo.algorithms.base import Algorithm, OpponentPlan
from megatron_elo.config.schema import AlgorithmConfig
from megatron_elo.elo.pool import EloPool
from megatron_elo.elo.selection import draw_opponents, scheduled_temperature
from megatron_elo.flow import Game, Outcome, Prompt, Verdict


class EloEvolve(Algorithm):
    """Adaptive pool: opponents sampled per prompt by Elo distance at temperature T(step)."""

    name = "elo_evolve"

    def temperature(self, step: int) -> float:
        """Selection temperature at ``step`` (schedule from config)."""
        elo = self.config.elo
        return scheduled_temperature(step, self.total_steps, start=elo.temperature, end=elo.temperature_end,
                                     schedule=elo.temperature_schedule)

    def plan_opponents(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> OpponentPlan:
        temperature = self.temperature(step)
        probabilities = self.pool.selection_probabilities(temperature=temperature)
        draw = draw_opponents(rng, len(prompts), probabilities, temperature)
        names = self.pool.names
        return OpponentPlan(opponents=[names[i] for i in draw.opponent_indices],
                            probabilities=dict(zip(names, probabilities.tolist(), strict=True)), temperature=temperature)


class StaticPairwise(Algorithm):
    """One fixed opponent for every prompt."""

    name = "static_pairwise"

    def __init__(self, config: AlgorithmConfig, pool: EloPool, *, total_steps: int):
        super().__init__(config, pool, total_steps=total_steps)
        self.opponent = pool.member(config.static_opponent or "").name

    def plan_opponents(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> OpponentPlan:
        return OpponentPlan(opponents=[self.opponent] * len(prompts), probabilities={self.opponent: 1.0})


class PointScore(Algorithm):
    """Absolute scores: each answer judged alone; the score is the reward."""

    name = "point"

    def plan_opponents(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> OpponentPlan:
        return OpponentPlan(opponents=[None] * len(prompts), probabilities={})

    def _outcome(self, game: Game, verdict: Verdict) -> Outcome:
        common = dict(game_id=game.game_id, prompt_id=game.prompt.prompt_id, sample_index=game.policy.sample_index,
                      opponent=None)
        if not verdict.valid or verdict.score is None:
            return Outcome(**common, reward=0.0, valid=False)
        return Outcome(**common, reward=float(verdict.score), valid=True)


ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (EloEvolve, StaticPairwise, PointScore)}


def build_algorithm(config: AlgorithmConfig, pool: EloPool, *, total_steps: int) -> Algorithm:
    """The strategy named by ``config.name``."""
    if config.name not in ALGORITHMS:
        raise ValueError(f"algorithm.name: {config.name!r} is not one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[config.name](config, pool, total_steps=total_steps)
