"""The trainer's parallel layout and the run's device plan, as plain data.

``ParallelLayout`` maps a global rank to its (tp, dp, pp) coordinates in megatron-core's default
order "tp-cp-ep-dp-pp" (TP fastest, PP slowest; CP = EP = 1 here), and lists the ranks of every
TP / DP / PP group. It is built once at start-up from the validated config and passed down;
process groups are created from it (``megatron_elo.parallel.groups``), never looked up globally.
``WorldSlices`` cuts the world into equal slices of one such layout each, side by side (a SPARTA
tribe's ``algorithm.sparta.slices``: each slice its own TP / DP / PP groups and its own players).

``plan_devices`` turns a validated ``RunConfig`` into the table ``--dry-run`` prints: each trainer
rank's node and device, and each engine's devices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_elo.config.schema import EngineConfig, RunConfig
from megatron_elo.config.validate_sparta import slice_count


@dataclass(frozen=True, kw_only=True)
class RankCoords:
    """Where one global rank sits in the trainer layout."""

    rank: int
    tp_rank: int
    dp_rank: int
    pp_rank: int


@dataclass(frozen=True, kw_only=True)
class ParallelLayout:
    """Trainer TP x DP x PP over ``world_size = tp * dp * pp`` ranks (megatron-core order), the global ranks
    ``first_rank`` .. ``first_rank + world_size - 1`` (0: the whole world; a slice of ``WorldSlices`` otherwise)."""

    tp: int
    pp: int
    dp: int
    first_rank: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.first_rank < 0:
            raise ValueError(f"ParallelLayout.first_rank must be >= 0, got {self.first_rank}")

    @property
    def world_size(self) -> int:
        """Number of trainer ranks of this layout."""
        return self.tp * self.dp * self.pp

    @property
    def ranks(self) -> range:
        """The layout's global ranks."""
        return range(self.first_rank, self.first_rank + self.world_size)

    def coords(self, rank: int) -> RankCoords:
        """Coordinates of global ``rank``: rank - first_rank = tp_rank + tp * (dp_rank + dp * pp_rank)."""
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is outside the layout's ranks {self.first_rank}..{self.ranks[-1]}")
        local = rank - self.first_rank
        return RankCoords(
            rank=rank,
            tp_rank=local % self.tp,
            dp_rank=(local // self.tp) % self.dp,
            pp_rank=local // (self.tp * self.dp),
        )

    def rank_of(self, *, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        """Inverse of ``coords`` (a global rank)."""
        return self.first_rank + tp_rank + self.tp * (dp_rank + self.dp * pp_rank)

    def groups(self, kind: str) -> list[list[int]]:
        """All groups of one kind ("tp", "dp" or "pp"), each a sorted list of global ranks.

        Every rank is in exactly one group of each kind; groups are listed in order of their
        smallest rank, the order megatron-core creates them in.
        """
        if kind not in ("tp", "dp", "pp"):
            raise ValueError(f"group kind must be tp, dp or pp, got {kind!r}")
        by_key: dict[tuple[int, int], list[int]] = {}
        for rank in self.ranks:
            c = self.coords(rank)
            key = {"tp": (c.dp_rank, c.pp_rank), "dp": (c.tp_rank, c.pp_rank), "pp": (c.tp_rank, c.dp_rank)}[kind]
            by_key.setdefault(key, []).append(rank)
        return sorted(by_key.values())

    def group_of(self, kind: str, rank: int) -> list[int]:
        """The ranks of ``rank``'s group of ``kind``."""
        return next(g for g in self.groups(kind) if rank in g)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ParallelLayout:
        """The trainer layout of a validated config."""
        return cls(tp=cfg.parallel.tp, pp=cfg.parallel.pp, dp=cfg.parallel.dp)


@dataclass(frozen=True, kw_only=True)
class WorldSlices:
    """The world cut into ``count`` slices of ``shape``'s ranks each, side by side: slice s is the global ranks
    s * shape.world_size .. (s + 1) * shape.world_size - 1 with its own TP / DP / PP groups (count 1: the whole
    world, one layout)."""

    shape: ParallelLayout
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"WorldSlices.count must be >= 1, got {self.count}")
        if self.shape.first_rank != 0:
            raise ValueError("WorldSlices.shape is the layout of slice 0 (first_rank 0)")

    @property
    def world_size(self) -> int:
        """Ranks of every slice together."""
        return self.count * self.shape.world_size

    def layout(self, index: int) -> ParallelLayout:
        """Slice ``index``'s layout, on its own global ranks."""
        if not 0 <= index < self.count:
            raise ValueError(f"slice {index} is outside the world's {self.count} slices")
        return replace(self.shape, first_rank=index * self.shape.world_size)

    def index_of(self, rank: int) -> int:
        """The slice holding global ``rank``."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the world of {self.world_size}")
        return rank // self.shape.world_size

    def layouts(self) -> list[ParallelLayout]:
        """Every slice's layout, in rank order."""
        return [self.layout(i) for i in range(self.count)]

    def dealt(self, players: int) -> list[int]:
        """The slice of each of ``players`` players (a multiple of ``count``): dealt in order, players / count each."""
        if players % self.count:
            raise ValueError(f"{players} players cannot be dealt evenly to {self.count} slices")
        return [i // (players // self.count) for i in range(players)]

    @classmethod
    def from_config(cls, cfg: RunConfig) -> WorldSlices:
        """``algorithm.sparta.slices`` slices of ``parallel.*`` each (one for every other method)."""
        return cls(shape=ParallelLayout.from_config(cfg), count=slice_count(cfg))


@dataclass(frozen=True, kw_only=True)
class EnginePlan:
    """Where one vLLM engine runs."""

    name: str
    role: str  # "policy", "opponent" or "judge"
    tp: int
    dp: int
    placement: str
    devices: list[tuple[int, int]]  # (node, local device) pairs


@dataclass(frozen=True, kw_only=True)
class DevicePlan:
    """The whole run's placement: trainer ranks and engines (``slices``: the trainer world's slices)."""

    layout: ParallelLayout
    device: str
    trainer_ranks: list[tuple[RankCoords, int, int]]  # (coords, node, local device)
    engines: list[EnginePlan]
    slices: WorldSlices | None = None


def plan_devices(cfg: RunConfig) -> DevicePlan:
    """The placement of every trainer rank and engine for a validated ``cfg``."""
    slices = WorldSlices.from_config(cfg)
    layout = slices.shape
    per_node = cfg.cluster.devices_per_node
    trainer_devices = [(rank // per_node, rank % per_node) for rank in range(slices.world_size)]
    ranks = [(slices.layout(slices.index_of(rank)).coords(rank), *trainer_devices[rank]) for rank in range(slices.world_size)]

    def engine_plan(name: str, role: str, engine: EngineConfig, first_rank: int = 0) -> EnginePlan:
        if engine.placement == "colocated":
            devices = trainer_devices[first_rank: first_rank + engine.num_devices]
        else:
            devices = [(engine.node, engine.first_device + i) for i in range(engine.num_devices)]
        return EnginePlan(name=name, role=role, tp=engine.tp, dp=engine.dp, placement=engine.placement, devices=devices)

    homes = slices.dealt(len(cfg.players))  # a SPARTA tribe: one colocated engine per player, on its slice
    engines = [engine_plan(p.name, "player", cfg.rollout.engine, slices.layout(home).first_rank)
               for p, home in zip(cfg.players, homes, strict=True)] or [engine_plan("policy", "policy", cfg.rollout.engine)]
    engines += [engine_plan(o.name, "opponent", o.engine) for o in cfg.opponents]
    if cfg.judge.kind == "llm":
        engines.append(engine_plan("judge", "judge", cfg.judge.engine))
    return DevicePlan(layout=layout, device=cfg.cluster.device, trainer_ranks=ranks, engines=engines,
                      slices=slices if slices.count > 1 else None)


def format_devices(devices: list[tuple[int, int]]) -> str:
    """``[(0,0),(0,1),(1,0)]`` -> ``"n0:0-1 n1:0"``."""
    by_node: dict[int, list[int]] = {}
    for node, device in devices:
        by_node.setdefault(node, []).append(device)
    parts = []
    for node, locals_ in by_node.items():
        span = f"{locals_[0]}-{locals_[-1]}" if len(locals_) > 1 else f"{locals_[0]}"
        parts.append(f"n{node}:{span}")
    return " ".join(parts)
