"""torch.distributed process groups built from a ``ParallelLayout``, once, at start-up.

Every rank must call ``build_process_groups`` with the same layout (``new_group`` is collective);
the result travels explicitly to the model, the loss and the optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist

from megatron_elo.parallel.layout import ParallelLayout, RankCoords


@dataclass(frozen=True, kw_only=True)
class ProcessGroups:
    """This rank's groups and coordinates. ``embedding`` joins the first and last pipeline stage of
    the same (tp, dp) position (tied embeddings keep their two copies in sync through it); None
    when pp == 1."""

    layout: ParallelLayout
    coords: RankCoords
    tp: dist.ProcessGroup
    pp: dist.ProcessGroup
    dp: dist.ProcessGroup
    model: dist.ProcessGroup  # tp x pp: one model replica
    embedding: dist.ProcessGroup | None

    @property
    def is_first_stage(self) -> bool:
        """This rank runs the embedding."""
        return self.coords.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """This rank runs the final norm and the output layer."""
        return self.coords.pp_rank == self.layout.pp - 1

    def megatron_collection(self):
        """megatron-core's ProcessGroupCollection for GPTModel(pg_collection=...).

        ``embd`` is None on purpose: megatron-core's own tied-embedding set-up moves the weight to
        CUDA (``weight.data.cuda()``); weights are loaded from a full state dict instead, and the
        trainer syncs tied-embedding grads over ``self.embedding``.
        """
        from megatron.core.process_groups_config import ProcessGroupCollection

        return ProcessGroupCollection(tp=self.tp, pp=self.pp, cp=single_rank_group(), embd=None, pos_embd=None, tp_cp=self.tp,
                                      dp=self.dp, dp_cp=self.dp, mp=self.model)


_SINGLETONS: dict[int, dist.ProcessGroup] = {}


def single_rank_group() -> dist.ProcessGroup:
    """A group of this rank alone (context parallel size 1), created once per rank."""
    return _SINGLETONS[dist.get_rank()]


def build_process_groups(layout: ParallelLayout, *, backend: str | None = None,
                         side_by_side: Sequence[ParallelLayout] = ()) -> ProcessGroups:
    """Create every TP / PP / DP / model / embedding / singleton group; return this rank's.

    side_by_side: the layouts of every slice of the world (``WorldSlices.layouts()``), ``layout`` (this
    rank's) among them: every rank creates every slice's groups in the same order (``new_group`` is
    collective over the world), so the slices' layouts must have one shape. Default: ``layout`` alone,
    spanning the world. Requires an initialised default process group of the slices' ranks together.
    """
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call init_process_group (torchrun sets the env)")
    slices = list(side_by_side) or [layout]
    if layout not in slices or len({(s.tp, s.pp, s.dp) for s in slices}) != 1:
        raise ValueError(f"side_by_side must hold this rank's layout {layout} and slices of one shape, got {slices}")
    covered = sorted(r for s in slices for r in s.ranks)
    if covered != list(range(dist.get_world_size())):
        raise ValueError(f"the world has {dist.get_world_size()} ranks but the layout(s) cover ranks {covered[:8]}.. "
                         f"({len(covered)}: tp*pp*dp per slice x slices)")
    rank = dist.get_rank()
    if rank not in layout.ranks:
        raise ValueError(f"rank {rank} is not in its layout's ranks {list(layout.ranks)}")
    mine: dict[str, dist.ProcessGroup | None] = {"embedding": None}
    for each in slices:
        _build_slice_groups(each, rank, mine, backend)
    for r in range(dist.get_world_size()):
        group = dist.new_group([r], backend=backend)
        if r == rank:
            _SINGLETONS[rank] = group
    return ProcessGroups(layout=layout, coords=layout.coords(rank), **mine)


def _build_slice_groups(layout: ParallelLayout, rank: int, mine: dict, backend: str | None) -> None:
    """Create one slice's groups (collective over the world); record this rank's in ``mine``."""
    for kind in ("tp", "pp", "dp"):
        for ranks in layout.groups(kind):
            group = dist.new_group(ranks, backend=backend)
            if rank in ranks:
                mine[kind] = group
    for dp_rank in range(layout.dp):  # model replica: all tp x pp ranks of one dp index
        ranks = sorted(layout.rank_of(tp_rank=t, dp_rank=dp_rank, pp_rank=p) for t in range(layout.tp) for p in range(layout.pp))
        group = dist.new_group(ranks, backend=backend)
        if rank in ranks:
            mine["model"] = group
    if layout.pp > 1:
        for pp_ranks in layout.groups("pp"):
            ends = [pp_ranks[0], pp_ranks[-1]]
            group = dist.new_group(ends, backend=backend)
            if rank in ends:
                mine["embedding"] = group
