"""A trained player: its trainer (megatron-core shard), its colocated engine and the weight sync.

    player = TrainedPlayer.build(cfg, world, name="policy", loss="grpo")
    rollouts = player.rollouts(batch, step)                 # [P][n] Response (every rank)
    prepared = player.prepare(batch, rollouts, step=step, on_policy=True)   # + old (and reference) log-probs
    stats, gap = player.train(prepared, advantages, step=step)   # one StepStats per optimizer step; sampler gap
    player.sync_weights()                                   # Megatron shards -> the engine's layout

One on-policy optimizer step per rollout batch needs no separate old-log-prob pass (the update's own
forward gives them, detached: the same loss); several steps, or an update one step behind
(``rollout.overlap_judging``), compute them before any update. The engine is colocated: one shard
per trainer rank, released (GPU sleep mode) while the trainer updates. Several trained players
(SPARTA) are several of these, time-sharing the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from megatron_elo.config.schema import RunConfig
from megatron_elo.data.tokenizer import PromptTokenizer, player_tokenizer
from megatron_elo.flow import PromptBatch, Response
from megatron_elo.parallel.layout import ParallelLayout, WorldSlices
from megatron_elo.parallel.world import World
from megatron_elo.players.sampler import PolicySampler
from megatron_elo.players.sync_check import SamplerGap, StaleEngineWeights
from megatron_elo.rollout.engine import RolloutEngine, SamplingSettings
from megatron_elo.trainer.step import PolicyTrainer, StepStats, TrainBatch
from megatron_elo.utils.logging import get_logger
from megatron_elo.utils.seeds import stable_seed

log = get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class PreparedRollouts:
    """A step's sequences, cut into this DP rank's share of each optimizer step, with the log-probs the
    sampler's weights give them (computed before any update, so the first update is on-policy), or
    none when the step is one on-policy update (the update's own forward gives them)."""

    batches: tuple[TrainBatch, ...]  # advantages still zero: ``TrainedPlayer.train`` fills them in
    rows: tuple[slice, ...]  # each batch's rows in the step's [P * n] sequences
    response_tokens: float  # response tokens over the whole step (all DP ranks)
    # trainer vs engine log-probs of the sampled tokens, over every rank; None: measured by ``train``
    sampler_gap: SamplerGap | None
    sampler_logprobs: torch.Tensor  # [P * n, S] the engine's log-probs of its samples (0 off the responses)
    replica_of_row: torch.Tensor  # [P * n] the engine replica that sampled each row


def build_trainer(cfg: RunConfig, *, frozen: bool = False, loss: str = "grpo", loss_config=None,
                  slices: WorldSlices | None = None) -> PolicyTrainer:
    """This rank's trainer of ``cfg.model`` (``frozen``: a log-prob-only copy, e.g. the KL reference; ``loss`` /
    ``loss_config``: the registry's loss and its settings, default GRPO's from ``cfg.trainer``; ``slices``: the
    world's slices, this rank's trainer on its own, default ``parallel.*`` over the world)."""
    import torch.distributed as dist

    from megatron_elo.trainer.build import build_policy_trainer
    from megatron_elo.trainer.optimizer import DataParallelOptions

    slices = WorldSlices(shape=ParallelLayout.from_config(cfg)) if slices is None else slices
    layout = slices.layout(slices.index_of(dist.get_rank()))
    return build_policy_trainer(cfg.model.path, layout, cfg.trainer, total_steps=cfg.trainer.steps, side_by_side=slices.layouts(),
                                dtype=cfg.trainer.precision, device=cfg.cluster.device,
                                pad_vocab_to_multiple_of=cfg.model.pad_vocab_to_multiple_of, frozen=frozen,
                                data_parallel=DataParallelOptions.from_config(cfg.parallel), loss=loss,
                                layer_spec=cfg.model.layer_spec, loss_config=loss_config)


class TrainedPlayer:
    """One trained model on every rank of the world (see the module docstring)."""

    def __init__(self, *, name: str, cfg: RunConfig, trainer: PolicyTrainer, reference: PolicyTrainer | None,
                 sampler: PolicySampler | None, tokenizer: PromptTokenizer):
        self.name, self.cfg = name, cfg
        self.trainer, self.reference = trainer, reference
        self.sampler, self.tokenizer = sampler, tokenizer

    @classmethod
    def build(cls, cfg: RunConfig, world: World, *, name: str, loss: str, loss_config=None,
              with_reference: bool | None = None, with_engine: bool = True, slices: WorldSlices | None = None) -> TrainedPlayer:
        """Trainer from cfg.model (``loss`` / ``loss_config``: see ``build_trainer``), a frozen reference copy
        (``with_reference``; default: when trainer.kl_coef > 0), then its colocated engine unless
        ``with_engine`` is False (offline training without evaluation) (collective). ``slices``: the player
        lives on this rank's slice of the world, ``world`` is that slice (``World.split``)."""
        import torch.distributed as dist

        trainer = build_trainer(cfg, loss=loss, loss_config=loss_config, slices=slices)
        with_reference = cfg.trainer.kl_coef > 0 if with_reference is None else with_reference
        reference = build_trainer(cfg, frozen=True, loss=loss, loss_config=loss_config, slices=slices) if with_reference else None
        tokenizer = player_tokenizer(cfg.data, cfg.model)
        sampler = None
        if with_engine:
            engine = RolloutEngine(cfg.model.path, cfg.rollout.engine, seed=cfg.seed, dtype=cfg.model.dtype,
                                   distributed=dist.is_initialized() and dist.get_world_size() > 1, span=world.size)
            sampler = PolicySampler(engine, world=world, tokenizer=tokenizer)
        return cls(name=name, cfg=cfg, trainer=trainer, reference=reference, sampler=sampler, tokenizer=tokenizer)

    # ------------------------------------------------------------ sampling

    def rollouts(self, batch: PromptBatch, step: int, *, stream: str = "rollout", n: int | None = None) -> list[list[Response]]:
        """``n`` (default rollout.n_per_prompt) samples of every prompt at the rollout settings, seeded by (run
        seed, ``stream``, step, prompt id): another ``stream`` ("future", "refine1", ...) draws other samples."""
        r = self.cfg.rollout
        seed = stable_seed(self.cfg.seed, self.name, stream, step)
        settings = SamplingSettings(n=r.n_per_prompt if n is None else n, max_tokens=r.max_new_tokens, temperature=r.temperature,
                                    top_p=r.top_p, top_k=r.top_k, seed=seed, stop_token_ids=(self.tokenizer.eos_id,))
        return self.sampler.respond(batch.prompts, batch.token_ids, settings, player=self.name)

    def sleep(self) -> None:
        """Release the engine's memory for the update (GPU sleep mode; no-op on CPU or without an engine)."""
        if self.sampler is not None:
            self.sampler.engine.sleep()

    def wake_up(self) -> None:
        """Take the engine's memory back before the weight sync."""
        if self.sampler is not None:
            self.sampler.engine.wake_up()

    def sync_weights(self) -> None:
        """Stream this rank's Megatron shard into its engine shard's layout (collective; nothing without an engine)."""
        from megatron_elo.rollout.weight_sync import hf_weight_stream

        if self.sampler is None:
            return
        engine = self.sampler.engine
        engine.load_weights(hf_weight_stream(self.trainer.model, self.trainer.groups, self.trainer.arch, engine=engine.shard()))

    # ------------------------------------------------------------ training

    def sequences(self, batch: PromptBatch, rollouts: list[list[Response]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + response token rows, right-padded, the response mask and the engine's log-prob of each
        sampled token at its position: ([P*n, S] int64, [P*n, S] bool, [P*n, S] float32, 0 off the responses)."""
        rows, masks, sampled = [], [], []
        for prompt_ids, group in zip(batch.token_ids, rollouts, strict=True):
            for sample in group:
                rows.append(list(prompt_ids) + list(sample.token_ids))
                masks.append([False] * len(prompt_ids) + [True] * len(sample.token_ids))
                logprobs = list(sample.logprobs) if len(sample.logprobs) == len(sample.token_ids) else [0.0] * len(sample.token_ids)
                sampled.append([0.0] * len(prompt_ids) + logprobs)
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [self.tokenizer.pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
        sampler = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in sampled], dtype=torch.float32)
        return tokens, mask, sampler

    def _logprobs(self, model: PolicyTrainer, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, S] log-probs of the response tokens under ``model``'s current weights (0 elsewhere, and on
        pipeline stages before the last, which compute no loss)."""
        logprobs = model.compute_logprobs(tokens, mask=mask)
        return (logprobs if logprobs is not None else torch.zeros(tokens.shape)) * mask

    def prepare(self, batch: PromptBatch, rollouts: list[list[Response]], *, step: int,
                on_policy: bool = False) -> PreparedRollouts:
        """One TrainBatch per optimizer step (``global_batch_size`` consecutive sequences): this DP rank's
        contiguous share of it, with old (and reference) log-probs under the current weights, their gap
        to the sampler's checked (``check_sampler_gap``). ``on_policy``: the update follows with these
        weights; when it is one optimizer step, its old log-probs are the step's own forward's, their
        separate pass is skipped (the same loss) and ``train`` checks the gap."""
        tokens, mask, sampler = self.sequences(batch, rollouts)
        size = self.cfg.trainer.global_batch_size
        share = size // self.trainer.groups.layout.dp
        first = self.trainer.groups.coords.dp_rank * share  # this rank's offset inside each step's sequences
        replicas = self.cfg.rollout.engine.dp
        replica_of_row = (torch.arange(len(tokens)) // self.cfg.rollout.n_per_prompt) % replicas  # who sampled each row
        skip_old = on_policy and len(tokens) <= size
        batches, rows, gap = [], [], SamplerGap.empty(replicas)
        for start in range(0, len(tokens), size):
            mine = slice(start + first, start + first + share)
            part_tokens, part_mask = tokens[mine], mask[mine]
            reference = self._logprobs(self.reference, part_tokens, part_mask) if self.reference is not None else None
            old = None if skip_old else self._logprobs(self.trainer, part_tokens, part_mask)
            batches.append(TrainBatch(tokens=part_tokens, response_mask=part_mask, advantages=torch.zeros(len(part_tokens)),
                                      old_logprobs=old, ref_logprobs=reference))
            rows.append(mine)
            if old is not None and self.trainer.groups.is_last_stage:  # earlier pipeline stages compute no log-probs
                gap = gap.plus(SamplerGap.measure(old, sampler[mine], part_mask, replica_of_row[mine], replicas=replicas))
        if not skip_old:
            gap = gap.reduced(self.trainer.device, self.trainer.groups)
            self.check_sampler_gap(gap, step)
        return PreparedRollouts(batches=tuple(batches), rows=tuple(rows), response_tokens=float(mask.sum()),
                                sampler_gap=None if skip_old else gap, sampler_logprobs=sampler, replica_of_row=replica_of_row)

    def check_sampler_gap(self, gap: SamplerGap, step: int) -> None:
        """Warn, or stop (``rollout.stale_weights_action``), when the engine sampled step ``step``'s batch
        with weights the trainer does not hold: mean log-prob ``gap`` over ``rollout.stale_weights_threshold``."""
        mean, threshold = gap.mean, self.cfg.rollout.stale_weights_threshold
        if mean <= threshold:
            return
        message = (f"step {step}: the engine's log-probs of its own samples differ from the trainer's by {mean:.4g} nats "
                   f"on average (max {gap.largest:.4g}), over rollout.stale_weights_threshold={threshold:g}: "
                   f"the engine is sampling with other weights than the trainer's (a failed or skipped weight sync?)")
        if self.cfg.rollout.stale_weights_action == "stop":
            raise StaleEngineWeights(message)
        log.warning("%s", message)

    def train(self, prepared: PreparedRollouts, advantages: torch.Tensor, *,
              step: int | None = None) -> tuple[list[StepStats], SamplerGap]:
        """One optimizer step per prepared batch; ``advantages``: [P * n], one per sequence of the step.
        Returns the steps' statistics and the sampler gap (checked here when ``prepare`` left it to the
        update's forward pass)."""
        stats = [self.trainer.train_step(replace(part, advantages=advantages[rows]))
                 for part, rows in zip(prepared.batches, prepared.rows, strict=True)]
        if prepared.sampler_gap is not None:
            return stats, prepared.sampler_gap
        replicas, gap = self.cfg.rollout.engine.dp, SamplerGap.empty(self.cfg.rollout.engine.dp)
        for part, rows, done in zip(prepared.batches, prepared.rows, stats, strict=True):
            if done.logprobs is not None:  # the last pipeline stage
                gap = gap.plus(SamplerGap.measure(done.logprobs.cpu(), prepared.sampler_logprobs[rows], part.response_mask,
                                                  prepared.replica_of_row[rows], replicas=replicas))
        gap = gap.reduced(self.trainer.device, self.trainer.groups)
        self.check_sampler_gap(gap, step)
        return stats, gap
