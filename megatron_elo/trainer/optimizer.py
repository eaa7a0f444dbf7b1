"""The trainer's gradient buffers and optimizer behind one interface (``TrainerOptimizer``).

    optimizer = build_optimizer("auto", model=model, groups=groups, arch=arch, config=cfg.trainer)
    optimizer.zero_grad()                  # before the step's first micro-batch
    with optimizer.no_sync(): ...          # backward of every micro-batch but the last (accumulate in fp32)
    ...                                    # the last one's backward (overlap: bucket reductions start here)
    optimizer.finish_grads()               # sum over DP, sum the two copies of a tied embedding (PP > 1)
    grad_norm = optimizer.step(lr=3e-6)    # clip by the global norm, AdamW, new weights in the model

Two implementations, chosen by ``trainer.optimizer``:

- ``TorchOptimizer`` (``torch``; ``auto`` on CPU): fp32 gradient accumulators fed by a hook on each
  parameter, one flat all-reduce over the DP group, torch AdamW on fp32 main weights. Runs anywhere.
- ``MegatronCoreOptimizer`` (``megatron_core``; ``auto`` on CUDA): megatron-core's
  DistributedDataParallel (fp32 grad buffers, bucketed all-reduce, or reduce-scatter + all-gather
  with ``parallel.distributed_optimizer``, which shards fp32 main weights and Adam state over DP;
  started during the last backward with ``parallel.overlap_grad_reduce``) and its optimizer. CUDA
  only: its buffers allocate on the current CUDA device (tests run it on CPU: tests/cuda_on_cpu.py).

Shared by both: the loss reaching backward is already divided by its global normaliser, so DP
gradients are summed (never averaged); weight decay skips biases and 1-D weights (megatron-core's
default); ``full_state`` is the same per-parameter fp32 tensors (main weight, Adam moments), so a
checkpoint moves between the two, between DP sizes and between precisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from megatron_elo.config.schema import ArchConfig, TrainerConfig
from megatron_elo.models.hf_mapping import is_tp_sharded, tp_rule
from megatron_elo.parallel.groups import ProcessGroups, single_rank_group

ADAM_EPS = 1e-8
STATE_KEYS = ("main", "exp_avg", "exp_avg_sq")


@dataclass(frozen=True, kw_only=True)
class DataParallelOptions:
    """How gradients and optimizer state meet the DP group (``parallel.*``; megatron_core only)."""

    distributed_optimizer: bool = False
    """Shard fp32 main weights and Adam state over DP (reduce-scatter gradients, all-gather weights)."""
    overlap_grad_reduce: bool = False
    """Start each gradient bucket's DP reduction during the last micro-batch's backward, as soon as
    the bucket is complete, instead of after the whole backward."""

    @classmethod
    def from_config(cls, parallel) -> DataParallelOptions:
        """From a validated ``ParallelConfig``."""
        return cls(distributed_optimizer=parallel.distributed_optimizer, overlap_grad_reduce=parallel.overlap_grad_reduce)


NO_DATA_PARALLEL_OPTIONS = DataParallelOptions()


class TrainerOptimizer(Protocol):
    """What the train step needs from gradients and the optimizer, whichever implementation."""

    def zero_grad(self) -> None:
        """Empty the gradient accumulators before a step's first micro-batch."""

    def no_sync(self) -> AbstractContextManager:
        """Around every micro-batch's backward but the last: accumulate only, start no DP reduction."""

    def finish_grads(self) -> None:
        """After the last micro-batch's backward: sum gradients over DP (and a tied embedding's two copies)."""

    def step(self, *, lr: float) -> float:
        """Clip to ``trainer.grad_clip`` by the global norm, take one AdamW step at ``lr``, put the new
        weights in the model; returns the global gradient norm before clipping."""

    def named_grads(self) -> dict[str, torch.Tensor]:
        """The accumulated fp32 gradient per parameter name of this rank's (tp, pp) shard (after
        ``finish_grads``: summed over DP). Collective over the DP group."""

    def full_state(self, *, keep: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """Per parameter name: fp32 ``main`` weight and Adam ``exp_avg`` / ``exp_avg_sq``, each the
        shape of this rank's (tp, pp) shard of the parameter, whole (gathered over DP if sharded), on
        the CPU (one parameter at a time leaves the device: no second copy of the state there).
        Collective over the DP group. ``keep=False`` (DP ranks that do not write the checkpoint): take
        part in the gather, copy nothing to the CPU, return {}."""

    def load_full_state(self, state: dict[str, dict[str, torch.Tensor]], *, adam_steps: int) -> None:
        """Inverse of ``full_state`` after ``adam_steps`` optimizer steps; also puts the main weights
        (rounded) into the model. Collective over the DP group."""


def build_optimizer(kind: str, *, model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, config: TrainerConfig,
                    data_parallel: DataParallelOptions = NO_DATA_PARALLEL_OPTIONS) -> TrainerOptimizer:
    """``kind`` auto / torch / megatron_core (``trainer.optimizer``); auto takes megatron_core when the
    model is on CUDA. ``data_parallel`` applies to megatron_core (the torch optimizer always all-reduces
    once after the backward and keeps the whole state on every rank)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    if kind == "auto":
        kind = "megatron_core" if on_cuda else "torch"
    if kind == "torch":
        return TorchOptimizer(model=model, groups=groups, arch=arch, config=config)
    if kind == "megatron_core":
        if not on_cuda:
            raise ValueError("trainer.optimizer=megatron_core needs the model on CUDA (megatron-core's grad buffers "
                             "and optimizer allocate there); use trainer.optimizer=torch (or auto) on CPU")
        return MegatronCoreOptimizer(model=model, groups=groups, arch=arch, config=config, data_parallel=data_parallel)
    raise ValueError(f"trainer.optimizer must be auto, torch or megatron_core, got {kind!r}")


def tied_embedding_copy(model: torch.nn.Module, arch: ArchConfig, groups: ProcessGroups) -> torch.nn.Parameter | None:
    """The copy of a tied embedding this stage holds when the two ends of the pipeline each keep one
    (pp > 1): the input embedding on the first stage, the output layer on the last; else None."""
    if not arch.tie_word_embeddings or groups.embedding is None:
        return None
    if groups.is_first_stage:
        return model.embedding.word_embeddings.weight
    if groups.is_last_stage:
        return model.output_layer.weight
    return None


def skips_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and 1-D weights (norms) take no weight decay (megatron-core's default rule)."""
    return param.ndim == 1 or name.endswith(".bias")


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def accumulate_grad_in_fp32(main: torch.Tensor, param: torch.Tensor) -> None:
    """Post-accumulate-grad hook of a bf16 / fp16 ``param``: add its fresh gradient to the fp32
    accumulator ``main.grad`` and free it, so micro-batch gradients sum in fp32 (as megatron-core's
    main_grad buffers do) rather than in the model's dtype."""
    main.grad.add_(param.grad)
    param.grad = None


class TorchOptimizer:
    """fp32 gradient accumulation, a flat all-reduce over DP and torch AdamW (CPU and CUDA).

    fp32 models step their own weights; bf16 / fp16 models keep fp32 ``main_params`` (as
    megatron-core's Float16Optimizer does) and get the rounded result after each step: stepping bf16
    weights directly would round away any update below about 1/256 of the weight (lr 1e-6 on weights
    of 0.02: every update).
    """

    def __init__(self, *, model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, config: TrainerConfig):
        named = _trainable(model)
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.groups, self.config = groups, config
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        self.main_params = ([torch.nn.Parameter(p.detach().float().clone()) for p in self.params] if self.mixed
                            else self.params)
        if self.mixed:
            for param, main in zip(self.params, self.main_params, strict=True):
                param.register_post_accumulate_grad_hook(lambda param, main=main: accumulate_grad_in_fp32(main, param))
        # megatron-core marks TP-sharded tensors only when it initialises them; ask the mapping table
        self._tp_sharded = [is_tp_sharded(name) for name in self.names]
        tied = tied_embedding_copy(model, arch, groups)
        self._tied_index = next(i for i, p in enumerate(self.params) if p is tied) if tied is not None else None
        # the last stage's copy of a tied embedding is the first stage's again: counted once in the norm
        self._norm_skip = self._tied_index if (tied is not None and not groups.is_first_stage) else None
        decay = [m for n, m in zip(self.names, self.main_params, strict=True) if not skips_weight_decay(n, m)]
        no_decay = [m for n, m in zip(self.names, self.main_params, strict=True) if skips_weight_decay(n, m)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=ADAM_EPS, foreach=False)

    def no_sync(self) -> AbstractContextManager:
        return contextlib.nullcontext()  # nothing starts before finish_grads

    def zero_grad(self) -> None:
        for param, main in zip(self.params, self.main_params, strict=True):
            param.grad = None
            if self.mixed:
                main.grad = torch.zeros_like(main) if main.grad is None else main.grad.zero_()

    def _grads(self) -> list[torch.Tensor]:
        """The fp32 accumulators, a zero tensor where no gradient flowed (e.g. unused on this stage)."""
        for main in self.main_params:
            if main.grad is None:
                main.grad = torch.zeros_like(main)
        return [main.grad for main in self.main_params]

    def finish_grads(self) -> None:
        grads = self._grads()
        if self.groups.layout.dp > 1:  # one flat all-reduce instead of one per tensor
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=self.groups.dp)
            for grad, summed in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                grad.copy_(summed)
        if self._tied_index is not None:
            dist.all_reduce(grads[self._tied_index], group=self.groups.embedding)

    def grad_norm(self) -> float:
        """Global L2 norm of the gradient over the whole model: TP-sharded tensors summed over TP,
        replicated ones counted once, stages summed over PP, the tied copy on the last stage skipped."""
        squares = torch.zeros(1, dtype=torch.float64, device=self.params[0].device)
        for i, grad in enumerate(self._grads()):
            if i != self._norm_skip and (self._tp_sharded[i] or self.groups.coords.tp_rank == 0):
                squares += grad.detach().double().pow(2).sum()
        dist.all_reduce(squares, group=self.groups.model)
        return float(squares.sqrt().item())

    def step(self, *, lr: float) -> float:
        norm = self.grad_norm()
        if self.config.grad_clip > 0 and norm > self.config.grad_clip:
            scale = self.config.grad_clip / (norm + 1e-6)
            for grad in self._grads():
                grad.mul_(scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.mixed:
            with torch.no_grad():
                for main, param in zip(self.main_params, self.params, strict=True):
                    param.copy_(main)  # rounded to the model's dtype
        return norm

    def named_grads(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._grads(), strict=True))

    def full_state(self, *, keep: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        if not keep:  # the whole state is on every DP rank already: nothing to take part in
            return {}
        state = {}
        for name, main in zip(self.names, self.main_params, strict=True):
            adam = self.optimizer.state.get(main, {})
            tensors = {"main": main.detach(), "exp_avg": adam.get("exp_avg", torch.zeros_like(main)),
                       "exp_avg_sq": adam.get("exp_avg_sq", torch.zeros_like(main))}
            state[name] = {key: tensor.to("cpu", copy=True) for key, tensor in tensors.items()}
        return state

    def load_full_state(self, state: dict[str, dict[str, torch.Tensor]], *, adam_steps: int) -> None:
        _check_names(state, self.names)
        with torch.no_grad():
            for name, param, main in zip(self.names, self.params, self.main_params, strict=True):
                saved = state[name]
                main.copy_(saved["main"])
                param.copy_(main)
                if adam_steps == 0:  # a fresh optimizer (a look-ahead copy may have stepped this one since)
                    self.optimizer.state.pop(main, None)
                else:  # torch AdamW's own state layout (step on the CPU: not capturable, not fused)
                    self.optimizer.state[main] = {
                        "step": torch.tensor(float(adam_steps), dtype=torch.float32),
                        "exp_avg": saved["exp_avg"].to(main.device, torch.float32).clone(),
                        "exp_avg_sq": saved["exp_avg_sq"].to(main.device, torch.float32).clone()}


def _check_names(state: dict, names: list[str]) -> None:
    if set(state) != set(names):
        missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
        raise ValueError(f"optimizer state does not fit this model shard: missing {missing[:3]}, unexpected {extra[:3]}")


def mark_tensor_parallel_attributes(model: torch.nn.Module) -> None:
    """Set ``tensor_model_parallel`` / ``partition_dim`` on TP-sharded weights, which megatron-core
    sets only when it initialises them (weights here come from a state dict): its grad norm counts a
    tensor without them once per model replica, as if replicated over TP. (The tied embedding's
    ``shared`` / ``shared_embedding`` marks GPTModel sets itself.)"""
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    from megatron_elo.models.hf_mapping import ROW

    for name, param in _trainable(model):
        if is_tp_sharded(name) and not hasattr(param, "tensor_model_parallel"):  # some layers mark their biases
            set_tensor_model_parallel_attributes(param, True, 1 if tp_rule(name) == ROW else 0, 1)


class MegatronCoreOptimizer:
    """megatron-core's DistributedDataParallel + optimizer (Float16 / FP32, or Distributed), CUDA only.

    The model is wrapped in place (megatron's DDP hooks add each gradient into fp32 ``main_grad``
    buffers); the trainer keeps calling the unwrapped module. ``data_parallel``: the distributed
    optimizer (fp32 main weights and Adam state sharded over DP) and overlapped bucket reduction.
    transformer-engine's FusedAdam is used when importable (NGC), else torch AdamW: megatron-core's choice.
    """

    def __init__(self, *, model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, config: TrainerConfig,
                 data_parallel: DataParallelOptions):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        mark_tensor_parallel_attributes(model)
        named = _trainable(model)
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.groups, self.config = groups, config
        self.distributed = distributed = data_parallel.distributed_optimizer
        tied = tied_embedding_copy(model, arch, groups)
        self._tied = tied
        dtype = self.params[0].dtype if any(p.dtype != torch.float32 for p in self.params) else torch.float32
        # DP gradients are summed, not averaged: the model's config has calculate_per_token_loss (models.gpt)
        collection = groups.megatron_collection()
        collection.ep = single_rank_group()  # expert parallel size 1
        collection.expt_dp = single_rank_group()  # no experts: else DDP creates one per rank, uncollectively
        collection.tp_ep_pp = None
        collection.intra_dist_opt = dist.group.WORLD  # grad norm of the sharded state: over every trainer rank
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                   overlap_grad_reduce=data_parallel.overlap_grad_reduce,
                                                   use_distributed_optimizer=distributed, average_in_collective=False,
                                                   check_for_nan_in_grad=False)
        self.ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model,
                                           pg_collection=collection)
        optimizer_config = OptimizerConfig(
            optimizer="adam", lr=config.lr, min_lr=config.min_lr, weight_decay=config.weight_decay,
            adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2, adam_eps=ADAM_EPS, clip_grad=config.grad_clip,
            bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
            loss_scale=1.0 if dtype == torch.float16 else None,  # unscaled like the torch path; bf16 is the GPU default
            use_distributed_optimizer=distributed)
        self.optimizer = get_megatron_optimizer(optimizer_config, [self.ddp], use_gloo_process_groups=False,
                                                pg_collection=collection)

    def no_sync(self) -> AbstractContextManager:
        return self.ddp.no_sync()

    def zero_grad(self) -> None:
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()

    def finish_grads(self) -> None:
        self.ddp.finish_grad_sync()
        if self._tied is not None:  # own bucket on both stages: the shard a rank owns is the same slice on both
            dist.all_reduce(self._tied.main_grad, group=self.groups.embedding)

    def step(self, *, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = self.config.weight_decay * group.get("wd_mult", 1.0)
        updated, norm, _ = self.optimizer.step()
        if not updated:  # only a dynamic fp16 loss scaler skips steps, and none is configured
            raise RuntimeError("megatron-core's optimizer skipped the step (non-finite gradients)")
        return float(norm) if norm is not None else 0.0

    def named_grads(self) -> dict[str, torch.Tensor]:
        """The fp32 ``main_grad`` buffers; with the distributed optimizer each DP rank holds the sum of
        its own slice only (reduce-scatter), so the whole gradient is gathered first (collective)."""
        if not (self.distributed and self.groups.layout.dp > 1):
            return {name: param.main_grad for name, param in zip(self.names, self.params, strict=True)}
        grads = {}
        for name, param, (start, end), _ in self._views():
            whole = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
            whole[start:end] = param.main_grad.view(-1)[start:end]
            dist.all_reduce(whole, group=self.groups.dp)  # each element is owned by one DP rank: a sum gathers
            grads[name] = whole.view(param.shape)
        return grads

    # ---------------------------------------------------------------- checkpoint state

    def _views(self) -> Iterator[tuple[str, torch.nn.Parameter, tuple[int, int], dict[str, torch.Tensor] | None]]:
        """(name, model param, (start, end) of the flat param this rank's state covers, that state
        {main, exp_avg, exp_avg_sq} as tensors over the range, or None where the rank owns none of it)."""
        for name, param in zip(self.names, self.params, strict=True):
            for inner in self.optimizer.chained_optimizers:
                found = _state_views(inner, param, distributed=self.distributed)
                if found is not None:
                    yield name, param, *found
                    break
            else:
                yield name, param, (0, 0), None

    def _ensure_adam_state(self) -> None:
        """Create Adam moments where none exist yet (before the first step), so a checkpoint can fill them."""
        for inner in self.optimizer.chained_optimizers:
            if self.distributed:  # a zero-gradient step on the shards: every value is overwritten by the load
                if not any(len(adam) for adam in inner.optimizer.state.values()):
                    inner._init_optimizer_states_with_dummy_values()
            elif inner.init_state_fn is not None:
                inner.init_state_fn(inner.optimizer, inner.config)

    def full_state(self, *, keep: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        gather = self.distributed and self.groups.layout.dp > 1
        if not (keep or gather):
            return {}
        state = {}
        for name, param, (start, end), views in self._views():
            full = {key: torch.zeros(param.numel(), dtype=torch.float32, device=param.device) for key in STATE_KEYS}
            if views is not None:
                for key in STATE_KEYS:
                    if views[key] is not None:  # Adam moments are absent before the first step: zeros
                        full[key][start:end] = views[key].detach().flatten().float()
            if gather:  # each element is owned by one DP rank: a sum gathers
                for key in STATE_KEYS:
                    dist.all_reduce(full[key], group=self.groups.dp)
            if keep:
                state[name] = {key: tensor.view(param.shape).cpu() for key, tensor in full.items()}
        return state

    def load_full_state(self, state: dict[str, dict[str, torch.Tensor]], *, adam_steps: int) -> None:
        _check_names(state, self.names)
        self._ensure_adam_state()
        with torch.no_grad():
            for name, param, (start, end), views in self._views():
                if views is not None:
                    for key in STATE_KEYS:
                        views[key].view(-1).copy_(state[name][key].flatten()[start:end])
                param.copy_(state[name]["main"])  # every rank holds the whole model weight (rounded)
            for inner in self.optimizer.chained_optimizers:
                adam = inner.optimizer
                if isinstance(adam, torch.optim.Adam | torch.optim.AdamW):  # torch counts steps per tensor
                    for tensor_state in adam.state.values():
                        tensor_state["step"] = torch.tensor(float(adam_steps), dtype=torch.float32)
                else:  # transformer-engine's FusedAdam counts them per group
                    for group in adam.param_groups:
                        group["step"] = adam_steps


def _state_views(inner, param: torch.nn.Parameter, *, distributed: bool):
    """((start, end), {main, exp_avg, exp_avg_sq}) of ``param`` in one of megatron-core's optimizers,
    or None when that optimizer holds none of it. Reads megatron-core 0.16's parallel group lists
    (model param <-> fp32 main param or shard). Not its ``_get_main_param_and_optimizer_states``:
    that indexes the inner optimizer's groups in buffer order, which the distributed optimizer
    reorders (fp32 shards first) when a bf16 model keeps some fp32 weights, as the local spec's norms."""
    if distributed:
        pairs = [*zip(inner.model_float16_groups, inner.shard_fp32_from_float16_groups, strict=True),
                 *zip(inner.model_fp32_groups, inner.shard_fp32_groups, strict=True)]
    else:
        pairs = list(zip(getattr(inner, "float16_groups", []), getattr(inner, "fp32_from_float16_groups", []), strict=True))
        pairs += [(group, group) for group in getattr(inner, "fp32_from_fp32_groups", [])]
        if not hasattr(inner, "float16_groups"):  # FP32Optimizer: the model's fp32 parameters step themselves
            pairs += [(group["params"], group["params"]) for group in inner.optimizer.param_groups]
    main = next((m for models, mains in pairs for p, m in zip(models, mains, strict=True) if p is param), None)
    if main is None:
        return None
    owned = inner._get_model_param_range_map(param)["param"] if distributed else None
    adam = inner.optimizer.state.get(main, {})
    return ((owned.start, owned.end) if owned is not None else (0, param.numel()),
            {"main": main, "exp_avg": adam.get("exp_avg"), "exp_avg_sq": adam.get("exp_avg_sq")})


