"""The policy train step: micro-batches, gradient accumulation, grad sync, clipping, AdamW + LR schedule.

    trainer = PolicyTrainer(model=model, groups=groups, arch=arch, config=cfg.trainer, padded_vocab=V, total_steps=N)
    stats = trainer.train_step(batch)          # batch: this DP rank's TrainBatch

CPU path (tested over gloo): data parallelism by an all-reduce (sum) of gradients over the DP group,
torch AdamW on each rank's parameter shard (element-wise, so sharding does not change the update),
pipeline stages driven by hand (forward, send activations, receive output grads, backward) one
micro-batch at a time. megatron-core's DDP buffers, distributed optimizer and pipeline schedules
allocate on CUDA and are the GPU path (not wired yet: see the README status table).

Loss side (``trainer.kernels``): ``torch`` computes the logits shard and reduces it with
``vocab_parallel_logprobs`` + ``reference.policy_loss``; ``triton`` stops the model before its output
layer and runs the fused linear log-prob + entropy kernel on the hidden states and the output weight
(no [tokens x vocab] logits), then the fused policy-loss kernel (``kernels/``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist

from megatron_elo.config.schema import ArchConfig, TrainerConfig
from megatron_elo.loss.reference import PolicyLossConfig, broadcast_to_tokens, policy_loss
from megatron_elo.models.gpt import output_layer_returns_hidden
from megatron_elo.models.hf_mapping import is_tp_sharded
from megatron_elo.parallel.groups import ProcessGroups
from megatron_elo.trainer.logprobs import shift_to_tokens, vocab_parallel_logprobs


@dataclass(frozen=True, kw_only=True)
class TrainBatch:
    """One DP rank's sequences for one optimizer step: prompt + response, right-padded to S."""

    tokens: torch.Tensor  # [B, S] int64
    response_mask: torch.Tensor  # [B, S] bool: token t is a response token (it gets a loss)
    advantages: torch.Tensor  # [B] float: one advantage per sequence
    old_logprobs: torch.Tensor  # [B, S] float: the sampler's log p(token_t | tokens_<t), nats
    ref_logprobs: torch.Tensor | None = None  # [B, S] float: the frozen reference's, for the KL term

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainBatch:
        """This batch with ``fn`` applied to every tensor it holds (an absent ref_logprobs stays None)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None})

    def to(self, device: torch.device) -> TrainBatch:
        """This batch with every tensor on ``device`` (the trainer's; a no-op when already there)."""
        return self._map(lambda tensor: tensor.to(device))

    def micro_batches(self, size: int) -> Iterator[TrainBatch]:
        """Consecutive slices of ``size`` sequences (the last may be shorter)."""
        for start in range(0, len(self), size):
            yield self._map(lambda tensor, start=start: tensor[start:start + size])


@dataclass(frozen=True, kw_only=True)
class StepStats:
    """What one optimizer step did (identical on every rank)."""

    loss: float
    pg_loss: float
    kl: float
    entropy: float
    clip_fraction: float
    grad_norm: float
    lr: float
    response_tokens: int


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


class PolicyTrainer:
    """Owns this rank's model shard, its optimizer and schedule, and the step counter.

    Inputs may live on any device: the trainer moves them to its model's (``self.device``) and keeps
    every tensor it hands to a collective there (NCCL takes only CUDA tensors, gloo both).

    Mixed precision: when the model's parameters are bf16 / fp16, AdamW updates fp32 main copies of
    them (``main_params``, as megatron-core's Float16Optimizer does) and the model gets the rounded
    result after each step; updating bf16 weights directly would round away any step smaller than
    about 1/256 of the weight (lr 1e-6 on weights of 0.02: every step). Gradients are accumulated
    over micro-batches in the model's dtype.
    """

    def __init__(self, *, model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, config: TrainerConfig,
                 padded_vocab: int, total_steps: int, frozen: bool = False):
        self.model = model
        self.groups = groups
        self.arch = arch
        self.config = config
        self.loss_config = PolicyLossConfig.from_trainer(config)
        self.fused = config.kernels == "triton"
        if self.fused:
            import kernels.linear_logprob  # noqa: F401  (fail at start-up, not at the first step, if triton is missing)
        self.local_vocab = padded_vocab // groups.layout.tp
        self.device = next(model.parameters()).device
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        # megatron-core marks TP-sharded tensors only when it initialises them; ask the mapping table
        self._tp_sharded = {id(p) for n, p in named if is_tp_sharded(n)}
        self.main_params = None  # fp32 copies the optimizer updates when the model is bf16 / fp16
        if not frozen and any(p.dtype != torch.float32 for p in self.params):  # frozen (the reference): never stepped
            self.main_params = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        self.optimizer = torch.optim.AdamW(self.main_params or self.params, lr=config.lr,
                                           betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay,
                                           foreach=False)
        min_ratio = config.min_lr / config.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(
            step, warmup_steps=config.warmup_steps, total_steps=total_steps, schedule=config.lr_schedule, min_ratio=min_ratio))
        self.step = 0

    # ------------------------------------------------------------ forward through the pipeline

    def _pp_peer(self, offset: int) -> int:
        c = self.groups.coords
        return self.groups.layout.rank_of(tp_rank=c.tp_rank, dp_rank=c.dp_rank, pp_rank=c.pp_rank + offset)

    def _stage_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run this stage on ``tokens`` [B, S]; returns (output, received input activation or None).
        Output on the last stage: the logits shard [B, S, V/tp], or with fused kernels a
        ``(hidden [B, S, H], output weight [V/tp, H])`` pair; hidden states [S, B, H] elsewhere."""
        batch, seq = tokens.shape
        positions = torch.arange(seq, device=tokens.device).unsqueeze(0).expand(batch, seq)
        received = None
        if not self.groups.is_first_stage:
            received = torch.empty(seq, batch, self.arch.hidden_size, dtype=next(self.model.parameters()).dtype,
                                   device=self.device)
            dist.recv(received, src=self._pp_peer(-1))
            received.requires_grad_(torch.is_grad_enabled())
            self.model.set_input_tensor(received)
        inputs = (tokens if self.groups.is_first_stage else None, positions, None)
        if self.fused and self.groups.is_last_stage:
            with output_layer_returns_hidden(self.model) as output_layer:
                hidden = self.model(*inputs)
            return (hidden, output_layer.weight), received
        return self.model(*inputs), received

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
    def compute_logprobs(self, tokens: torch.Tensor, *, micro_batch_size: int | None = None) -> torch.Tensor | None:
        """log p(token_t | tokens_<t) [B, S] under the current weights (0 at t = 0), on ``tokens``'
        device; returned on the last pipeline stage, None on the others."""
        self.model.eval()
        outputs = []
        size = micro_batch_size or self.config.micro_batch_size
        for start in range(0, tokens.shape[0], size):
            chunk = tokens[start:start + size].to(self.device)
            output, _ = self._stage_forward(chunk)
            if not self.groups.is_last_stage:
                dist.send(output.contiguous(), dst=self._pp_peer(+1))
                continue
            outputs.append(self._token_logprobs(output, chunk, with_entropy=False)[0])
        self.model.train()
        return torch.cat(outputs).to(tokens.device) if outputs else None

    # ------------------------------------------------------------ the step

    def _loss_normalizer(self, batch: TrainBatch) -> float:
        """Global count the loss is divided by: response tokens (token_mean) or sequences with one
        (seq_mean), over every micro-batch and DP rank of this step."""
        mask = batch.response_mask
        local = mask.sum() if self.config.loss_agg == "token_mean" else (mask.sum(dim=1) > 0).sum()
        total = local.to(torch.float64).reshape(1)
        if self.groups.layout.dp > 1:
            dist.all_reduce(total, group=self.groups.dp)
        return float(total.item())

    def forward_backward(self, batch: TrainBatch) -> dict[str, float]:
        """Accumulate gradients of the whole batch and synchronise them (DP sum, tied embeddings).
        Returns the summed loss statistics (before the optimizer step)."""
        normalizer = self._loss_normalizer(batch)
        totals = torch.zeros(5, dtype=torch.float64, device=self.device)  # loss, pg, kl, entropy, clipped-token count
        for micro in batch.micro_batches(self.config.micro_batch_size):
            output, received = self._stage_forward(micro.tokens)
            if self.groups.is_last_stage:
                loss, stats, clipped = self._micro_loss(output, micro, normalizer)
                loss.backward()
                totals += torch.tensor([loss.item(), stats.pg_loss, stats.kl, stats.entropy, clipped], dtype=torch.float64,
                                       device=self.device)
            else:
                dist.send(output.detach().contiguous(), dst=self._pp_peer(+1))
                grad = torch.empty_like(output)
                dist.recv(grad, src=self._pp_peer(+1))
                output.backward(grad)
            if received is not None:
                dist.send(received.grad.contiguous(), dst=self._pp_peer(-1))
        self._sync_grads()
        return self._share_stats(totals, batch)

    def _micro_loss(self, output, micro: TrainBatch, normalizer: float):
        logprobs, entropy = self._token_logprobs(output, micro.tokens, with_entropy=True)  # entropy is always logged
        mask = micro.response_mask
        if self.fused:
            from kernels import fused_policy_loss

            loss, stats = fused_policy_loss(logprobs, micro.old_logprobs, micro.advantages, mask, config=self.loss_config,
                                            ref_logprobs=micro.ref_logprobs, entropy=entropy, normalizer=normalizer)
        else:
            advantages = broadcast_to_tokens(micro.advantages, mask)
            loss, stats = policy_loss(logprobs, micro.old_logprobs, advantages, mask, config=self.loss_config,
                                      ref_logprobs=micro.ref_logprobs, entropy=entropy, normalizer=normalizer)
        clipped_tokens = stats.clip_fraction * float(mask.sum())
        return loss, stats, clipped_tokens

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
        loss, pg_loss, kl, entropy, clipped, tokens = totals.tolist()
        return {"loss": loss, "pg_loss": pg_loss, "kl": kl, "entropy": entropy,
                "clip_fraction": clipped / max(tokens, 1.0), "response_tokens": tokens}

    def _sync_grads(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        if self.groups.layout.dp > 1:  # one flat all-reduce instead of one per tensor
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=self.groups.dp)
            for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                g.copy_(synced)
        tied = self._tied_embedding()
        if tied is not None:
            dist.all_reduce(tied.grad, group=self.groups.embedding)

    def _tied_embedding(self) -> torch.nn.Parameter | None:
        """The embedding copy this stage holds when embeddings are tied across stages (pp > 1)."""
        if not self.arch.tie_word_embeddings or self.groups.embedding is None:
            return None
        if self.groups.is_first_stage:
            return self.model.embedding.word_embeddings.weight
        if self.groups.is_last_stage:
            return self.model.output_layer.weight
        return None

    def grad_norm(self) -> float:
        """Global L2 norm of the gradient over the whole model: TP-sharded tensors summed over TP,
        replicated ones counted once, stages summed over PP, the tied copy on the last stage skipped."""
        squares = torch.zeros(1, dtype=torch.float64, device=self.device)
        skip = self.model.output_layer.weight if (self._tied_embedding() is not None and not self.groups.is_first_stage) else None
        for p in self.params:
            if p is skip:
                continue
            if id(p) in self._tp_sharded or self.groups.coords.tp_rank == 0:
                squares += p.grad.detach().double().pow(2).sum()
        dist.all_reduce(squares, group=self.groups.model)
        return float(squares.sqrt().item())

    def optimizer_step(self) -> tuple[float, float]:
        """Clip to ``grad_clip`` by the global norm, step AdamW and the schedule; returns (norm, lr used)."""
        norm = self.grad_norm()
        if self.main_params is not None:
            for main, p in zip(self.main_params, self.params, strict=True):
                main.grad = p.grad.float()
                p.grad = None
        optimized = self.main_params or self.params
        if self.config.grad_clip > 0 and norm > self.config.grad_clip:
            scale = self.config.grad_clip / (norm + 1e-6)
            for p in optimized:
                p.grad.mul_(scale)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.main_params is not None:
            with torch.no_grad():
                for main, p in zip(self.main_params, self.params, strict=True):
                    p.copy_(main)  # rounded to the model's dtype
        self.step += 1
        return norm, lr

    def train_step(self, batch: TrainBatch) -> StepStats:
        """One optimizer step on this DP rank's ``batch`` (all ranks call it together)."""
        if len(batch) == 0:
            raise ValueError("empty TrainBatch: every DP rank needs at least one sequence")
        self.model.train()
        summed = self.forward_backward(batch.to(self.device))
        norm, lr = self.optimizer_step()
        return StepStats(loss=summed["loss"], pg_loss=summed["pg_loss"], kl=summed["kl"], entropy=summed["entropy"],
                         clip_fraction=summed["clip_fraction"], grad_norm=norm, lr=lr,
                         response_tokens=int(summed["response_tokens"]))
