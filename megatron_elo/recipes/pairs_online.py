"""Online preference pairs (DPO, IPO, SimPO, ORPO, SPPO, INPO: ``algorithm.pairs.loss``): each step is one
iteration. The policy samples n answers per prompt; they are judged against each other in a knock-out
tournament (``pairs.games=tournament``, INPO's selection) or each against an opponent drawn from the Elo
pool (``pairs.games=opponents``: Elo-Evolve's curriculum, its ratings updated from every decided game);
``pairs.rule`` turns the games into (chosen, rejected) pairs; the trainer runs ``pairs.epochs`` passes
over them (players/pair_update.py) and the weights go to the engine. Reference: the initial model
(a frozen copy) or the weights at the iteration's start (``pairs.reference=previous_iterate``), which
moves with every iteration.

    batch, rollouts            (every rank: n samples per prompt)
    games -> verdicts -> pairs (driver; broadcast as a PairSignal)
    update on the pairs        (every rank, its DP share) -> sync weights
"""

from __future__ import annotations

import numpy as np

from megatron_elo.elo.pool import EloPool
from megatron_elo.flow import POLICY, Game, MatchPlan, PairSignal, Played, PromptBatch, Response, StepRecord
from megatron_elo.loss.preference import PairLossConfig
from megatron_elo.matchmaking.matchmakers import EloMatchmaker, update_ratings
from megatron_elo.matchmaking.tournament import Knockout
from megatron_elo.players.pair_update import PairRows, PairUpdate
from megatron_elo.players.trained import TrainedPlayer
from megatron_elo.recipes.games import GamesRecipe, timed
from megatron_elo.runner.context import RunContext
from megatron_elo.signals.outcomes import no_signal_rates, outcome_matrix
from megatron_elo.signals.pairs import pairs_from_rewards, pairs_from_tournament
from megatron_elo.trainer.step import StepStats


def build_pair_player(cfg, world, *, with_engine: bool = True) -> TrainedPlayer:
    """The policy with ``algorithm.pairs``' loss, and the frozen initial model when that loss reads it."""
    loss = PairLossConfig.from_pairs(cfg.algorithm.pairs)
    return TrainedPlayer.build(cfg, world, name=POLICY, loss=loss.loss, loss_config=loss,
                               with_reference=loss.needs_initial_reference(), with_engine=with_engine)


def _pairs_only(played_and_pairs: tuple[Played, PairSignal, dict]) -> tuple[None, PairSignal, dict]:
    """What the other ranks need of the driver's games: the pairs."""
    return None, played_and_pairs[1], {}


class PairsOnlineRecipe(GamesRecipe):
    """The policy's samples judged into pairs, a pair-loss update per step (see the module docstring)."""

    def __init__(self, ctx: RunContext, *, pool: EloPool, matchmaker: EloMatchmaker):
        super().__init__(ctx, pool=pool, matchmaker=matchmaker)
        self.updater = PairUpdate(trainer=self.policy.trainer, reference=self.policy.reference, cfg=self.cfg,
                                  pad_id=self.policy.tokenizer.pad_id)

    def build_policy(self, cfg, world) -> TrainedPlayer:
        """The policy with the pair loss."""
        return build_pair_player(cfg, world)

    def step(self, step: int) -> StepRecord:
        """One iteration on every rank; the driver's record has the games and the pairs."""
        timings: dict[str, float] = {}
        with timed(timings, "generate"):
            batch = self.step_prompts.draw(step)
            rollouts = self.policy.rollouts(batch, step)
            self.policy.sleep()
        played, signal, metrics = self.world.on_driver(lambda: self._play_pairs(batch, rollouts, step, timings),
                                                       waiting_for=f"the driver's games of step {step}", share=_pairs_only)
        rows = PairRows.from_rollouts(batch, rollouts, signal)
        with timed(timings, "train"):
            stats = self.updater.train(rows, step=step, epochs=self.cfg.algorithm.pairs.epochs)
        with timed(timings, "sync"):
            self.policy.wake_up()
            if stats:
                self.policy.sync_weights()
        tokens = rows.response_tokens
        return self._pair_record(step, stats, timings, played, signal, metrics, tokens=tokens)

    def _play_pairs(self, batch: PromptBatch, rollouts: list[list[Response]], step: int,
                    timings: dict[str, float]) -> tuple[Played, PairSignal, dict[str, float]]:
        """The driver's games of the step, the pairs they decide and their reward metrics."""
        rule = self.cfg.algorithm.pairs.rule
        if self.cfg.algorithm.pairs.games == "tournament":
            with timed(timings, "judge"):
                played, results = self._tournament(batch, rollouts, step)
            return played, pairs_from_tournament(results, rule=rule), {}
        played = self.play(batch, rollouts, step, timings)
        prompt_ids = [p.prompt_id for p in batch.prompts]
        rewards, valid = outcome_matrix(played.outcomes, prompt_ids, self.cfg.rollout.n_per_prompt)
        no_signal, per_opponent = no_signal_rates(rewards, valid, played.plan.opponents)
        metrics = {"reward_mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
                   "no_signal_groups": no_signal, **{f"no_signal_groups/{k}": v for k, v in per_opponent.items()}}
        return played, pairs_from_rewards(rewards, valid, rule=rule), metrics

    def _tournament(self, batch: PromptBatch, rollouts: list[list[Response]], step: int):
        """Every prompt's knock-out among its samples, each round of all prompts judged in one batch."""
        brackets = [Knockout(len(group)) for group in rollouts]
        games: list[Game] = []
        verdicts = []
        round_index = 0
        while not all(bracket.done for bracket in brackets):  # log2(n) rounds: both brackets advance together
            open_games = [(p, a, b) for p, bracket in enumerate(brackets) if not bracket.done for a, b in bracket.next_games()]
            now = [Game(game_id=len(games) + i, prompt=batch.prompts[p], policy=rollouts[p][a], opponent=rollouts[p][b])
                   for i, (p, a, b) in enumerate(open_games)]
            judged = self.judge.judge(now, np.random.default_rng([self.cfg.seed, step, 2, round_index]))
            games += now
            verdicts += judged
            winners: dict[int, list] = {}
            for (p, a, b), verdict in zip(open_games, judged, strict=True):
                decided = verdict.valid and verdict.winner in ("policy", "opponent")
                winners.setdefault(p, []).append((a if verdict.winner == "policy" else b) if decided else None)
            for p, bracket in enumerate(brackets):
                if p in winners:
                    bracket.record(winners[p])
            round_index += 1
        played = Played(plan=MatchPlan(matches=()), games=tuple(games), verdicts=tuple(verdicts), outcomes=())
        return played, [bracket.result() for bracket in brackets]

    def _pair_record(self, step: int, stats: list[StepStats], timings: dict[str, float], played: Played | None,
                     signal: PairSignal, metrics: dict[str, float], *, tokens: float) -> StepRecord:
        """The step's record; on the driver after the Elo update of its games against opponents."""
        if not self.world.is_driver:
            return StepRecord(step=step + 1, train=tuple(stats), response_tokens=tokens, timings=timings, pairs=signal)
        update_ratings(self.pool, played.outcomes)
        extra = {**metrics, **signal.metrics(), **self.judge.metrics(), **self.opponents.metrics(), **self.prompts.metrics()}
        return StepRecord(step=step + 1, train=tuple(stats), response_tokens=tokens, timings=timings, played=played,
                          pairs=signal, ratings=self.pool.ratings(), extra_metrics=extra)


def build(ctx: RunContext) -> PairsOnlineRecipe:
    """The pool at its initial ratings (the Elo-orchestrated matchmaker when games=opponents), the pair update."""
    cfg = ctx.cfg
    pool = EloPool.from_config(cfg.opponents, cfg.algorithm.elo)
    matchmaker = EloMatchmaker(pool, cfg.algorithm.elo, total_steps=cfg.trainer.steps, samples=cfg.rollout.n_per_prompt)
    return PairsOnlineRecipe(ctx, pool=pool, matchmaker=matchmaker)
