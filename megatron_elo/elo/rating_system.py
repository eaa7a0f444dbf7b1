"""What a rating system offers the recipes, the runner's checkpoints and the reports, whichever it is.

    system: RatingSystem = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)   # or Reputations(names)
    changes = system.record(outcomes)        # one batch: GameResults (Elo) or Duels (SPARTA's reputations)
    system.ratings()                         # {name: rating} after it
    system.load_state_dict(system.state_dict())

The two systems differ in what an outcome is (a game's score in {0, 1/2, 1} against the policy; a duel's two
aggregate panel scores) and in scale (Elo points around 1000; reputations around 100, floor 10); they share
this interface, so a recipe, the checkpoint registry (``state_dict``) and a report (``ratings``) take either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


@runtime_checkable
class RatingSystem(Protocol):
    """A batch-updated rating of named players (see the module docstring)."""

    def ratings(self) -> dict[str, float]:
        """{player: current rating} (a copy)."""

    def record(self, outcomes: Iterable) -> dict[str, float]:
        """Rate one batch of outcomes; {player: its rating change} of the players in it."""

    def state_dict(self) -> dict:
        """Everything an exact resume needs (JSON-serialisable)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""
