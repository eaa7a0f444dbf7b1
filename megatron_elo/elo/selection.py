"""Elo-orchestrated opponent selection: a softmax over the pool with temperature T.

    rating_gap:      logit_j = -|R_policy - R_j| / T                      (T in rating points)
    expected_score:  logit_j = -|E(policy beats j) - target| / T          (T in score units)

Low T prefers the opponent closest in strength (T -> 0: greedy, ties split evenly); high T spreads
over the pool (T -> inf: uniform). T is fixed or annealed from ``start`` to ``end`` over the run.
Each prompt draws its own opponent from a seeded numpy Generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from megatron_elo.elo.ratings import expected_score

Selection = Literal["rating_gap", "expected_score"]


def selection_distances(policy_rating: float, opponent_ratings: Sequence[float], *, selection: Selection,
                        target_win_rate: float = 0.5) -> np.ndarray:
    """Distance of each opponent from the ideal match, shape [num_opponents], >= 0."""
    ratings = np.asarray(opponent_ratings, dtype=np.float64)
    if selection == "rating_gap":
        return np.abs(policy_rating - ratings)
    if selection == "expected_score":
        scores = np.array([expected_score(policy_rating, r) for r in ratings])
        return np.abs(scores - target_win_rate)
    raise ValueError(f"selection must be 'rating_gap' or 'expected_score', got {selection!r}")


def selection_probabilities(policy_rating: float, opponent_ratings: Sequence[float], *, temperature: float,
                            selection: Selection = "rating_gap", target_win_rate: float = 0.5) -> np.ndarray:
    """p_j = softmax(-distance_j / T), shape [num_opponents], sums to 1.

    temperature 0 gives the greedy limit (all mass on the closest, split among exact ties);
    ``math.inf`` gives the uniform limit.
    """
    if len(opponent_ratings) == 0:
        raise ValueError("the opponent pool is empty")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    distances = selection_distances(policy_rating, opponent_ratings, selection=selection, target_win_rate=target_win_rate)
    if math.isinf(temperature):
        return np.full(len(distances), 1.0 / len(distances))
    if temperature == 0:
        closest = distances == distances.min()
        return closest / closest.sum()
    logits = -(distances - distances.min()) / temperature  # shift for stability: the max logit is 0
    weights = np.exp(logits)
    return weights / weights.sum()


def scheduled_temperature(step: int, total_steps: int, *, start: float, end: float | None,
                          schedule: Literal["constant", "linear", "cosine"]) -> float:
    """T at ``step`` of ``total_steps``: constant, or annealed from ``start`` to ``end``."""
    if schedule == "constant" or end is None or total_steps <= 1:
        return start
    progress = min(max(step / (total_steps - 1), 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be constant, linear or cosine, got {schedule!r}")


@dataclass(frozen=True, kw_only=True)
class OpponentDraw:
    """Opponents drawn for a batch of prompts, and the distribution they were drawn from."""

    opponent_indices: np.ndarray  # [num_prompts] int64, index into the pool's order
    probabilities: np.ndarray  # [num_opponents] float64
    temperature: float


def draw_opponents(rng: np.random.Generator, num_prompts: int, probabilities: np.ndarray, temperature: float) -> OpponentDraw:
    """One opponent per prompt, i.i.d. from ``probabilities``."""
    indices = rng.choice(len(probabilities), size=num_prompts, p=probabilities)
    return OpponentDraw(opponent_indices=indices.astype(np.int64), probabilities=probabilities, temperature=temperature)
