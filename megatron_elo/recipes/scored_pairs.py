"""What the self-improvement recipes (eva, tsr, evolve) share: the policy with the pair loss and its update
(``PairsOnlineRecipe``'s), answers scored alone on the driver (the judge's grade or the reward model), the
pairs chosen from the scores sent to every rank as ``JudgedPairs``, and the step's record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from megatron_elo.data.pairs import PairRows
from megatron_elo.flow import (
    Game,
    MatchPlan,
    PairSignal,
    Played,
    PreferencePair,
    Prompt,
    Response,
    StepRecord,
    Verdict,
)
from megatron_elo.recipes.games import timed
from megatron_elo.recipes.pairs_online import PairsOnlineRecipe
from megatron_elo.signals.scored import Choice, score_answers
from megatron_elo.trainer.step import StepStats


@dataclass(frozen=True, kw_only=True)
class JudgedPairs:
    """A phase's pairs as token rows (every rank), with the driver's games, scores and metrics."""

    rows: PairRows
    signal: PairSignal
    played: Played | None = None  # driver only
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # driver only: [P, k] per source
    metrics: dict[str, float] = field(default_factory=dict)  # driver only
    answers: dict[str, list[list[Response]]] = field(default_factory=dict)  # driver only: [P][k] per source


def rows_for_all_ranks(judged: JudgedPairs) -> JudgedPairs:
    """What the other ranks need of the driver's phase: the rows and the pair counts."""
    return replace(judged, played=None, scores={}, metrics={}, answers={})


def preference_pairs(choices: Sequence[Choice]) -> tuple[PreferencePair, ...]:
    """``choices`` as the step record's pairs (indices within each choice's source)."""
    return tuple(PreferencePair(prompt_index=c.prompt_index, chosen=c.chosen[1], rejected=c.rejected[1]) for c in choices)


def pair_signal(choices: Sequence[Choice], *, prompts: int, scores: Sequence[np.ndarray]) -> PairSignal:
    """The pair counts of ``choices`` (over ``prompts`` prompts) and the scored / unscored answers behind them."""
    scored = sum(int((~np.isnan(s)).sum()) for s in scores)
    total = sum(s.size for s in scores)
    return PairSignal(pairs=preference_pairs(choices), prompts_without_pair=prompts - len({c.prompt_index for c in choices}),
                      decided_games=scored, undecided_games=total - scored)


def played_of(games: Sequence[Game], verdicts: Sequence[Verdict]) -> Played:
    """The scored games as a step's ``Played`` (no matches, no Elo outcomes): the sample_games artifact."""
    return Played(plan=MatchPlan(matches=()), games=tuple(games), verdicts=tuple(verdicts), outcomes=())


def score_gap(choices: Sequence[Choice]) -> float:
    """Mean chosen-minus-rejected score of the pairs (NaN without pairs)."""
    return float(np.mean([c.chosen_score - c.rejected_score for c in choices])) if choices else float("nan")


class ScoredPairsRecipe(PairsOnlineRecipe):
    """PairsOnlineRecipe's policy and update, with the scoring and training steps of eva / tsr / evolve."""

    def score(self, prompts: Sequence[Prompt], groups: Sequence[Sequence[Response]], *, step: int,
              phase: int) -> tuple[np.ndarray, list[Game], list[Verdict]]:
        """The driver's scores of ``groups`` (see ``score_answers``), the judge's noise seeded by (seed, step, phase)."""
        return score_answers(self.judge, prompts, groups, np.random.default_rng([self.cfg.seed, step, 2, phase]))

    def train_and_sync(self, rows: PairRows, *, step: int, timings: dict[str, float], always_sync: bool = False) -> list[StepStats]:
        """The pair update on ``rows`` (every rank), then the weights to the engine (when they moved, or ``always_sync``)."""
        with timed(timings, "train"):
            stats = self.updater.train(rows, step=step, epochs=self.cfg.algorithm.pairs.epochs)
        with timed(timings, "sync"):
            self.policy.wake_up()
            if stats or always_sync:
                self.policy.sync_weights()
        return stats

    def judged_record(self, step: int, stats: list[StepStats], timings: dict[str, float], judged: JudgedPairs) -> StepRecord:
        """The step's record of its final pairs (the driver's games and metrics on the driver)."""
        played = judged.played if judged.played is not None else played_of([], [])
        return self._pair_record(step, stats, timings, played, judged.signal, judged.metrics,
                                 tokens=judged.rows.response_tokens)
