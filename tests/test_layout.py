"""The trainer layout: rank <-> (tp, dp, pp) and its groups match megatron-core's RankGenerator."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from megatron_elo.config.loader import load_config
from megatron_elo.config.validate import validate
from megatron_elo.parallel.layout import ParallelLayout, format_devices, plan_devices

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 2), (4, 1, 2), (2, 3, 2), (3, 2, 4)]


@pytest.mark.parametrize("tp, pp, dp", SHAPES)
def test_coords_and_rank_of_are_inverse_and_groups_partition_the_world(tp, pp, dp):
    layout = ParallelLayout(tp=tp, pp=pp, dp=dp)
    for rank in range(layout.world_size):
        c = layout.coords(rank)
        assert layout.rank_of(tp_rank=c.tp_rank, dp_rank=c.dp_rank, pp_rank=c.pp_rank) == rank
    for kind, size in (("tp", tp), ("dp", dp), ("pp", pp)):
        groups = layout.groups(kind)
        assert sorted(itertools.chain.from_iterable(groups)) == list(range(layout.world_size))
        assert all(len(g) == size for g in groups)


@pytest.mark.parametrize("tp, pp, dp", SHAPES)
def test_groups_equal_megatron_core_rank_generator(tp, pp, dp):
    parallel_state = pytest.importorskip("megatron.core.parallel_state")
    reference = parallel_state.RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=1, order="tp-cp-ep-dp-pp")
    layout = ParallelLayout(tp=tp, pp=pp, dp=dp)
    for kind in ("tp", "dp", "pp"):
        assert layout.groups(kind) == sorted(reference.get_ranks(kind))


def test_bad_layouts_and_ranks_are_refused():
    with pytest.raises(ValueError, match="ParallelLayout.tp must be >= 1"):
        ParallelLayout(tp=0, pp=1, dp=1)
    with pytest.raises(ValueError, match="rank 8 is outside the layout's world of 8"):
        ParallelLayout(tp=2, pp=2, dp=2).coords(8)
    with pytest.raises(ValueError, match="group kind must be"):
        ParallelLayout(tp=2, pp=2, dp=2).groups("ep")


def test_device_plan_of_the_7b_config():
    cfg = validate(load_config(ROOT / "configs" / "qwen2.5-7b_elo_evolve.yaml"), check_paths=False)
    plan = plan_devices(cfg)
    assert [node for _, node, _ in plan.trainer_ranks] == [0] * 8
    engines = {e.name: format_devices(e.devices) for e in plan.engines}
    assert engines == {"policy": "n0:0-7", "qwen2.5-32b": "n1:0-3", "qwen2.5-14b": "n1:4-5",
                       "qwen3-8b": "n1:6", "judge": "n1:7"}
