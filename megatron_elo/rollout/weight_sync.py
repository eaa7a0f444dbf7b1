"""Megatron (TP x PP shards) -> vLLM (HF names, HF-shaped tensors), one weight at a time.

    shard = EngineShard.colocated(engine_tp=2, rank=dist.get_rank())
    stats = SyncStats()
    engine.load_weights(hf_weight_stream(trainer.model, trainer.groups, trainer.arch, engine=shard, stats=stats))

Every trainer rank runs the generator together (it issues collectives). Per weight:

1. the stage's TP shard: this rank's own, or (PP > 1) broadcast from the stage that owns it over the
   PP group: only the TP shard travels, never the merged weight;
2. local slice or gather: when the engine shard on this rank reads only rows/columns this rank's
   trainer shard already holds (trainer TP = 1, or engine TP = trainer TP with matching splits:
   attention heads, gate/up, row-parallel columns, and vocab rows when both paddings agree), nothing
   is communicated: the HF-shaped tensor handed to vLLM holds this rank's slice at its place and
   uninitialised memory elsewhere, which vLLM's loader never reads (tests poison it with NaN to
   prove that). Otherwise the shard is all-gathered over the TP group (what verl, NeMo-RL and
   OpenRLHF do for every weight);
3. Megatron -> HF layout (QKV split per head group, gate/up split, vocab padding dropped).

Peak extra memory is one HF-shaped weight (plus its shards), never the whole model; vLLM consumes
the stream inside its worker (``reload_weights``), so the bucket is one weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_mapping import (
    REPLICATED,
    TIED_OUTPUT,
    VOCAB,
    local_to_global,
    megatron_weight_to_hf,
    stage_layers,
    tp_rule,
    unshard_tp,
)
from megatron_elo.parallel.groups import ProcessGroups

VLLM_VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE for VocabParallelEmbedding / ParallelLMHead


@dataclass(frozen=True, kw_only=True)
class EngineShard:
    """Which part of the model the engine shard on this rank loads: engine TP size and TP index."""

    tp: int = 1
    tp_rank: int = 0

    @classmethod
    def colocated(cls, *, engine_tp: int, rank: int) -> EngineShard:
        """The shard of global ``rank`` in a colocated (external_launcher) engine: vLLM orders the
        world with TP fastest, so rank r is engine TP rank r % engine_tp."""
        return cls(tp=engine_tp, tp_rank=rank % engine_tp)


@dataclass
class SyncStats:
    """What one weight sync moved on this rank (bytes in the tensors' own dtype)."""

    weights: int = 0  # Megatron weights streamed
    local_weights: int = 0  # of which needed no TP communication
    hf_bytes: int = 0  # bytes of the HF-shaped tensors handed to the engine
    received_bytes: int = 0  # bytes this rank received over TP all-gathers and PP broadcasts
    largest_bytes: int = 0  # the largest HF-shaped tensor (the stream's peak extra memory is about this)


def vllm_vocab_rows(vocab_size: int, shard: EngineShard) -> range:
    """Rows of the (unpadded) vocabulary that vLLM's vocab-parallel embedding / LM head on ``shard``
    reads: vocab padded to a multiple of 64, split evenly over the engine's TP ranks."""
    padded = -(-vocab_size // VLLM_VOCAB_PADDING) * VLLM_VOCAB_PADDING
    per_rank = padded // shard.tp
    return range(min(shard.tp_rank * per_rank, vocab_size), min((shard.tp_rank + 1) * per_rank, vocab_size))


def engine_reads_local_slice(name: str, arch: ArchConfig, *, trainer_tp: int, trainer_tp_rank: int,
                             local_rows: int, engine: EngineShard) -> bool:
    """True when the engine shard needs only what this rank's trainer TP shard of ``name`` holds.

    local_rows: rows of this rank's shard (vocab weights: padded vocab / trainer TP).
    """
    rule = tp_rule(name)
    if rule == REPLICATED or trainer_tp == 1:
        return True
    if engine.tp != trainer_tp or engine.tp_rank != trainer_tp_rank:
        return False
    if rule == VOCAB:
        needed = vllm_vocab_rows(arch.vocab_size, engine)
        held = range(trainer_tp_rank * local_rows, (trainer_tp_rank + 1) * local_rows)
        return len(needed) == 0 or (needed.start >= held.start and needed.stop <= held.stop)
    # heads (whole query groups), gate/up halves and row-parallel columns split evenly on both sides;
    # vLLM replicates KV heads when kv_heads < tp, Megatron does not allow it.
    return arch.num_kv_heads % trainer_tp == 0


def _stage_weights(model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig) -> list[tuple[str, torch.Tensor]]:
    """This rank's (local name, TP shard) pairs, without megatron-core's tied copy of the embedding."""
    return [(n, p) for n, p in model.named_parameters()
            if not (arch.tie_word_embeddings and n == TIED_OUTPUT and not groups.is_first_stage)]


def _stage_shards(model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig,
                  stats: SyncStats) -> Iterator[tuple[str, torch.Tensor]]:
    """(global Megatron name, this rank's TP shard) of every weight of every stage, on every rank."""
    params = _stage_weights(model, groups, arch)
    if groups.layout.pp == 1:
        for name, param in params:
            yield name, param.detach()
        return
    start = stage_layers(arch.num_layers, pp_rank=groups.coords.pp_rank, pp=groups.layout.pp).start
    device = params[0][1].device  # NCCL broadcasts CUDA tensors only
    for stage in range(groups.layout.pp):  # each stage in turn hands its TP shards to its PP group
        mine = groups.coords.pp_rank == stage
        src = groups.layout.rank_of(tp_rank=groups.coords.tp_rank, dp_rank=groups.coords.dp_rank, pp_rank=stage)
        manifest = [[(local_to_global(n, start), tuple(p.shape), p.dtype) for n, p in params] if mine else None]
        dist.broadcast_object_list(manifest, src=src, group=groups.pp)
        local = iter(params)
        for global_name, shape, dtype in manifest[0]:
            buffer = next(local)[1].detach().contiguous() if mine else torch.empty(shape, dtype=dtype, device=device)
            dist.broadcast(buffer, src=src, group=groups.pp)
            if not mine:
                stats.received_bytes += buffer.nbytes
            yield global_name, buffer


def _engine_view(name: str, shard: torch.Tensor, groups: ProcessGroups, *, poison: bool) -> torch.Tensor:
    """A merged-shape tensor holding this rank's shard at its place; the rest is never read."""
    def filler() -> torch.Tensor:
        return torch.full_like(shard, float("nan")) if poison else torch.empty_like(shard)

    shards = [shard if r == groups.coords.tp_rank else filler() for r in range(groups.layout.tp)]
    return unshard_tp(name, shards)


def _gathered(name: str, shard: torch.Tensor, groups: ProcessGroups, stats: SyncStats) -> torch.Tensor:
    shards = [torch.empty_like(shard) for _ in range(groups.layout.tp)]
    dist.all_gather(shards, shard.contiguous(), group=groups.tp)
    stats.received_bytes += (groups.layout.tp - 1) * shard.nbytes
    return unshard_tp(name, shards)


def megatron_weight_stream(model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, *,
                           engine: EngineShard | None = None, stats: SyncStats | None = None,
                           local_slices: bool = True, poison: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(global Megatron name, merged-shape tensor) for every weight, on every rank.

    engine: the engine shard this rank feeds (None: a whole-model engine, TP 1).
    local_slices: False gathers every TP-sharded weight (the peers' way; the benchmark's baseline).
    poison: fill the parts the engine must not read with NaN (tests).
    """
    engine = engine or EngineShard()
    stats = stats if stats is not None else SyncStats()
    tp = groups.layout.tp
    peer_engines = [engine] * tp  # the engine shard each rank of this TP group feeds
    if tp > 1:
        dist.all_gather_object(peer_engines, engine, group=groups.tp)

    def group_reads_local_slices(name: str, local_rows: int) -> bool:
        # decided for the whole TP group: the all-gather is collective, so every rank must agree
        return local_slices and all(engine_reads_local_slice(name, arch, trainer_tp=tp, trainer_tp_rank=r,
                                                             local_rows=local_rows, engine=peer)
                                    for r, peer in enumerate(peer_engines))

    for name, shard in _stage_shards(model, groups, arch, stats):
        if tp == 1 or tp_rule(name) == REPLICATED:
            full, local = shard, True
        elif group_reads_local_slices(name, shard.shape[0]):
            full, local = _engine_view(name, shard, groups, poison=poison), True
        else:
            full, local = _gathered(name, shard, groups, stats), False
        stats.weights += 1
        stats.local_weights += local
        yield name, full


def hf_weight_stream(model: torch.nn.Module, groups: ProcessGroups, arch: ArchConfig, *,
                     engine: EngineShard | None = None, stats: SyncStats | None = None,
                     local_slices: bool = True, poison: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, HF-shaped tensor) pairs of the whole model, ready for ``RolloutEngine.load_weights``
    (arguments as ``megatron_weight_stream``)."""
    stats = stats if stats is not None else SyncStats()
    for name, full in megatron_weight_stream(model, groups, arch, engine=engine, stats=stats,
                                             local_slices=local_slices, poison=poison):
        for hf_name, tensor in megatron_weight_to_hf(name, full, arch):
            stats.hf_bytes += tensor.nbytes
            stats.largest_bytes = max(stats.largest_bytes, tensor.nbytes)
            yield hf_name, tensor
