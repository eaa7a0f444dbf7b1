"""The trainer's parallel layout and the run's device plan, as plain data.

``ParallelLayout`` maps a global rank to its (tp, dp, pp) coordinates in megatron-core's default
order "tp-cp-ep-dp-pp" (TP fastest, PP slowest; CP = EP = 1 here), and lists the ranks of every
TP / DP / PP group. It is built once at start-up from the validated config and passed down;
process groups are created from it (``megatron_elo.parallel.groups``), never looked up globally.

``plan_devices`` turns a validated ``RunConfig`` into the table ``--dry-run`` prints: each trainer
rank's node and device, and each engine's devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_elo.config.schema import EngineConfig, RunConfig


@dataclass(frozen=True, kw_only=True)
class RankCoords:
    """Where one global rank sits in the trainer layout."""

    rank: int
    tp_rank: int
    dp_rank: int
    pp_rank: int


@dataclass(frozen=True, kw_only=True)
class ParallelLayout:
    """Trainer TP x DP x PP over ``world_size = tp * dp * pp`` ranks (megatron-core order)."""

    tp: int
    pp: int
    dp: int

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelLayout.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        """Number of trainer ranks."""
        return self.tp * self.dp * self.pp

    def coords(self, rank: int) -> RankCoords:
        """Coordinates of global ``rank``: rank = tp_rank + tp * (dp_rank + dp * pp_rank)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the layout's world of {self.world_size}")
        return RankCoords(
            rank=rank,
            tp_rank=rank % self.tp,
            dp_rank=(rank // self.tp) % self.dp,
            pp_rank=rank // (self.tp * self.dp),
        )

    def rank_of(self, *, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        """Inverse of ``coords``."""
        return tp_rank + self.tp * (dp_rank + self.dp * pp_rank)

    def groups(self, kind: str) -> list[list[int]]:
        """All groups of one kind ("tp", "dp" or "pp"), each a sorted list of global ranks.

        Every rank is in exactly one group of each kind; groups are listed in order of their
        smallest rank, the order megatron-core creates them in.
        """
        if kind not in ("tp", "dp", "pp"):
            raise ValueError(f"group kind must be tp, dp or pp, got {kind!r}")
        by_key: dict[tuple[int, int], list[int]] = {}
        for rank in range(self.world_size):
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
    """The whole run's placement: trainer ranks and engines."""

    layout: ParallelLayout
    device: str
    trainer_ranks: list[tuple[RankCoords, int, int]]  # (coords, node, local device)
    engines: list[EnginePlan]


def plan_devices(cfg: RunConfig) -> DevicePlan:
    """The placement of every trainer rank and engine for a validated ``cfg``."""
    layout = ParallelLayout.from_config(cfg)
    per_node = cfg.cluster.devices_per_node
    trainer_devices = [(rank // per_node, rank % per_node) for rank in range(layout.world_size)]
    ranks = [(layout.coords(rank), *trainer_devices[rank]) for rank in range(layout.world_size)]

    def engine_plan(name: str, role: str, engine: EngineConfig) -> EnginePlan:
        if engine.placement == "colocated":
            devices = trainer_devices[: engine.num_devices]
        else:
            devices = [(engine.node, engine.first_device + i) for i in range(engine.num_devices)]
        return EnginePlan(name=name, role=role, tp=engine.tp, dp=engine.dp, placement=engine.placement, devices=devices)

    trained = [p.name for p in cfg.players] or ["policy"]  # a SPARTA tribe: one colocated engine per player
    engines = [engine_plan(name, "player" if cfg.players else "policy", cfg.rollout.engine) for name in trained]
    engines += [engine_plan(o.name, "opponent", o.engine) for o in cfg.opponents]
    if cfg.judge.kind == "llm":
        engines.append(engine_plan("judge", "judge", cfg.judge.engine))
    return DevicePlan(layout=layout, device=cfg.cluster.device, trainer_ranks=ranks, engines=engines)


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
