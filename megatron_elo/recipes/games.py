"""Games against frozen opponents, judged, GRPO on the outcomes: the step of ``elo_evolve``,
``static_pairwise`` and ``point`` (they differ in their matchmaker only; see their recipe files).

One step, every rank (the driver alone plays the games):

    batch     = prompt source's next batch                      (driver draws, every rank gets it)
    rollouts  = policy.rollouts(batch, step)                    (colocated engine, n per prompt)
    plan      = matchmaker.plan(prompts)                        (driver: an opponent, or none, per prompt)
    answers   = opponents' answers, asked concurrently          (driver: answer store, then engines)
    verdicts  = judge(games), each opponent's games sent as soon as its answers exist
    outcomes  = rewards per sample -> signal = group advantages (broadcast to every rank)
    stats     = policy.train(prepared rollouts, advantages)     (old log-probs under the sampler's weights: one
                                                                on-policy update takes them from its own forward)
    policy.sync_weights(); pool.update(outcomes)                (Elo, driver)

``rollout.overlap_judging``: step t's answers and verdicts are made in a driver thread while the
trainer runs the update of step t - 1 (one step off-policy: its old log-probs are computed right
after sampling, under the weights that sampled it); the last step also trains its own batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from megatron_elo.data.source import PromptSource
from megatron_elo.elo.pool import EloPool
from megatron_elo.evaluation.evaluator import build_evaluator
from megatron_elo.flow import POLICY, Game, GroupSignal, Played, PromptBatch, Response, StepRecord
from megatron_elo.matchmaking.games import make_games, opponent_requests
from megatron_elo.matchmaking.matchmakers import Matchmaker, update_ratings
from megatron_elo.parallel.world import World
from megatron_elo.players.sync_check import SamplerGap
from megatron_elo.players.trained import PreparedRollouts, TrainedPlayer
from megatron_elo.runner.context import RunContext
from megatron_elo.signals.grpo import GroupAdvantages
from megatron_elo.signals.outcomes import score_outcomes
from megatron_elo.trainer.step import PolicyTrainer, StepStats


def _signal_only(played_and_signal: tuple[Played, GroupSignal]) -> tuple[None, GroupSignal]:
    """What the other ranks need of the driver's games: the signal (the games stay on the driver)."""
    return None, played_and_signal[1]


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to ``timings[phase]``."""
    clock = time.perf_counter()
    yield
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - clock


class StepPrompts:
    """Each step's batch of the prompt source (None off the driver), drawn by the driver and sent to every
    rank; the source's position before the latest draw is kept, to put back when that step fails before
    its update (``Recipe.undo_partial_step``)."""

    def __init__(self, world: World, source: PromptSource | None, per_step: int):
        self.world, self.source, self.per_step = world, source, per_step
        self.before: dict | None = None

    def draw(self, step: int) -> PromptBatch:
        """The step's prompts on every rank (a prompt the driver cannot use stops all)."""
        if self.source is not None:
            self.before = self.source.state_dict()
        return self.world.on_driver(lambda: self.source.next_batch(self.per_step),
                                    waiting_for=f"the driver's prompts of step {step}")

    def undo(self) -> None:
        """The source back where the latest draw found it (nothing before the first draw, or off the driver)."""
        if self.source is not None and self.before is not None:
            self.source.load_state_dict(self.before)


@dataclass(frozen=True, kw_only=True)
class PendingUpdate:
    """An overlapped run's judged batch waiting for the next step's update (this rank's share)."""

    prepared: PreparedRollouts
    advantages: torch.Tensor  # [P * n]


class PendingStage:
    """Holds the pending update between steps and checkpoints it per rank (overlap_judging only)."""

    def __init__(self):
        self.update: PendingUpdate | None = None

    def rank_state_dict(self) -> dict:
        """This rank's pending update (None between an on-policy start and the first step)."""
        return {"update": self.update}

    def load_rank_state_dict(self, state: dict) -> None:
        """Restore ``rank_state_dict``."""
        self.update = state["update"]


class GamesRecipe:
    """The trained policy against matched frozen opponents (see the module docstring)."""

    def __init__(self, ctx: RunContext, *, pool: EloPool, matchmaker: Matchmaker):
        cfg, world = ctx.cfg, ctx.world
        self.cfg, self.world = cfg, world
        self.pool, self.matchmaker = pool, matchmaker
        self.policy = self.build_policy(cfg, world)
        self.prompts = self.build_prompt_source(ctx) if world.is_driver else None
        self.step_prompts = StepPrompts(world, self.prompts, cfg.rollout.prompts_per_step)
        self.opponents, self.judge = ctx.opponents(), ctx.judge()  # the driver's; None elsewhere
        self.signal = GroupAdvantages(n_per_prompt=cfg.rollout.n_per_prompt, std_normalize=cfg.trainer.std_normalize,
                                      kernels=cfg.trainer.kernels, device=self.policy.trainer.device)
        self.evaluator = build_evaluator(ctx, self.policy.sampler)
        self.pending = PendingStage() if cfg.rollout.overlap_judging else None

    def build_prompt_source(self, ctx: RunContext) -> PromptSource:
        """The driver's training prompts in the loader's order (eva wraps them with its evolved ones)."""
        return PromptSource.from_config(self.cfg, ctx.train_prompts, self.policy.tokenizer)

    def build_policy(self, cfg, world) -> TrainedPlayer:
        """The trained player with GRPO's loss (a pair recipe overrides this)."""
        return TrainedPlayer.build(cfg, world, name=POLICY, loss="grpo")

    @property
    def trainer(self) -> PolicyTrainer:
        """The policy's trainer (its shards are what checkpoints hold)."""
        return self.policy.trainer

    def trainers(self) -> dict[str, PolicyTrainer]:
        """The one trained player's trainer."""
        return {POLICY: self.policy.trainer}

    def stages(self) -> dict[str, object | None]:
        """Every stage that may hold state (None where it does not exist on this rank)."""
        return {"prompts": self.prompts, "pool": self.pool, "matchmaker": self.matchmaker, "judge": self.judge,
                "pending": self.pending}

    def report(self, out) -> dict:
        """Nothing beyond the runner's artifacts."""
        return {}

    def ratings(self) -> dict[str, float]:
        """The Elo pool's ratings, the policy first."""
        return self.pool.ratings()

    def after_resume(self) -> None:
        """The engine gets the restored weights (collective)."""
        self.policy.sync_weights()

    # ------------------------------------------------------------ the step

    def step(self, step: int) -> StepRecord:
        """One step on every rank (see the module docstring); the driver's record has the games."""
        if self.pending is not None:
            return self._overlapped_step(step)
        timings: dict[str, float] = {}
        with timed(timings, "generate"):
            batch = self.step_prompts.draw(step)
            rollouts = self.policy.rollouts(batch, step)
            self.policy.sleep()  # GPU: weights and KV cache released for the update (no-op on CPU)
        played, signal = self.world.on_driver(lambda: self._play_and_score(batch, rollouts, step, timings),
                                              waiting_for=f"the driver's games of step {step}", share=_signal_only)
        with timed(timings, "train"):
            prepared = self.policy.prepare(batch, rollouts, step=step, on_policy=True)
            stats, gap = self.policy.train(prepared, signal.advantages, step=step)
        with timed(timings, "sync"):
            self.policy.wake_up()
            self.policy.sync_weights()
        return self._record(step, stats, gap, timings, played, signal, tokens=prepared.response_tokens)

    def _overlapped_step(self, step: int) -> StepRecord:
        """Judge this step's batch in a driver thread while the previous batch trains (module docstring)."""
        timings: dict[str, float] = {}
        stats, tokens, previous = [], 0.0, self.pending.update
        with timed(timings, "generate"):
            batch = self.step_prompts.draw(step)
            rollouts = self.policy.rollouts(batch, step)
            prepared = self.policy.prepare(batch, rollouts, step=step)  # old log-probs now: the sampler's weights
            if previous is not None:
                self.policy.sleep()  # woken by _train_and_sync
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="games") as background:
            playing = background.submit(self._play_and_score, batch, rollouts, step, timings) if self.world.is_driver else None
            if previous is not None:
                stats, tokens = self._train_and_sync(previous, timings)
            played, signal = self.world.on_driver(lambda: playing.result(), share=_signal_only,
                                                  waiting_for=f"the driver's games of step {step}")
        self.pending.update = PendingUpdate(prepared=prepared, advantages=signal.advantages)
        if step + 1 == self.cfg.trainer.steps:  # nothing left to overlap with: train the last batch now
            self.policy.sleep()
            last_stats, last_tokens = self._train_and_sync(self.pending.update, timings)
            stats, tokens, self.pending.update = stats + last_stats, tokens + last_tokens, None
        return self._record(step, stats, prepared.sampler_gap, timings, played, signal, tokens=tokens)

    def _train_and_sync(self, update: PendingUpdate, timings: dict[str, float]) -> tuple[list[StepStats], float]:
        with timed(timings, "train"):
            stats, _ = self.policy.train(update.prepared, update.advantages)  # its gap was checked at prepare
        with timed(timings, "sync"):
            self.policy.wake_up()
            self.policy.sync_weights()
        return stats, update.prepared.response_tokens

    def undo_partial_step(self) -> None:
        """The prompt source back where the failed step found it (see ``Recipe.undo_partial_step``)."""
        self.step_prompts.undo()

    def _play_and_score(self, batch: PromptBatch, rollouts: list[list[Response]], step: int,
                        timings: dict[str, float]) -> tuple[Played, GroupSignal]:
        """The driver's games of the step and the group advantages of their outcomes."""
        played = self.play(batch, rollouts, step, timings)
        return played, self.signal.build(played.outcomes, [p.prompt_id for p in batch.prompts])

    def play(self, batch: PromptBatch, rollouts: list[list[Response]], step: int, timings: dict[str, float]) -> Played:
        """The driver's games: matches, opponents' answers (concurrently), verdicts, outcomes."""
        start = time.perf_counter()
        prompts, seed = batch.prompts, self.cfg.seed
        plan = self.matchmaker.plan(prompts, step=step, rng=np.random.default_rng([seed, step, 1]))
        requests = opponent_requests(plan, prompts)
        answers: dict[tuple[str, str], Response] = {}

        def games_as_answered() -> Iterator[list[Game]]:  # each opponent's games as soon as its answers exist
            if any(m.opponent is None for m in plan.matches):
                yield make_games(plan, prompts, rollouts, answers, opponent=None)
            for name, theirs in self.opponents.answers_as_completed(requests):
                answers.update({(pid, name): answer for pid, answer in theirs.items()})
                yield make_games(plan, prompts, rollouts, answers, opponent=name)
            timings["opponent"] = time.perf_counter() - start

        verdicts = self.judge.judge_stream(games_as_answered(), np.random.default_rng([seed, step, 2]))
        games = make_games(plan, prompts, rollouts, answers)
        outcomes = score_outcomes(games, verdicts, tie_reward=self.cfg.algorithm.tie_reward)
        timings["judge"] = time.perf_counter() - start - timings["opponent"]
        return Played(plan=plan, games=tuple(games), verdicts=tuple(verdicts), outcomes=tuple(outcomes))

    def _record(self, step: int, stats: list[StepStats], sampler_gap: SamplerGap, timings: dict[str, float],
                played: Played | None, signal: GroupSignal, *, tokens: float) -> StepRecord:
        """The step's record (``sampler_gap``: of this step's batch; ``tokens``: response tokens trained on); on the
        driver, after the Elo update of its outcomes."""
        if not self.world.is_driver:
            return StepRecord(step=step + 1, train=tuple(stats), response_tokens=tokens, timings=timings)
        update_ratings(self.pool, played.outcomes)
        return StepRecord(step=step + 1, train=tuple(stats), response_tokens=tokens, timings=timings, played=played,
                          signal=signal, ratings=self.pool.ratings(),
                          extra_metrics={**self.judge.metrics(), **self.opponents.metrics(), **self.prompts.metrics(),
                                         **sampler_gap.metrics()})
