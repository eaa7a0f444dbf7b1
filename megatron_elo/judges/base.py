"""The judge protocol, shared by the programmatic and the LLM judge, pairwise and single-answer.

    verdicts = judge.judge(games, rng)                    # one Verdict per Game, game order
    verdicts = judge.judge_stream(batches, rng)           # batches of games as they come (opponent by opponent)
    judge.metrics()                                       # {"judge/invalid_rate": ...}: its statistics so far

A game with an opponent is decided pairwise (winner), one without is scored alone (score). A judge
that cannot score single answers says so (``scores_single_answers``) and recipes that need it refuse
it at build time. ``judge_stream`` lets a judge on a served engine start on the first opponent's games
while other opponents still answer; ``judge_in_one_batch`` is the behaviour of judges whose noise
draws from ``rng`` in game order (the result must not depend on which opponent answered first).
A judge with statistics to resume adds state_dict / load_state_dict (the runner checkpoints it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from megatron_elo.flow import Game, Verdict


class Judge(Protocol):
    """Decides games (see the module docstring)."""

    scores_single_answers: bool

    def judge(self, games: Sequence[Game], rng: np.random.Generator) -> list[Verdict]:
        """One verdict per game, in game order."""
        ...

    def judge_stream(self, batches: Iterable[Sequence[Game]], rng: np.random.Generator) -> list[Verdict]:
        """One verdict per game of every batch, in game-id order."""
        ...

    def metrics(self) -> dict[str, float]:
        """Its statistics so far, as metrics ({} when it keeps none)."""
        ...

    def close(self) -> None:
        """Stop its engine, if it has one."""
        ...


def judge_in_one_batch(judge: Judge, batches: Iterable[Sequence[Game]], rng: np.random.Generator) -> list[Verdict]:
    """Wait for every batch, then judge all games at once in game-id order (``rng`` drawn in that order)."""
    games = sorted((game for batch in batches for game in batch), key=lambda game: game.game_id)
    return judge.judge(games, rng)
