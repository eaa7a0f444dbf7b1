"""The trainer layout: rank <-> (tp, dp, pp) and its groups match megatron-core's RankGenerator."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from megatron_elo.config.loader import load_config
from megatron_elo.config.validate import validate
from megatron_elo.parallel.layout import ParallelLayout, WorldSlices, format_devices, plan_devices

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
    with pytest.raises(ValueError, match=r"rank 8 is outside the layout's ranks 0\.\.7"):
        ParallelLayout(tp=2, pp=2, dp=2).coords(8)
    with pytest.raises(ValueError, match="group kind must be"):
        ParallelLayout(tp=2, pp=2, dp=2).groups("ep")


def test_slices_sit_side_by_side_each_with_the_groups_of_its_shape_shifted_by_hand():
    slices = WorldSlices(shape=ParallelLayout(tp=2, pp=1, dp=2), count=3)
    assert slices.world_size == 12 and [slices.index_of(r) for r in (0, 3, 4, 11)] == [0, 0, 1, 2]
    second = slices.layout(1)
    assert list(second.ranks) == [4, 5, 6, 7]
    assert second.groups("tp") == [[4, 5], [6, 7]] and second.groups("dp") == [[4, 6], [5, 7]]
    assert second.coords(7) == second.coords(7).__class__(rank=7, tp_rank=1, dp_rank=1, pp_rank=0)
    assert second.rank_of(tp_rank=0, dp_rank=1, pp_rank=0) == 6
    with pytest.raises(ValueError, match=r"rank 3 is outside the layout's ranks 4\.\.7"):
        second.coords(3)
    with pytest.raises(ValueError, match="slice 3 is outside the world's 3 slices"):
        slices.layout(3)
    assert slices.dealt(6) == [0, 0, 1, 1, 2, 2] and slices.dealt(0) == []
    with pytest.raises(ValueError, match="5 players cannot be dealt evenly to 3 slices"):
        slices.dealt(5)
    with pytest.raises(ValueError, match="WorldSlices.count must be >= 1"):
        WorldSlices(shape=ParallelLayout(tp=1, pp=1, dp=1), count=0)


def _slice_groups(rank, world_size):
    """This rank's TP / DP / PP / model group ranks and its slice world, with 2 slices of TP 2 (gloo)."""
    import torch.distributed as dist

    from megatron_elo.parallel.groups import build_process_groups
    from megatron_elo.parallel.world import World

    slices = WorldSlices(shape=ParallelLayout(tp=2, pp=1, dp=1), count=2)
    groups = build_process_groups(slices.layout(slices.index_of(rank)), side_by_side=slices.layouts())
    home = World(rank=rank, size=world_size, driver_group=dist.new_group(backend="gloo"), timeout_minutes=1).split(
        [list(layout.ranks) for layout in slices.layouts()])
    shared = home.from_driver(f"from {rank}")  # each slice's driver broadcasts to its slice only
    return ({kind: dist.get_process_group_ranks(getattr(groups, kind)) for kind in ("tp", "dp", "pp", "model")},
            (home.rank, home.size, home.first_rank, shared), home.gather(rank))


def test_slice_groups_and_slice_worlds_on_four_ranks():
    from megatron_elo.parallel.spawn import run_distributed

    results = run_distributed(_slice_groups, 4, timeout=120)
    assert [r[0]["tp"] for r in results] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [r[0]["dp"] for r in results] == [[0], [1], [2], [3]] and results[3][0]["model"] == [2, 3]
    assert [r[1] for r in results] == [(0, 2, 0, "from 0"), (1, 2, 0, "from 0"), (0, 2, 2, "from 2"), (1, 2, 2, "from 2")]
    assert [r[2] for r in results] == [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_device_plan_of_the_7b_config():
    cfg = validate(load_config(ROOT / "configs" / "qwen2.5-7b_elo_evolve.yaml"), check_paths=False)
    plan = plan_devices(cfg)
    assert [node for _, node, _ in plan.trainer_ranks] == [0] * 8
    engines = {e.name: format_devices(e.devices) for e in plan.engines}
    assert engines == {"policy": "n0:0-7", "qwen2.5-32b": "n1:0-3", "qwen2.5-14b": "n1:4-5",
                       "qwen3-8b": "n1:6", "judge": "n1:7"}


def test_device_plan_of_the_7b_tribe_on_two_slices():
    """Ten players, two slices of TP 2 x DP 2 on node 0: players 1-5 on devices 0-3, players 6-10 on 4-7."""
    cfg = validate(load_config(ROOT / "configs" / "qwen2.5-7b_sparta.yaml",
                               ["algorithm.sparta.slices=2", "parallel.dp=2", "rollout.engine.dp=2"]), check_paths=False)
    plan = plan_devices(cfg)
    assert plan.slices.count == 2 and [plan.slices.index_of(c.rank) for c, _, _ in plan.trainer_ranks] == [0] * 4 + [1] * 4
    assert [(c.tp_rank, c.dp_rank) for c, _, _ in plan.trainer_ranks[4:]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    players = [format_devices(e.devices) for e in plan.engines if e.role == "player"]
    assert players == ["n0:0-3"] * 5 + ["n0:4-7"] * 5
