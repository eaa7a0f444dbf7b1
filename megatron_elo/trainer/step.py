"""The policy train step: micro-batches, gradient accumulation, grad sync, clipping, AdamW + LR schedule.

    trainer = PolicyTrainer(model=model, groups=groups, arch=arch, config=cfg.trainer, padded_vocab=V, total_steps=N)
    stats = trainer.train_step(batch)          # batch: this DP rank's TrainBatch

Gradients and the optimizer sit behind ``trainer/optimizer.py``: torch AdamW after a DP all-reduce
or megatron-core's DDP + (distributed) optimizer (``trainer.optimizer``). With PP > 1 the
micro-batches cross the stages by megatron-core's 1F1B schedule (``trainer.pipeline_schedule``,
CUDA) or one at a time, the stages driven by hand (forward, send activations, receive output grads,
backward; any device). Interleaved (virtual-stage) schedules are not wired.

The loss is a name in ``loss.registry`` (the recipe's; GRPO's clipped policy gradient today), called
on per-token log-probs without knowing where the batch's signal came from.
Loss side (``trainer.kernels``): ``torch`` computes the logits shard and reduces it with
``vocab_parallel_logprobs`` + the registered torch loss; ``triton`` stops the model before its output
layer and runs the fused linear log-prob + entropy kernel on the hidden states and the output weight
(no [tokens x vocab] logits), then the fused policy-loss kernel (``kernels/``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace

import torch
import torch.distributed as dist

from megatron_elo.config.schema import ArchConfig, TrainerConfig
from megatron_elo.loss.reference import PolicyLossConfig
from megatron_elo.loss.registry import get_loss_spec
from megatron_elo.models.gpt import output_layer_returns_hidden
from megatron_elo.parallel.groups import ProcessGroups
from megatron_elo.trainer.logprobs import shift_to_tokens, vocab_parallel_logprobs
from megatron_elo.trainer.optimizer import (
    NO_DATA_PARALLEL_OPTIONS,
    DataParallelOptions,
    TrainerOptimizer,
    build_optimizer,
)


@dataclass(frozen=True, kw_only=True)
class TrainBatch:
    """One DP rank's sequences for one optimizer step: prompt + response, right-padded to S."""

    tokens: torch.Tensor  # [B, S] int64
    response_mask: torch.Tensor  # [B, S] bool: token t is a response token (it gets a loss)
    advantages: torch.Tensor  # [B] float: one advantage per sequence
    # [B, S] float: log p(token_t | tokens_<t) under the weights that sampled, nats; None: exactly on-policy
    # (one optimizer step per rollout batch), the current log-probs detached: no separate forward pass
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None = None  # [B, S] float: the frozen reference's, for the KL term
    # pair losses (rows 2i, 2i + 1: pair i's chosen and rejected; loss/preference.py): [B] sequence log-probs,
    # nats, under the initial model and under the weights at the iteration's start; [B] win probabilities (SPPO)
    ref_sequence_logprobs: torch.Tensor | None = None
    start_sequence_logprobs: torch.Tensor | None = None
    win_probs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainBatch:
        """This batch with ``fn`` applied to every tensor it holds (an absent ref_logprobs stays None)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None})

    def to(self, device: torch.device) -> TrainBatch:
        """This batch with every tensor on ``device`` (the trainer's; a no-op when already there)."""
        return self._map(lambda tensor: tensor.to(device))

    def micro_batches(self, size: int, *, trim: bool = False) -> Iterator[TrainBatch]:
        """Consecutive slices of ``size`` sequences (the last may be shorter); ``trim``: each cut to its
        last response token's column (right padding removed; the model is causal, so what is left
        computes the same)."""
        for start in range(0, len(self), size):
            micro = self._map(lambda tensor, start=start: tensor[start:start + size])
            yield micro.trimmed() if trim else micro

    def trimmed(self) -> TrainBatch:
        """This batch cut after the last column holding a response token (unchanged when none does)."""
        columns = self.response_mask.any(dim=0).nonzero() if self.response_mask.dim() == 2 else ()
        if len(columns) == 0:
            return self
        width = int(columns[-1]) + 1
        return self._map(lambda tensor: tensor[:, :width] if tensor.dim() == 2 else tensor)


@dataclass(frozen=True, kw_only=True)
class StepStats:
    """What one optimizer step did (identical on every rank)."""

    loss: float
    grad_norm: float
    lr: float
    response_tokens: int
    # the loss's own statistics, step means (GRPO: pg_loss, kl, entropy, clip_fraction; pairs: loss/preference.py)
    metrics: dict[str, float] = field(default_factory=dict)
    # [B, S] this rank's log-probs under the weights before the step, when the batch came without old
    # log-probs (last pipeline stage; None elsewhere): what the sampler-gap check compares with
    logprobs: torch.Tensor | None = field(default=None, compare=False, repr=False)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step ``step``: linear warmup, then constant / linear /
    cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"trainer.lr_schedule must be constant, linear or cosine, got {schedule!r}")


def pick_pipeline_schedule(setting: str, *, device: torch.device, pp: int) -> str:
    """``trainer.pipeline_schedule`` -> the schedule used: ``1f1b`` (megatron-core's, CUDA) or
    ``sequential`` (stages driven by hand, one micro-batch at a time; any device). auto: 1f1b on
    CUDA with pp > 1. With pp == 1 there is nothing to pipeline: sequential."""
    if setting not in ("auto", "sequential", "1f1b"):
        raise ValueError(f"trainer.pipeline_schedule must be auto, sequential or 1f1b, got {setting!r}")
    if setting == "1f1b" and device.type != "cuda":
        raise ValueError("trainer.pipeline_schedule=1f1b: megatron-core's schedules allocate their buffers on CUDA, "
                         "the model is on the CPU; use trainer.pipeline_schedule=sequential (or auto)")
    if pp == 1 or setting == "sequential" or (setting == "auto" and device.type != "cuda"):
        return "sequential"
    return "1f1b"


class PolicyTrainer:
    """Owns this rank's model shard, its optimizer (``trainer.optimizer``: see ``trainer/optimizer.py``),
    the LR schedule and the step counter.

    Inputs may live on any device: the trainer moves them to its model's (``self.device``) and keeps
    every tensor it hands to a collective there (NCCL takes only CUDA tensors, gloo both).

    Mixed precision (bf16 / fp16 models): gradients accumulate in fp32 and AdamW updates fp32 main
    weights, the model getting the rounded result after each step, on either optimizer.
    """

    def __init__(self, *, model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, config: TrainerConfig,
                 padded_vocab: int, total_steps: int, frozen: bool = False,
                 data_parallel: DataParallelOptions = NO_DATA_PARALLEL_OPTIONS, loss: str = "grpo",
                 loss_config=None):
        self.model = model
        self.groups = groups
        self.arch = arch
        self.config = config
        self.total_steps = total_steps
        # GRPO's from trainer.*; a pair loss's (loss.preference.PairLossConfig) from algorithm.pairs
        self.loss_config = loss_config if loss_config is not None else PolicyLossConfig.from_trainer(config)
        self.fused = config.kernels == "triton"
        if self.fused:
            import kernels.linear_logprob  # noqa: F401  (fail at start-up, not at the first step, if triton is missing)
        self.loss_spec = get_loss_spec(loss)  # the loss registry's (loss/registry.py)
        self.loss_fn = self.loss_spec.pick(fused=self.fused)
        self.local_vocab = padded_vocab // groups.layout.tp
        self.device = next(model.parameters()).device
        self.pipeline_schedule = pick_pipeline_schedule(config.pipeline_schedule, device=self.device, pp=groups.layout.pp)
        # frozen (the KL reference): never stepped, so no gradient buffers or optimizer state at all
        self.optimizer: TrainerOptimizer | None = None if frozen else build_optimizer(
            config.optimizer, model=model, groups=groups, arch=arch, config=config, data_parallel=data_parallel)
        self.step = 0
        self.schedule_position: int | None = None  # see current_lr
        self.offloaded = None  # trainer.offload.HostCopy while its memory is on the host (SPARTA's idle players)

    # ------------------------------------------------------------ forward through the pipeline

    def _pp_peer(self, offset: int) -> int:
        c = self.groups.coords
        return self.groups.layout.rank_of(tp_rank=c.tp_rank, dp_rank=c.dp_rank, pp_rank=c.pp_rank + offset)

    def _stage_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Receive this stage's input from the previous one (if any) and run it on ``tokens`` [B, S];
        returns (``_model_forward``'s output, the received input activation or None)."""
        batch, seq = tokens.shape
        received = None
        if not self.groups.is_first_stage:
            received = torch.empty(seq, batch, self.arch.hidden_size, dtype=next(self.model.parameters()).dtype,
                                   device=self.device)
            dist.recv(received, src=self._pp_peer(-1))
            received.requires_grad_(torch.is_grad_enabled())
            self.model.set_input_tensor(received)
        return self._model_forward(tokens), received

    def _model_forward(self, tokens: torch.Tensor):
        """This stage on ``tokens`` [B, S] (its input activation already set on later stages). Output
        on the last stage: the logits shard [B, S, V/tp], or with fused kernels a
        ``(hidden [B, S, H], output weight [V/tp, H])`` pair; hidden states [S, B, H] elsewhere."""
        batch, seq = tokens.shape
        positions = torch.arange(seq, device=tokens.device).unsqueeze(0).expand(batch, seq)
        inputs = (tokens if self.groups.is_first_stage else None, positions, None)
        if self.fused and self.groups.is_last_stage:
            with output_layer_returns_hidden(self.model) as output_layer:
                hidden = self.model(*inputs)
            return hidden, output_layer.weight
        return self.model(*inputs)

    def _run_1f1b(self, micros: list[TrainBatch], loss_of: Callable, *, forward_only: bool) -> list:
        """megatron-core's non-interleaved 1F1B schedule over ``micros`` (PP > 1; its p2p buffers
        allocate on CUDA). ``loss_of(micro, output)`` -> (scalar loss to backpropagate, reported
        dict) runs on the last stage; returns the reported dicts there, [] elsewhere."""
        from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
        from megatron.core.pipeline_parallel.schedules import forward_backward_pipelining_without_interleaving

        config = self.model.config
        # stages exchange shapes: the last micro-batch may be shorter (set here, not in transformer_config:
        # its construction-time check refuses variable lengths with the default MoE token dispatcher)
        config.variable_seq_lengths = True
        # the schedule holds back DP reduction until the last micro-batch's backward (forward-only: no optimizer)
        config.no_sync_func = self.optimizer.no_sync if self.optimizer is not None else None

        def forward_step(data_iterator, model):
            micro = next(data_iterator)
            output = self._model_forward(micro.tokens)
            if self.fused and self.groups.is_last_stage:
                hidden, weight = output  # the schedule hands the loss function its tensor output only
                return hidden, lambda out: _with_token_count(*loss_of(micro, (out, weight)))
            return output, lambda out: _with_token_count(*loss_of(micro, out))

        seq = micros[0].tokens.shape[1]
        return forward_backward_pipelining_without_interleaving(
            forward_step_func=forward_step, data_iterator=iter(micros), model=self.model, num_microbatches=len(micros),
            seq_length=seq, micro_batch_size=self.config.micro_batch_size, forward_only=forward_only,
            p2p_communicator=P2PCommunicator(pp_group=self.groups.pp, config=config),
            pg_collection=self.groups.megatron_collection())

    def _token_logprobs(self, output, tokens: torch.Tensor, *, with_entropy: bool):
        """Last-stage output -> per-token log p(token_t) and entropy, both [B, S] (0 at t = 0)."""
        if self.fused:
            return self._fused_token_logprobs(*output, tokens)
        logits_shard = output  # [B, S, V/tp]
        logprobs, entropy = vocab_parallel_logprobs(
            logits_shard[:, :-1], tokens[:, 1:], tp_group=self.groups.tp,
            vocab_start=self.groups.coords.tp_rank * self.local_vocab, true_vocab=self.arch.vocab_size,
            with_entropy=with_entropy)
        return shift_to_tokens(logprobs), shift_to_tokens(entropy) if entropy is not None else None

    def _fused_token_logprobs(self, hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor):
        """hidden [B, S, H] and the output weight [V/tp, H] -> log-probs and entropy [B, S] (fused kernel)."""
        from kernels import fused_linear_logprobs_entropy

        batch, seq, width = hidden.shape
        logprobs, entropy = fused_linear_logprobs_entropy(
            hidden[:, :-1].reshape(-1, width), weight, tokens[:, 1:].reshape(-1), tp_group=self.groups.tp,
            vocab_start=self.groups.coords.tp_rank * self.local_vocab, true_vocab=self.arch.vocab_size)
        return (shift_to_tokens(logprobs.reshape(batch, seq - 1)), shift_to_tokens(entropy.reshape(batch, seq - 1)))

    @torch.no_grad()
    def compute_logprobs(self, tokens: torch.Tensor, *, micro_batch_size: int | None = None,
                         mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """log p(token_t | tokens_<t) [B, S] under the current weights (0 at t = 0), on ``tokens``'
        device; returned on the last pipeline stage, None on the others. ``mask`` [B, S] bool: the
        positions wanted (responses); with ``trainer.trim_micro_batches`` each micro-batch stops at its
        last one (0 after it)."""
        self._check_resident()
        self.model.eval()
        batch = _tokens_only(tokens.to(self.device), None if mask is None else mask.to(self.device))
        micros = list(batch.micro_batches(micro_batch_size or self.config.micro_batch_size,
                                          trim=mask is not None and self.config.trim_micro_batches))
        if self.pipeline_schedule == "1f1b":
            def logprobs_of(micro: TrainBatch, output):
                logprobs = self._token_logprobs(output, micro.tokens, with_entropy=False)[0]
                return torch.zeros((), device=self.device), {"logprobs": logprobs}

            outputs = [reported["logprobs"] for reported in self._run_1f1b(micros, logprobs_of, forward_only=True)]
        else:
            outputs = []
            for micro in micros:
                output, _ = self._stage_forward(micro.tokens)
                if not self.groups.is_last_stage:
                    dist.send(output.contiguous(), dst=self._pp_peer(+1))
                    continue
                outputs.append(self._token_logprobs(output, micro.tokens, with_entropy=False)[0])
        self.model.train()
        return _padded_cat(outputs, tokens.shape[1]).to(tokens.device) if outputs else None

    # ------------------------------------------------------------ the step

    def _loss_normalizer(self, batch: TrainBatch) -> float:
        """Global count the loss is divided by (the loss's ``count``: GRPO's response tokens or sequences,
        a pair loss's pairs), over every micro-batch and DP rank of this step."""
        total = torch.tensor([self.loss_spec.count(batch, self.loss_config)], dtype=torch.float64, device=self.device)
        if self.groups.layout.dp > 1:
            dist.all_reduce(total, group=self.groups.dp)
        return float(total.item())

    def _check_resident(self) -> None:
        if self.offloaded is not None:
            raise RuntimeError("this trainer's memory is on the host (trainer.offload.offload): reload it first "
                               "(trainer.offload.reload / resident)")

    def forward_backward(self, batch: TrainBatch) -> dict[str, float]:
        """Accumulate gradients of the whole batch and synchronise them (DP sum, tied embeddings).
        Returns the summed loss statistics (before the optimizer step)."""
        self._check_resident()
        normalizer = self._loss_normalizer(batch)
        self.optimizer.zero_grad()
        names = self.loss_spec.stat_names
        totals = torch.zeros(1 + len(names), dtype=torch.float64, device=self.device)  # the loss, then its statistics

        current: list[torch.Tensor] = []  # on-policy batches: the log-probs the loss used as old ones

        def loss_of(micro: TrainBatch, output):
            loss, stats, logprobs = self._micro_loss(output, micro, normalizer)
            totals.add_(torch.tensor([loss.item(), *(stats[name] for name in names)], dtype=torch.float64,
                                     device=self.device))
            if micro.old_logprobs is None:
                current.append(logprobs.detach())
            return loss, {}

        micros = list(batch.micro_batches(self.config.micro_batch_size, trim=self.config.trim_micro_batches))
        if self.pipeline_schedule == "1f1b":
            self._run_1f1b(micros, loss_of, forward_only=False)
        else:
            self._forward_backward_sequential(micros, loss_of)
        self.optimizer.finish_grads()
        return self._share_stats(totals, batch) | {
            "logprobs": _padded_cat(current, batch.tokens.shape[1]) * batch.response_mask if current else None}

    def _forward_backward_sequential(self, micros: list[TrainBatch], loss_of: Callable) -> None:
        """One micro-batch at a time through every stage, forward then backward (all stages but the
        active one wait: with PP stages, each is busy 1/PP of the time)."""
        for index, micro in enumerate(micros):
            last = index == len(micros) - 1  # DP reduction may start (overlapped) in the last backward only
            with contextlib.nullcontext() if last else self.optimizer.no_sync():
                self._forward_backward_one(micro, loss_of)

    def _forward_backward_one(self, micro: TrainBatch, loss_of: Callable) -> None:
        """``micro`` through this stage: receive, forward, send on; then the backward (of the loss on
        the last stage, of the next stage's input gradient elsewhere) and its gradient sent back."""
        output, received = self._stage_forward(micro.tokens)
        if self.groups.is_last_stage:
            loss, _ = loss_of(micro, output)
            loss.backward()
        else:
            dist.send(output.detach().contiguous(), dst=self._pp_peer(+1))
            grad = torch.empty_like(output)
            dist.recv(grad, src=self._pp_peer(+1))
            output.backward(grad)
        if received is not None:
            dist.send(received.grad.contiguous(), dst=self._pp_peer(-1))

    def _micro_loss(self, output, micro: TrainBatch, normalizer: float):
        logprobs, entropy = self._token_logprobs(output, micro.tokens, with_entropy=self.loss_spec.needs_entropy)
        if micro.old_logprobs is None:  # exactly on-policy: the same numbers a separate no-grad pass would give
            micro = replace(micro, old_logprobs=logprobs.detach())
        loss, stats = self.loss_fn(logprobs, micro, entropy=entropy, config=self.loss_config, normalizer=normalizer)
        return loss, stats, logprobs

    def _share_stats(self, totals: torch.Tensor, batch: TrainBatch) -> dict[str, float]:
        """Sum loss statistics over DP ranks (each already divided by the global normalizer) and
        give every pipeline stage the last stage's numbers."""
        totals = torch.cat([totals, batch.response_mask.sum().to(totals.device, torch.float64).reshape(1)])
        if self.groups.layout.pp > 1:
            if not self.groups.is_last_stage:
                totals.zero_()
            dist.all_reduce(totals, group=self.groups.pp)
        if self.groups.layout.dp > 1:
            dist.all_reduce(totals, group=self.groups.dp)
        loss, *sums, tokens = totals.tolist()
        metrics = self.loss_spec.finish(dict(zip(self.loss_spec.stat_names, sums, strict=True)), tokens)
        return {"loss": loss, **metrics, "response_tokens": tokens}

    def current_lr(self) -> float:
        """The learning rate of the next optimizer step (warmup, then the decay schedule), at optimizer step
        ``self.step``, or at ``schedule_position`` when a recipe sets it (pair recipes: the iteration, so that
        trainer.steps iterations span the schedule however many optimizer steps each one's pairs fill)."""
        position = self.step if self.schedule_position is None else self.schedule_position
        return self.config.lr * lr_factor(position, warmup_steps=self.config.warmup_steps, total_steps=self.total_steps,
                                          schedule=self.config.lr_schedule,
                                          min_ratio=self.config.min_lr / self.config.lr)

    def optimizer_step(self) -> tuple[float, float]:
        """Clip by the global norm, step AdamW at this step's LR; returns (grad norm, lr used)."""
        lr = self.current_lr()
        norm = self.optimizer.step(lr=lr)
        self.step += 1
        return norm, lr

    def train_step(self, batch: TrainBatch) -> StepStats:
        """One optimizer step on this DP rank's ``batch`` (all ranks call it together)."""
        if len(batch) == 0:
            raise ValueError("empty TrainBatch: every DP rank needs at least one sequence")
        self.model.train()
        summed = self.forward_backward(batch.to(self.device))
        norm, lr = self.optimizer_step()
        return StepStats(loss=summed["loss"], grad_norm=norm, lr=lr, response_tokens=int(summed["response_tokens"]),
                         metrics={k: v for k, v in summed.items() if k not in _NOT_LOSS_METRICS}, logprobs=summed["logprobs"])


_NOT_LOSS_METRICS = ("loss", "response_tokens", "logprobs")  # forward_backward's keys besides the loss's statistics


def _with_token_count(loss: torch.Tensor, reported: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """megatron-core's three-value loss-function result. The count is a placeholder: the model's
    ``calculate_per_token_loss`` (``models.gpt.transformer_config``) makes the schedule use the loss as
    given (it is divided by the step's global normaliser already) instead of dividing it by the count."""
    return loss, torch.ones((), dtype=torch.int), reported


def _tokens_only(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> TrainBatch:
    """A TrainBatch carrying only ``tokens`` [B, S] (and the positions wanted), for forward-only passes."""
    empty = torch.zeros(0, device=tokens.device)
    return TrainBatch(tokens=tokens, response_mask=empty if mask is None else mask, advantages=empty, old_logprobs=empty)


def _padded_cat(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """[b_i, s_i] micro-batch results -> [sum b_i, width], zeros right of each one's own width."""
    return torch.cat([torch.nn.functional.pad(part, (0, width - part.shape[1])) for part in parts])
