"""Temporal Self-Rewarding (``algorithm.name=tsr``, arXiv 2508.06026): the past anchors the rejected answers,
the future guides the chosen ones. Each step is one iteration:

    batch; M_i samples k per prompt                        (every rank, the colocated engine)
    M_0 samples k per prompt                               (driver: algorithm.tsr.anchor, an opponent serving the
                                                           initial checkpoint; a prompt's k drawn once, stored)
    phase 1, anchored rejection: chosen = M_i's best; rejected = M_0's worst if it scored below M_i's worst, else
    M_i's worst                                            (driver: the judge scores every answer alone)
    M_f = pair update of M_i on the phase-1 pairs          (every rank: a look-ahead in the same trainer, M_i kept
                                                           on the CPU, players/lookahead.py); M_f samples k
    phase 2, future-guided chosen: M_f's best replaces chosen when it scores higher; same rejected
    M_i back, M_{i+1} = pair update of M_i on the phase-2 pairs, weights to the engine

``algorithm.tsr.future=false``: M_{i+1} trains on the phase-1 pairs (no look-ahead). The judge is the run's
(the task's checker, the LLM judge grading 1-10, or algorithm.reward_model); the reference of the pair loss is
``algorithm.pairs.reference`` (previous iterate: M_i for both updates).
"""

from __future__ import annotations

import numpy as np

from megatron_elo.data.pairs import PairRows, answer_token_ids
from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import PromptBatch, Response, StepRecord
from megatron_elo.matchmaking.matchmakers import AbsoluteMatchmaker
from megatron_elo.players.lookahead import Lookahead
from megatron_elo.recipes.games import timed
from megatron_elo.recipes.scored_pairs import (
    JudgedPairs,
    ScoredPairsRecipe,
    pair_signal,
    played_of,
    rows_for_all_ranks,
    score_gap,
)
from megatron_elo.runner.context import RunContext
from megatron_elo.signals.scored import Choice, tsr_choices
from megatron_elo.utils.numeric import nan_mean
from megatron_elo.utils.seeds import stable_seed


def tsr_metrics(choices: list[Choice], scores: dict[str, np.ndarray], *, phase: str) -> dict[str, float]:
    """How often the anchor gave the rejected and the future the chosen answer, the score gap, mean scores."""
    count = max(len(choices), 1)
    metrics = {f"tsr/{phase}_pairs": float(len(choices)), f"tsr/{phase}_score_gap": score_gap(choices),
               f"tsr/{phase}_anchored_rejection": sum(c.rejected[0] == "anchor" for c in choices) / count}
    if phase == "phase2":
        metrics["tsr/phase2_future_chosen"] = sum(c.chosen[0] == "future" for c in choices) / count
    metrics.update({f"tsr/score_mean/{name}": nan_mean(s) for name, s in scores.items()})
    return metrics


class TsrRecipe(ScoredPairsRecipe):
    """See the module docstring."""

    def step(self, step: int) -> StepRecord:
        """One iteration on every rank; the driver's record has the final pairs' games and the phases' metrics."""
        timings: dict[str, float] = {}
        with timed(timings, "generate"):
            batch = self.step_prompts.draw(step)
            current = self.policy.rollouts(batch, step)
            self.policy.sleep()
        judged = self.world.on_driver(lambda: self._anchored(batch, current, step, timings), share=rows_for_all_ranks,
                                      waiting_for=f"the driver's phase-1 pairs of step {step}")
        future = self.cfg.algorithm.tsr.future
        if future:
            with timed(timings, "lookahead"):
                ahead = Lookahead(self.policy.trainer)
                try:  # M_i is put back whatever happens: a checkpoint after a failed step must hold M_i
                    self.updater.train(judged.rows, step=step, epochs=self.cfg.algorithm.pairs.epochs)  # M_f
                    self.policy.wake_up()
                    self.policy.sync_weights()
                    futures = self.policy.rollouts(batch, step, stream="future")
                    self.policy.sleep()
                finally:
                    ahead.restore()  # M_i again
            judged = self.world.on_driver(lambda: self._future_guided(batch, futures, judged, step, timings),
                                          share=rows_for_all_ranks, waiting_for=f"the driver's phase-2 pairs of step {step}")
        stats = self.train_and_sync(judged.rows, step=step, timings=timings, always_sync=future)  # the engine holds M_f
        return self.judged_record(step, stats, timings, judged)

    def _anchored(self, batch: PromptBatch, current: list[list[Response]], step: int, timings: dict[str, float]) -> JudgedPairs:
        """Driver: M_0's samples, every answer scored, the phase-1 pairs."""
        k = self.cfg.rollout.n_per_prompt
        with timed(timings, "opponent"):
            # one seed for the whole run: M_0 is fixed, so a prompt's k samples are drawn once and reused from the store
            anchor = self.opponents.players[self.cfg.algorithm.tsr.anchor].samples(
                batch.prompts, k, seed=stable_seed(self.cfg.seed, "tsr"))
        with timed(timings, "judge"):
            current_scores, games, verdicts = self.score(batch.prompts, current, step=step, phase=0)
            anchor_scores, anchor_games, anchor_verdicts = self.score(batch.prompts, anchor, step=step, phase=1)
        scores = {"current": current_scores, "anchor": anchor_scores}
        choices = tsr_choices(current_scores, anchor_scores)
        answers = {"current": current, "anchor": anchor}
        return JudgedPairs(rows=self._rows(batch, choices, answers), signal=pair_signal(choices, prompts=len(batch), scores=list(scores.values())),
                           played=played_of(games + anchor_games, verdicts + anchor_verdicts), scores=scores, answers=answers,
                           metrics={**tsr_metrics(choices, scores, phase="phase1"), "reward_mean": nan_mean(current_scores)})

    def _future_guided(self, batch: PromptBatch, futures: list[list[Response]], first: JudgedPairs, step: int,
                       timings: dict[str, float]) -> JudgedPairs:
        """Driver: M_f's samples scored, the phase-2 pairs (the phase-1 metrics kept beside)."""
        with timed(timings, "judge"):
            future_scores, games, verdicts = self.score(batch.prompts, futures, step=step, phase=2)
        scores = {**first.scores, "future": future_scores}
        choices = tsr_choices(scores["current"], scores["anchor"], future_scores)
        answers = {**first.answers, "future": futures}
        played = played_of(first.played.games + tuple(games), first.played.verdicts + tuple(verdicts))
        return JudgedPairs(rows=self._rows(batch, choices, answers), signal=pair_signal(choices, prompts=len(batch), scores=list(scores.values())),
                           played=played, scores=scores, answers=answers,
                           metrics={**first.metrics, **tsr_metrics(choices, scores, phase="phase2")})

    def _rows(self, batch: PromptBatch, choices: list[Choice], answers: dict[str, list[list[Response]]]) -> PairRows:
        """The pairs' token rows: the policy's samples as sampled, M_0's answers tokenised as the policy would."""
        tokenizer, cap = self.policy.tokenizer, self.cfg.rollout.max_new_tokens

        def ids(source_index: tuple[str, int], prompt_index: int) -> tuple[int, ...]:
            source, index = source_index
            answer = answers[source][prompt_index][index]
            return answer.token_ids if answer.token_ids else answer_token_ids(tokenizer, answer.text, max_tokens=cap)

        return PairRows.from_choices(choices, batch.token_ids, ids)


def build(ctx: RunContext) -> TsrRecipe:
    """The pool (kept for reports and evaluation; never played), the pair update, the anchor among the opponents."""
    cfg = ctx.cfg
    return TsrRecipe(ctx, pool=EloPool.from_config(cfg.opponents, cfg.algorithm.elo),
                     matchmaker=AbsoluteMatchmaker(samples=cfg.rollout.n_per_prompt))
