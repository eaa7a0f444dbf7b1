"""The rated pool: the policy and its opponents, their Elo ratings and game statistics.

    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    probs = pool.selection_probabilities(temperature=100.0)       # [num_opponents]
    pool.record([GameResult(player_a="policy", player_b="strong", score_a=1.0), ...])

Pure Python; it knows nothing of engines or Megatron beyond the names it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from megatron_elo.config.schema import EloConfig, OpponentConfig
from megatron_elo.elo.ratings import GameResult, batch_deltas
from megatron_elo.elo.selection import selection_probabilities
from megatron_elo.flow import POLICY


@dataclass(kw_only=True)
class PoolMember:
    """One opponent. Statistics are the member's own: ``wins`` are games it won against the policy."""

    name: str
    rating: float
    model_path: str | None = None
    engine: str = ""  # the name of the engine serving it (its own name for dedicated engines)
    games: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0

    @property
    def win_rate(self) -> float:
        """(wins + ties / 2) / games; NaN before its first game."""
        return (self.wins + 0.5 * self.ties) / self.games if self.games else float("nan")


class EloPool:
    """Ratings of the policy and every opponent, updated once per batch of games."""

    def __init__(self, members: Sequence[PoolMember], *, policy_rating: float, k_factor: float,
                 batch_reduction: str = "mean", selection: str = "rating_gap", target_win_rate: float = 0.5):
        names = [m.name for m in members]
        if POLICY in names or len(set(names)) != len(names):
            raise ValueError(f"opponent names must be unique and not {POLICY!r}: {names}")
        self.members = list(members)
        self.policy_rating = float(policy_rating)
        self.k_factor = float(k_factor)
        self.batch_reduction = batch_reduction
        self.selection = selection
        self.target_win_rate = target_win_rate

    @classmethod
    def from_config(cls, opponents: Sequence[OpponentConfig], elo: EloConfig) -> EloPool:
        """The pool at the start of a run: each opponent at its own or the default initial rating."""
        members = [
            PoolMember(name=o.name, rating=o.initial_rating if o.initial_rating is not None else elo.initial_rating,
                       model_path=o.model.path, engine=o.name)
            for o in opponents
        ]
        return cls(members, policy_rating=elo.initial_rating, k_factor=elo.k_factor, batch_reduction=elo.batch_reduction,
                   selection=elo.selection, target_win_rate=elo.target_win_rate)

    @property
    def names(self) -> list[str]:
        """Opponent names in pool order (the order of probability vectors)."""
        return [m.name for m in self.members]

    def member(self, name: str) -> PoolMember:
        """The opponent called ``name``."""
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no opponent {name!r} in the pool; known: {self.names}")

    def ratings(self) -> dict[str, float]:
        """{name: rating} for the policy and every opponent."""
        return {POLICY: self.policy_rating, **{m.name: m.rating for m in self.members}}

    def selection_probabilities(self, *, temperature: float) -> np.ndarray:
        """Probability of drawing each opponent (pool order), shape [num_opponents]."""
        return selection_probabilities(self.policy_rating, [m.rating for m in self.members], temperature=temperature,
                                       selection=self.selection, target_win_rate=self.target_win_rate)

    def record(self, games: Iterable[GameResult]) -> dict[str, float]:
        """Rate one batch of games (order-independent) and update statistics; returns the deltas."""
        games = list(games)
        deltas = batch_deltas(self.ratings(), games, k_factor=self.k_factor, reduction=self.batch_reduction)
        self.policy_rating += deltas.get(POLICY, 0.0)
        for m in self.members:
            m.rating += deltas.get(m.name, 0.0)
        for game in games:
            for name, score in ((game.player_a, game.score_a), (game.player_b, 1.0 - game.score_a)):
                if name == POLICY:
                    continue
                m = self.member(name)
                m.games += 1
                m.wins += score == 1.0
                m.ties += score == 0.5
                m.losses += score == 0.0
        return deltas

    def state_dict(self) -> dict:
        """Everything needed to resume (plain Python, JSON-serialisable)."""
        return {"policy_rating": self.policy_rating, "members": [asdict(m) for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        """Restore ratings and statistics saved by ``state_dict`` (same opponent names required)."""
        saved = [m["name"] for m in state["members"]]
        if saved != self.names:
            raise ValueError(f"checkpointed pool {saved} does not match the configured opponents {self.names}")
        self.policy_rating = float(state["policy_rating"])
        self.members = [PoolMember(**m) for m in state["members"]]
