"""Programmatic judges for verifiable tasks, with configurable noise.

Pairwise: the answer with the smaller error wins, equal errors tie; with probability ``noise`` a
verdict is replaced by a fair coin. With ``swap_positions`` each game is judged in both orders
(independent noise) and a verdict that flips with the order becomes a tie: the same protocol as
the LLM judge. Point-wise: ``absolute_score`` of the answer alone; with probability ``noise`` the
score is replaced by a uniform draw on [0, 10].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from megatron_elo.flow import Game, Verdict
from megatron_elo.judges.base import judge_in_one_batch
from megatron_elo.tasks.arithmetic import absolute_score, answer_error


class ArithmeticJudge:
    """Decides games on the addition task (the ``Judge`` protocol). ``rng`` makes the noise reproducible."""

    scores_single_answers = True

    def __init__(self, *, noise: float, swap_positions: bool = True):
        if not 0 <= noise <= 1:
            raise ValueError(f"judge.noise must be in [0, 1], got {noise}")
        self.noise = noise
        self.swap_positions = swap_positions

    def _first_wins(self, first: str, second: str, reference: str, rng: np.random.Generator) -> float:
        """1 if ``first`` (shown first) wins, 0 if it loses, 0.5 for a tie."""
        if rng.random() < self.noise:
            return float(rng.integers(0, 2))
        a, b = answer_error(first, reference), answer_error(second, reference)
        return 1.0 if a < b else 0.0 if a > b else 0.5

    def judge(self, games: Sequence[Game], rng: np.random.Generator) -> list[Verdict]:
        """One verdict per game in order: pairwise when it has an opponent, else a score (noise drawn in game order)."""
        return [self._score(game, rng) if game.opponent is None else self._pairwise(game, rng) for game in games]

    def judge_stream(self, batches: Iterable[Sequence[Game]], rng: np.random.Generator) -> list[Verdict]:
        """All batches judged together in game-id order, so the noise does not depend on their arrival."""
        return judge_in_one_batch(self, batches, rng)

    def metrics(self) -> dict[str, float]:
        """No statistics of its own."""
        return {}

    def close(self) -> None:
        """Nothing to stop."""

    def judge_pairs(self, games: Sequence[Game], rng: np.random.Generator) -> list[Verdict]:
        """One verdict per pairwise game (policy vs opponent)."""
        return [self._pairwise(game, rng) for game in games]

    def _pairwise(self, game: Game, rng: np.random.Generator) -> Verdict:
        if game.opponent is None or game.prompt.reference is None:
            return Verdict(game_id=game.game_id, valid=False, detail="not a pairwise game with a reference")
        policy, opponent, ref = game.policy.text, game.opponent.text, game.prompt.reference
        score = self._first_wins(policy, opponent, ref, rng)
        if self.swap_positions:
            swapped = 1.0 - self._first_wins(opponent, policy, ref, rng)
            score = score if score == swapped else 0.5
        winner = {1.0: "policy", 0.0: "opponent", 0.5: "tie"}[score]
        return Verdict(game_id=game.game_id, winner=winner, detail=f"truth={ref}")

    def score(self, games: Sequence[Game], rng: np.random.Generator) -> list[Verdict]:
        """One absolute score per game (the policy's answer alone)."""
        return [self._score(game, rng) for game in games]

    def _score(self, game: Game, rng: np.random.Generator) -> Verdict:
        if game.prompt.reference is None:
            return Verdict(game_id=game.game_id, valid=False, detail="no reference to check the answer against")
        value = absolute_score(game.policy.text, game.prompt.reference)
        if rng.random() < self.noise:
            value = float(rng.uniform(0.0, 10.0))
        return Verdict(game_id=game.game_id, score=value, detail=f"truth={game.prompt.reference}")
