"""Matchmakers: one step's prompts -> a ``MatchPlan`` (who plays whom on which prompt).

    plan = matchmaker.plan(prompts, step=step, rng=np.random.default_rng([seed, step, 1]))

- ``EloMatchmaker`` (Elo-Evolve): each prompt draws its opponent from softmax(-distance / T(step))
  over the Elo pool, T on its schedule;
- ``StaticMatchmaker``: every prompt plays one fixed opponent;
- ``AbsoluteMatchmaker``: no opponent; each answer is scored alone (the point-based baseline).

Room for more behind the same protocol: self-play (``Match.opponent`` a trained player, its own
samples) and round robins among several trained players (several matches per prompt, SPARTA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from megatron_elo.config.schema import EloConfig
from megatron_elo.elo.pool import EloPool
from megatron_elo.elo.ratings import GameResult
from megatron_elo.elo.selection import draw_opponents, scheduled_temperature
from megatron_elo.flow import POLICY, SCORE_OF_WINNER, Match, MatchPlan, Outcome, Prompt


class Matchmaker(Protocol):
    """Plans one step's matches; a matchmaker with state of its own adds state_dict / load_state_dict."""

    def plan(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> MatchPlan:
        """One match per prompt (prompt order), drawn with ``rng``."""
        ...


def _matches(opponents: Sequence[str | None], samples: int) -> tuple[Match, ...]:
    return tuple(Match(prompt_index=i, player=POLICY, opponent=o, player_samples=samples) for i, o in enumerate(opponents))


class EloMatchmaker:
    """Adaptive pool: opponents sampled per prompt by Elo distance at temperature T(step)."""

    def __init__(self, pool: EloPool, elo: EloConfig, *, total_steps: int, samples: int):
        self.pool, self.elo, self.total_steps, self.samples = pool, elo, total_steps, samples

    def temperature(self, step: int) -> float:
        """Selection temperature at ``step`` (schedule from config)."""
        elo = self.elo
        return scheduled_temperature(step, self.total_steps, start=elo.temperature, end=elo.temperature_end,
                                     schedule=elo.temperature_schedule)

    def plan(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> MatchPlan:
        """Each prompt's opponent drawn from the pool's selection distribution at T(step)."""
        temperature = self.temperature(step)
        probabilities = self.pool.selection_probabilities(temperature=temperature)
        draw = draw_opponents(rng, len(prompts), probabilities, temperature)
        names = self.pool.names
        return MatchPlan(matches=_matches([names[i] for i in draw.opponent_indices], self.samples),
                         probabilities=dict(zip(names, probabilities.tolist(), strict=True)), temperature=temperature)


class StaticMatchmaker:
    """One fixed opponent for every prompt."""

    def __init__(self, opponent: str, *, samples: int):
        self.opponent, self.samples = opponent, samples

    def plan(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> MatchPlan:
        """The one opponent for every prompt (``rng`` unused)."""
        return MatchPlan(matches=_matches([self.opponent] * len(prompts), self.samples), probabilities={self.opponent: 1.0})


class AbsoluteMatchmaker:
    """No opponent: every answer is scored alone."""

    def __init__(self, *, samples: int):
        self.samples = samples

    def plan(self, prompts: Sequence[Prompt], *, step: int, rng: np.random.Generator) -> MatchPlan:
        """No opponent for any prompt (``rng`` unused)."""
        return MatchPlan(matches=_matches([None] * len(prompts), self.samples), probabilities={})


def update_ratings(pool: EloPool, outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Rate one step's valid pairwise outcomes as one batch (``pool.record``); returns the rating deltas."""
    games = [GameResult(player_a=o.player, player_b=o.opponent, score_a=SCORE_OF_WINNER[o.winner])
             for o in outcomes if o.valid and o.opponent is not None and o.winner is not None]
    return pool.record(games) if games else {}
