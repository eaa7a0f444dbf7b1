"""The rated pool: the policy and its opponents, their Elo ratings and game statistics.

    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    probs = pool.selection_probabilities(temperature=100.0)       # [num_opponents]
    pool.record([GameResult(player_a="policy", player_b="strong", score_a=1.0), ...])

How a batch moves the ratings is ``rating_update`` (EloConfig's help): batch (``batch_reduction``),
anchored (opponents fixed), prompt_share (steps in proportion to a player's games) or window_mle
(``elo/fitted.py``).

The pool is a ``elo.rating_system.RatingSystem``, like SPARTA's reputations. Pure Python; it knows
nothing of engines or Megatron beyond the names it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from megatron_elo.config.schema import EloConfig, OpponentConfig
from megatron_elo.elo.fitted import GameWindow, fit_ratings
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
                 batch_reduction: str = "mean", selection: str = "rating_gap", target_win_rate: float = 0.5,
                 rating_update: str = "batch", window_steps: int = 20, window_prior: float = 200.0):
        names = [m.name for m in members]
        if POLICY in names or len(set(names)) != len(names):
            raise ValueError(f"opponent names must be unique and not {POLICY!r}: {names}")
        if rating_update not in ("batch", "anchored", "prompt_share", "window_mle"):
            raise ValueError(f"rating_update must be batch, anchored, prompt_share or window_mle, got {rating_update!r}")
        self.members = list(members)
        self.initial_ratings = {m.name: m.rating for m in members}  # the window fit's priors
        self.rating_update, self.window_prior = rating_update, float(window_prior)
        self.window = GameWindow(window_steps) if rating_update == "window_mle" else None
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
                   selection=elo.selection, target_win_rate=elo.target_win_rate, rating_update=elo.rating_update,
                   window_steps=elo.window_steps, window_prior=elo.window_prior)

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
        deltas = self._deltas(games)
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

    def _deltas(self, games: list[GameResult]) -> dict[str, float]:
        """Each player's rating change for one batch, by ``rating_update``."""
        if self.rating_update == "window_mle":
            self.window.add(games)
            fitted = fit_ratings(self.window.totals(), policy_before=self.policy_rating, priors=self.initial_ratings,
                                 prior_scale=self.window_prior)
            return {name: fitted[name] - rating for name, rating in self.ratings().items()}
        reduction = "share" if self.rating_update == "prompt_share" else self.batch_reduction
        deltas = batch_deltas(self.ratings(), games, k_factor=self.k_factor, reduction=reduction)
        if self.rating_update == "anchored":
            return {POLICY: deltas[POLICY]} if POLICY in deltas else {}
        return deltas

    def state_dict(self) -> dict:
        """Everything needed to resume (plain Python, JSON-serialisable)."""
        state = {"policy_rating": self.policy_rating, "members": [asdict(m) for m in self.members]}
        if self.window is not None:
            state["window"] = self.window.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ratings and statistics saved by ``state_dict`` (same opponent names required)."""
        saved = [m["name"] for m in state["members"]]
        if saved != self.names:
            raise ValueError(f"checkpointed pool {saved} does not match the configured opponents {self.names}")
        self.policy_rating = float(state["policy_rating"])
        self.members = [PoolMember(**m) for m in state["members"]]
        if self.window is not None:
            self.window.load_state_dict(state.get("window", []))
