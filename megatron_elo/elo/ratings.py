"""Elo ratings: expected score and order-independent batch updates.

    E(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400))
    R_a += K * (S_a - E_a)        S = 1 win, 0 loss, 0.5 tie

A batch of games is rated against the ratings *before* the batch: every game's change is computed
from the same snapshot, so the result does not depend on the order of games within the batch
(sequential Elo would). A player's changes are then summed (classic Elo: K per game) or averaged
(K per batch, whatever the batch size: an RL step plays hundreds of games, and summing them would
move the policy by K * hundreds of points per step), or shared: K * (the player's summed S - E) / (the
batch's number of games), so that a player's step is in proportion to its share of the batch (the policy,
in every game, moves as with the mean; an opponent drawn for one prompt of sixteen moves a sixteenth as
far). Between two rated players every reduction gives equal and opposite deltas, so the sum of their
ratings is conserved; "sum" and "share" conserve the sum over any number of players.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

ELO_SCALE = 400.0


def expected_score(rating_a: float, rating_b: float) -> float:
    """Probability-like expected score of a against b, in [0, 1]."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / ELO_SCALE))


@dataclass(frozen=True, kw_only=True)
class GameResult:
    """One rated game between two named players; ``score_a`` is 1 (a won), 0 (b won) or 0.5 (tie)."""

    player_a: str
    player_b: str
    score_a: float

    def __post_init__(self) -> None:
        if self.score_a not in (0.0, 0.5, 1.0):
            raise ValueError(f"GameResult.score_a must be 0, 0.5 or 1, got {self.score_a!r}")
        if self.player_a == self.player_b:
            raise ValueError(f"a player cannot play itself ({self.player_a!r})")


def batch_deltas(ratings: Mapping[str, float], games: Iterable[GameResult], *, k_factor: float,
                 reduction: Literal["mean", "sum", "share"] = "mean") -> dict[str, float]:
    """Rating change of every player in ``games``, all computed from the snapshot ``ratings``.

    reduction: "sum" adds K * (S - E) over a player's games; "mean" averages them; "share" divides the
    sum by the number of games in the batch. Returns {name: delta} in rating points; players not in any
    game are absent.
    """
    if reduction not in ("mean", "sum", "share"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'share', got {reduction!r}")
    deltas: dict[str, float] = {}
    counts: dict[str, int] = {}
    num_games = 0
    for game in games:
        num_games += 1
        for name in (game.player_a, game.player_b):
            if name not in ratings:
                raise KeyError(f"player {name!r} has no rating; known: {sorted(ratings)}")
        change_a = k_factor * (game.score_a - expected_score(ratings[game.player_a], ratings[game.player_b]))
        for name, change in ((game.player_a, change_a), (game.player_b, -change_a)):
            deltas[name] = deltas.get(name, 0.0) + change
            counts[name] = counts.get(name, 0) + 1
    if reduction == "mean":
        return {name: total / counts[name] for name, total in deltas.items()}
    if reduction == "share":
        return {name: total / num_games for name, total in deltas.items()}
    return deltas


def apply_batch(ratings: Mapping[str, float], games: Iterable[GameResult], *, k_factor: float,
                reduction: Literal["mean", "sum", "share"] = "mean") -> dict[str, float]:
    """New ratings after one batch of games (a new dict; ``ratings`` is not modified)."""
    deltas = batch_deltas(ratings, games, k_factor=k_factor, reduction=reduction)
    return {name: rating + deltas.get(name, 0.0) for name, rating in ratings.items()}
