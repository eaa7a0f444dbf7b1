"""EVOLVE (``algorithm.name=evolve``): the policy answers, refines its own draft ``algorithm.evolve.chain``
times, and learns from both kinds of pairs. Each step is one iteration:

    batch; drafts = n samples per prompt                   (every rank, the colocated engine)
    link c = 1..chain: each answer of link c - 1 refined once, from the refinement template
                                                           (data/refine.py: "{prompt}", "{draft}")
    every answer of every link scored alone as an answer to the original prompt   (driver: the run's judge)
    direct pairs: per prompt, the best answer of the whole chain over its worst   (prompt: the original)
    refine pairs: per refinement, the better of (refinement, its draft) over the other (prompt: that refine prompt)
    mixed so that refine pairs are algorithm.evolve.refine_share of the iteration's (our reading: the paper
    leaves the mix open); the pair update on them; weights to the engine

Evaluation reports the direct answers' held-out win rate and each refinement link's
(``eval/refined_<c>/win_rate``; evaluation/refined.py). Metrics: the mean score per link and how often a
refinement beats / loses to its draft (``evolve/refine_win_rate/<c>``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from megatron_elo.config.validate_self_improve import refine_template_path
from megatron_elo.data.pairs import PairRows
from megatron_elo.data.refine import Refiner, refine_chain
from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import PromptBatch, Response, StepRecord
from megatron_elo.matchmaking.matchmakers import AbsoluteMatchmaker
from megatron_elo.recipes.games import timed
from megatron_elo.recipes.scored_pairs import (
    JudgedPairs,
    ScoredPairsRecipe,
    pair_signal,
    played_of,
    preference_pairs,
    rows_for_all_ranks,
    score_gap,
)
from megatron_elo.runner.context import RunContext
from megatron_elo.signals.scored import best_vs_worst, mix_pairs, refinement_choices
from megatron_elo.utils.numeric import nan_mean


def chain_metrics(scores: list[np.ndarray]) -> dict[str, float]:
    """Mean score per link (0: the drafts) and, per refinement link, its wins / losses against its draft."""
    metrics = {}
    for link, link_scores in enumerate(scores):
        metrics[f"evolve/score_mean/{link}"] = nan_mean(link_scores)
        if link:
            before, after = scores[link - 1].ravel(), link_scores.ravel()
            both = ~np.isnan(before) & ~np.isnan(after)
            count = max(int(both.sum()), 1)
            metrics[f"evolve/refine_win_rate/{link}"] = float((after[both] > before[both]).sum() / count)
            metrics[f"evolve/refine_loss_rate/{link}"] = float((after[both] < before[both]).sum() / count)
    return metrics


class EvolveRecipe(ScoredPairsRecipe):
    """See the module docstring."""

    def __init__(self, ctx: RunContext, **stages):
        super().__init__(ctx, **stages)
        self.refiner = Refiner(refine_template_path(self.cfg).read_text(), self.policy.tokenizer,
                               max_tokens=self.cfg.rollout.max_prompt_tokens)

    def step(self, step: int) -> StepRecord:
        """One iteration on every rank; the driver's record has the chain's games and metrics."""
        timings: dict[str, float] = {}
        with timed(timings, "generate"):
            batch = self.step_prompts.draw(step)
            drafts = self.policy.rollouts(batch, step)
            self.refiner.truncated = 0  # counted per step
            links, refine_batches = refine_chain(self.refiner, lambda b, link: self.policy.rollouts(b, step, stream=f"refine{link}", n=1),
                                                 batch.prompts, drafts, self.cfg.algorithm.evolve.chain)
            self.policy.sleep()
        judged = self.world.on_driver(lambda: self._pairs(batch, links, refine_batches, step, timings), share=rows_for_all_ranks,
                                      waiting_for=f"the driver's pairs of step {step}")
        stats = self.train_and_sync(judged.rows, step=step, timings=timings)
        return self.judged_record(step, stats, timings, judged)

    def _pairs(self, batch: PromptBatch, links: list[list[list[Response]]], refine_batches: list[PromptBatch], step: int,
               timings: dict[str, float]) -> JudgedPairs:
        """Driver: every link scored, the direct and refine pairs, mixed."""
        n = self.cfg.rollout.n_per_prompt
        games, verdicts, scores = [], [], []
        with timed(timings, "judge"):
            for link, answers in enumerate(links):
                link_scores, link_games, link_verdicts = self.score(batch.prompts, answers, step=step, phase=link)
                scores.append(link_scores)
                games, verdicts = games + link_games, verdicts + link_verdicts
        everything = np.concatenate(scores, axis=1)  # [P, n * (chain + 1)]: link-major within a prompt
        direct = best_vs_worst(everything, source="chain")
        refine = [(link, c) for link in range(1, len(links)) for c in refinement_choices(scores[link - 1].ravel(), scores[link].ravel())]
        rng = np.random.default_rng([self.cfg.seed, step, 13])
        direct, refine = mix_pairs(direct, refine, share=self.cfg.algorithm.evolve.refine_share, rng=rng)

        def chain_ids(source_index, prompt_index):
            flat = source_index[1]
            return links[flat // n][prompt_index][flat % n].token_ids

        rows = PairRows.from_choices(direct, batch.token_ids, chain_ids)
        for link in range(1, len(links)):  # a refine pair's prompt: the refine prompt of its draft (flat index)
            def refine_ids(source_index, flat, link=link):
                answers = links[link] if source_index[0] == "refined" else links[link - 1]
                return answers[flat // n][flat % n].token_ids

            mine = [c for at, c in refine if at == link]
            rows = rows + PairRows.from_choices(mine, refine_batches[link - 1].token_ids, refine_ids)
        refine_choices = [c for _, c in refine]
        metrics = {**chain_metrics(scores), "evolve/direct_pairs": float(len(direct)), "evolve/refine_pairs": float(len(refine)),
                   "evolve/score_gap": score_gap(direct + refine_choices), "reward_mean": nan_mean(scores[0]),
                   "evolve/refine_drafts_shortened": float(self.refiner.truncated)}
        signal = pair_signal(direct, prompts=len(batch), scores=scores)
        signal = replace(signal, pairs=signal.pairs + preference_pairs(refine_choices))
        return JudgedPairs(rows=rows, signal=signal, played=played_of(games, verdicts), metrics=metrics)


def build(ctx: RunContext) -> EvolveRecipe:
    """The pool (kept for reports and evaluation; never played), the pair update, the refiner."""
    cfg = ctx.cfg
    return EvolveRecipe(ctx, pool=EloPool.from_config(cfg.opponents, cfg.algorithm.elo),
                        matchmaker=AbsoluteMatchmaker(samples=cfg.rollout.n_per_prompt))

