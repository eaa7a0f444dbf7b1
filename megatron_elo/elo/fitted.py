"""Ratings fitted by maximum likelihood over a window of recent games (Bradley-Terry in Elo units).

    P(policy beats j) = E_j = 1 / (1 + 10^((R_j - R_policy) / 400))
    maximise  sum_j [s_j log E_j + (n_j - s_j) log(1 - E_j)]
              - sum_j (R_j - R0_j)^2 / (2 prior^2) - (R_policy - R_policy_before)^2 / (2 prior^2)

s_j: the policy's score against opponent j over the window's games (a tie counts 1/2), n_j: their
number. Every game of the loop has the policy on one side, so the games alone fix only the gaps
R_policy - R_j: the Gaussian priors (an opponent's around its initial rating, the policy's around its
rating before the fit) make the maximum unique, keep an opponent unplayed in the window where it
started, and hold the policy finite when it wins every game. With the window's thousands of games
the likelihood outweighs a prior of a few hundred points. The log-posterior is concave: Newton's
method from the current ratings converges in a few steps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np

from megatron_elo.elo.ratings import ELO_SCALE, GameResult
from megatron_elo.flow import POLICY

_SLOPE = math.log(10.0) / ELO_SCALE  # d logit / d rating point


def policy_scores(games: Iterable[GameResult]) -> dict[str, tuple[float, int]]:
    """{opponent: (the policy's summed score, games)} of one batch; every game must involve the policy."""
    tally: dict[str, list[float]] = {}
    for game in games:
        if POLICY not in (game.player_a, game.player_b):
            raise ValueError(f"a fitted pool rates games of the {POLICY!r} only, got {game.player_a} v {game.player_b}")
        opponent, score = (game.player_b, game.score_a) if game.player_a == POLICY else (game.player_a, 1 - game.score_a)
        entry = tally.setdefault(opponent, [0.0, 0])
        entry[0] += score
        entry[1] += 1
    return {name: (s, int(n)) for name, (s, n) in tally.items()}


def fit_ratings(scores: Mapping[str, tuple[float, int]], *, policy_before: float, priors: Mapping[str, float],
                prior_scale: float, max_iterations: int = 100) -> dict[str, float]:
    """The maximum-a-posteriori ratings (module docstring) of the policy and every opponent in ``priors``.

    scores: {opponent: (policy's score, games)} summed over the window; priors: {opponent: R0_j};
    prior_scale: the priors' standard deviation, rating points. Returns {name: rating}, the policy first.
    """
    names = list(priors)
    unknown = sorted(set(scores) - set(names))
    if unknown:
        raise KeyError(f"games against {unknown}, which have no prior rating; known: {names}")
    won = np.array([scores.get(n, (0.0, 0))[0] for n in names], dtype=np.float64)
    played = np.array([scores.get(n, (0.0, 0))[1] for n in names], dtype=np.float64)
    centre = np.array([policy_before, *(priors[n] for n in names)], dtype=np.float64)
    precision = 1.0 / prior_scale**2
    ratings = centre.copy()
    for _ in range(max_iterations):
        expected = 1.0 / (1.0 + np.exp(-_SLOPE * (ratings[0] - ratings[1:])))
        residual = _SLOPE * (won - played * expected)  # d log-likelihood / d R_policy, per opponent
        gradient = np.concatenate([[residual.sum()], -residual]) - precision * (ratings - centre)
        weight = _SLOPE**2 * played * expected * (1.0 - expected)
        hessian = -np.diag(np.concatenate([[weight.sum()], weight])) - precision * np.eye(len(centre))
        hessian[0, 1:] = hessian[1:, 0] = weight
        step = np.clip(np.linalg.solve(hessian, -gradient), -ELO_SCALE, ELO_SCALE)
        ratings += step
        if np.abs(step).max() < 1e-9:
            break
    return {POLICY: float(ratings[0]), **{n: float(r) for n, r in zip(names, ratings[1:], strict=True)}}


class GameWindow:
    """The policy's per-opponent scores of the last ``steps`` batches, for ``fit_ratings``."""

    def __init__(self, steps: int):
        if steps < 1:
            raise ValueError(f"a rating window needs at least one step, got {steps}")
        self.batches: deque[dict[str, tuple[float, int]]] = deque(maxlen=steps)

    def add(self, games: Iterable[GameResult]) -> None:
        """One step's games (the oldest step leaves a full window)."""
        self.batches.append(policy_scores(games))

    def totals(self) -> dict[str, tuple[float, int]]:
        """{opponent: (policy's score, games)} summed over the window."""
        total: dict[str, tuple[float, int]] = {}
        for batch in self.batches:
            for name, (score, games) in batch.items():
                s, n = total.get(name, (0.0, 0))
                total[name] = (s + score, n + games)
        return total

    def state_dict(self) -> list[dict[str, list]]:
        """The window's batches, oldest first (JSON-serialisable)."""
        return [{name: [s, n] for name, (s, n) in batch.items()} for batch in self.batches]

    def load_state_dict(self, state: list[dict[str, list]]) -> None:
        """Restore ``state_dict``."""
        self.batches.clear()
        for batch in state:
            self.batches.append({name: (float(s), int(n)) for name, (s, n) in batch.items()})
