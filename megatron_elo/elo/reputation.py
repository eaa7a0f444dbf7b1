"""SPARTA's reputation: the rating that weights each model's votes when a tribe judges its own duels.

    reputations = Reputations(["m0", "m1", "m2"])                     # R = 100, sigma = 0.5 each
    score = reputations.weighted_score({"m1": 7.0, "m2": 4.0})         # sum_k R_k s_k / sum_k R_k
    reputations.record([Duel(player_a="m0", player_b="m1", score_a=6.5, score_b=5.0)])

The update is the one the SPARTA authors coded (arXiv 2506.04721; ``../shared/ALGORITHMS.md``): for a
duel of i and j with aggregate scores s_i, s_j, ds = s_i - s_j, z = (R_i - R_j) / sqrt(sigma_i^2 +
sigma_j^2), confidence = max(|Phi(z) - Phi(-z)|, 0.01) and

    delta_i = K * ds * tanh(sigma_i) * confidence / 20,   delta_j = K * (-ds) * tanh(sigma_j) * confidence / 20,
    R = max(10, R + delta),   K = max(5, 10 * 0.9^(updates / 10)).

Within one ``record`` (a batch of duels) the duels are applied one after another, each seeing the
ratings the previous one left; K is computed once per call from the number of earlier calls; each
player's sigma is then the (population) standard deviation of its last 10 deltas, at least 0.1.
``Reputations`` is a ``elo.rating_system.RatingSystem`` like the Elo pool. Pure Python; it knows
nothing of engines or models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

INITIAL_REPUTATION, INITIAL_SIGMA = 100.0, 0.5
REPUTATION_FLOOR, SIGMA_FLOOR, SIGMA_HISTORY = 10.0, 0.1, 10


@dataclass(frozen=True, kw_only=True)
class Duel:
    """One decided duel: the two players and the aggregate (reputation-weighted) score of each answer."""

    player_a: str
    player_b: str
    score_a: float
    score_b: float

    def __post_init__(self) -> None:
        if self.player_a == self.player_b:
            raise ValueError(f"a player cannot duel itself ({self.player_a!r})")


def k_factor(updates: int) -> float:
    """K after ``updates`` earlier update calls: max(5, 10 * 0.9^(updates / 10))."""
    return max(5.0, 10.0 * 0.9 ** (updates / 10))


def confidence(z: float) -> float:
    """max(|Phi(z) - Phi(-z)|, 0.01) = max(|erf(z / sqrt 2)|, 0.01) (Phi: the standard normal CDF)."""
    return max(abs(math.erf(z / math.sqrt(2.0))), 0.01)


class Reputations:
    """Every player's reputation R, its sigma and its recent deltas (see the module docstring)."""

    def __init__(self, names: Sequence[str], *, initial: float = INITIAL_REPUTATION, sigma: float = INITIAL_SIGMA):
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"reputations need unique player names, got {list(names)}")
        self.reputation = {name: float(initial) for name in names}
        self.sigmas = {name: float(sigma) for name in names}
        self.history: dict[str, list[float]] = {name: [] for name in names}
        self.updates = 0

    def weighted_score(self, scores: Mapping[str, float]) -> float:
        """The reputation-weighted mean of ``scores`` ({judge: its score of one answer})."""
        if not scores:
            raise ValueError("a weighted score needs at least one judge's score")
        total = sum(self.reputation[judge] for judge in scores)
        return sum(self.reputation[judge] * score for judge, score in scores.items()) / total

    def ratings(self) -> dict[str, float]:
        """{player: reputation R} (a copy)."""
        return dict(self.reputation)

    def record(self, duels: Iterable[Duel]) -> dict[str, float]:
        """Apply one batch of duels in order; {player: summed change} of those that duelled."""
        k = k_factor(self.updates)
        changes: dict[str, float] = {}
        for duel in duels:
            i, j = duel.player_a, duel.player_b
            ds = duel.score_a - duel.score_b
            z = (self.reputation[i] - self.reputation[j]) / math.sqrt(self.sigmas[i] ** 2 + self.sigmas[j] ** 2)
            c = confidence(z)
            deltas = {i: k * ds * math.tanh(self.sigmas[i]) * c / 20.0, j: k * -ds * math.tanh(self.sigmas[j]) * c / 20.0}
            for name, delta in deltas.items():
                self.reputation[name] = max(REPUTATION_FLOOR, self.reputation[name] + delta)
                self.history[name] = (self.history[name] + [delta])[-SIGMA_HISTORY:]
                changes[name] = changes.get(name, 0.0) + delta
        for name in changes:
            self.sigmas[name] = max(SIGMA_FLOOR, float(np.std(self.history[name])))
        self.updates += 1
        return changes

    def nearest(self, name: str, count: int) -> list[str]:
        """The ``count`` other players closest to ``name`` in reputation (ties: name order)."""
        others = sorted((n for n in self.reputation if n != name), key=lambda n: (abs(self.reputation[n] - self.reputation[name]), n))
        return others[:count]

    def opponent(self, name: str, rng: np.random.Generator, *, p_random: float = 0.6, nearest: int = 5) -> str:
        """SPARTA's opponent of ``name``: with probability ``p_random`` uniform among the others, else
        uniform among its ``nearest`` closest in reputation."""
        others = sorted(n for n in self.reputation if n != name)
        pool = others if rng.random() < p_random else self.nearest(name, nearest)
        return pool[int(rng.integers(len(pool)))]

    def state_dict(self) -> dict:
        """Everything an exact resume needs."""
        return {"ratings": dict(self.reputation), "sigmas": dict(self.sigmas),
                "history": {k: list(v) for k, v in self.history.items()}, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""
        self.reputation, self.sigmas = dict(state["ratings"]), dict(state["sigmas"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.updates = int(state["updates"])
