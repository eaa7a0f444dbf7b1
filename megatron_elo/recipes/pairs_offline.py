"""Offline preference pairs: DPO, IPO, SimPO or ORPO on a pair file (``algorithm.pairs.path``; the layouts
in data/pairs.py), one optimizer step of ``trainer.global_batch_size / 2`` pairs per step, the reference
the initial model. No engine, judge or opponent is started unless evaluation asks for them
(``eval.num_prompts > 0``: the policy's engine plays the held-out games as in every recipe, the weights
synced to it only before each evaluation: nothing samples between them).

    rows  = pair source's next pairs     (driver reads, every rank gets the token ids)
    stats = update on the pairs          (every rank, its DP share)
"""

from __future__ import annotations

from megatron_elo.data.pairs import PairFields, PairSource, read_pairs
from megatron_elo.evaluation.evaluator import build_evaluator
from megatron_elo.flow import POLICY, StepRecord
from megatron_elo.players.pair_update import PairUpdate
from megatron_elo.recipes.games import timed
from megatron_elo.recipes.pairs_online import build_pair_player
from megatron_elo.runner.context import RunContext
from megatron_elo.trainer.step import PolicyTrainer


class SyncedEvaluator:
    """An evaluator whose player's engine first gets the trainer's current weights (collective)."""

    def __init__(self, policy, evaluator):
        self.policy, self.evaluator = policy, evaluator

    def evaluate(self, step: int):
        """Sync, then evaluate (``None`` without evaluation)."""
        self.policy.sync_weights()
        return self.evaluator.evaluate(step)


class PairsOfflineRecipe:
    """Pair-loss steps over a file (see the module docstring)."""

    def __init__(self, ctx: RunContext):
        cfg, world = ctx.cfg, ctx.world
        self.cfg, self.world = cfg, world
        evaluating = cfg.eval.num_prompts > 0
        self.policy = build_pair_player(cfg, world, with_engine=evaluating)
        self.pairs = self._source() if world.is_driver else None
        self.updater = PairUpdate(trainer=self.policy.trainer, reference=self.policy.reference, cfg=cfg,
                                  pad_id=self.policy.tokenizer.pad_id)
        self.evaluator = SyncedEvaluator(self.policy, build_evaluator(ctx, self.policy.sampler))
        self._before_step: dict | None = None

    def _source(self) -> PairSource:
        p, rollout = self.cfg.algorithm.pairs, self.cfg.rollout
        fields = PairFields(prompt=p.prompt_field, chosen=p.chosen_field, rejected=p.rejected_field, id=p.id_field)
        return PairSource(read_pairs(p.path, fields=fields), self.policy.tokenizer, seed=self.cfg.seed,
                          shuffle=self.cfg.data.shuffle, max_prompt_tokens=rollout.max_prompt_tokens,
                          overlong=rollout.overlong_prompt, max_answer_tokens=rollout.max_new_tokens)

    @property
    def trainer(self) -> PolicyTrainer:
        """The policy's trainer."""
        return self.policy.trainer

    def trainers(self) -> dict[str, PolicyTrainer]:
        """The one trained player's trainer."""
        return {POLICY: self.policy.trainer}

    def stages(self) -> dict[str, object | None]:
        """The pair source (driver) holds the data position."""
        return {"pairs": self.pairs}

    def report(self, out) -> dict:
        """Nothing beyond the runner's artifacts."""
        return {}

    def ratings(self) -> dict[str, float]:
        """No games, no ratings."""
        return {}

    def after_resume(self) -> None:
        """Nothing: the evaluator syncs the weights it evaluates."""

    def undo_partial_step(self) -> None:
        """The pair source back where the failed step found it."""
        if self.pairs is not None and self._before_step is not None:
            self.pairs.load_state_dict(self._before_step)

    def step(self, step: int) -> StepRecord:
        """One optimizer step on the next pairs (every rank)."""
        timings: dict[str, float] = {}
        with timed(timings, "data"):
            if self.pairs is not None:
                self._before_step = self.pairs.state_dict()
            rows = self.world.on_driver(lambda: self.pairs.next_pairs(self.cfg.trainer.global_batch_size // 2),
                                        waiting_for=f"the driver's pairs of step {step}")
        with timed(timings, "train"):
            stats = self.updater.train(rows, step=step)
        tokens = rows.response_tokens
        extra = self.pairs.metrics() if self.pairs is not None else {}
        return StepRecord(step=step + 1, train=tuple(stats), response_tokens=tokens, timings=timings, extra_metrics=extra)


def build(ctx: RunContext) -> PairsOfflineRecipe:
    """The policy (and its frozen initial copy), the file's pairs."""
    return PairsOfflineRecipe(ctx)
