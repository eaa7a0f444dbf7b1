"""Megatron (TP x PP shards) -> vLLM (HF names, full tensors), one weight at a time.

    engine.load_weights(hf_weight_stream(trainer.model, groups, arch))

Every trainer rank runs the generator together (it issues collectives): each TP-sharded weight is
all-gathered over the TP group and merged (QKV and gate/up layouts undone, vocab padding dropped);
with PP > 1 each stage's weights are broadcast over the PP group so every rank's engine shard sees
the whole model. Peak extra memory is one full weight, never the whole model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_mapping import (
    TIED_OUTPUT,
    full_shape,
    is_tp_sharded,
    local_to_global,
    megatron_weight_to_hf,
    stage_layers,
    unshard_tp,
)
from megatron_elo.parallel.groups import ProcessGroups


def _global_name(name: str, arch: ArchConfig, groups: ProcessGroups) -> str:
    return local_to_global(name, stage_layers(arch.num_layers, pp_rank=groups.coords.pp_rank, pp=groups.layout.pp).start)


def _full_tensor(name: str, local: torch.Tensor, groups: ProcessGroups) -> torch.Tensor:
    if groups.layout.tp == 1 or not is_tp_sharded(name):
        return local.detach()
    shards = [torch.empty_like(local) for _ in range(groups.layout.tp)]
    dist.all_gather(shards, local.detach().contiguous(), group=groups.tp)
    return unshard_tp(name, shards)


def megatron_weight_stream(model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(global Megatron name, full tensor) for every weight of the model, on every rank."""
    params = [(n, p) for n, p in model.named_parameters() if not (arch.tie_word_embeddings and n == TIED_OUTPUT
                                                                      and not groups.is_first_stage)]
    if groups.layout.pp == 1:
        for name, param in params:
            yield name, _full_tensor(name, param, groups)
        return
    for stage in range(groups.layout.pp):  # each stage in turn hands its weights to the whole PP group
        mine = groups.coords.pp_rank == stage
        src = groups.layout.rank_of(tp_rank=groups.coords.tp_rank, dp_rank=groups.coords.dp_rank, pp_rank=stage)
        manifest = [[(_global_name(n, arch, groups), n, tuple(p.shape), p.dtype) for n, p in params] if mine else None]
        dist.broadcast_object_list(manifest, src=src, group=groups.pp)
        local = dict(params) if mine else {}
        for global_name, local_name, shape, dtype in manifest[0]:
            full = _full_tensor(local_name, local[local_name], groups) if mine else None
            shape_full = full.shape if mine else full_shape(global_name, shape, groups.layout.tp)
            buffer = full.contiguous() if mine else torch.empty(shape_full, dtype=dtype)
            dist.broadcast(buffer, src=src, group=groups.pp)
            yield global_name, buffer


def hf_weight_stream(model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) pairs of the whole model, ready for ``RolloutEngine.load_weights``."""
    for name, full in megatron_weight_stream(model, groups, arch):
        yield from megatron_weight_to_hf(name, full, arch)
