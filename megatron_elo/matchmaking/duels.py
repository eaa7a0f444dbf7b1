"""SPARTA's duels: per instruction a first player and its opponent, drawn from the reputations.

    plan = plan_duels(8, reputations, step=3, rng=rng, first="round_robin", p_random=0.6, nearest=5)
    plan.duels[0]          # DuelMatch(prompt_index=0, first="m3", second="m1")
    plan.answering("m1")   # the prompt indices m1 answers this iteration

The first player of instruction i is player (step * P + i) mod m in name order (``round_robin``: every
player starts as many duels, give or take one) or uniform; its opponent is uniform among the others
with probability ``p_random``, else uniform among its ``nearest`` closest in reputation
(``Reputations.opponent``). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from megatron_elo.elo.reputation import Reputations


@dataclass(frozen=True, kw_only=True)
class DuelMatch:
    """One instruction's duel: the two players who answer it."""

    prompt_index: int  # position in the iteration's PromptBatch
    first: str
    second: str


@dataclass(frozen=True, kw_only=True)
class DuelPlan:
    """The iteration's duels, one per instruction, in prompt order."""

    duels: tuple[DuelMatch, ...]

    def answering(self, player: str) -> list[int]:
        """Prompt indices ``player`` answers (as first or second), ascending."""
        return [d.prompt_index for d in self.duels if player in (d.first, d.second)]

    def judging(self, player: str) -> list[int]:
        """Prompt indices whose duel ``player`` is not in (its panel's), ascending."""
        return [d.prompt_index for d in self.duels if player not in (d.first, d.second)]


def plan_duels(prompts: int, reputations: Reputations, *, step: int, rng: np.random.Generator,
               first: Literal["round_robin", "uniform"], p_random: float, nearest: int) -> DuelPlan:
    """A duel for each of ``prompts`` instructions of iteration ``step`` (see the module docstring)."""
    names = sorted(reputations.ratings())
    duels = []
    for i in range(prompts):
        lead = names[(step * prompts + i) % len(names)] if first == "round_robin" else names[int(rng.integers(len(names)))]
        duels.append(DuelMatch(prompt_index=i, first=lead,
                               second=reputations.opponent(lead, rng, p_random=p_random, nearest=nearest)))
    return DuelPlan(duels=tuple(duels))
