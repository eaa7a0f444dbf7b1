"""The run's process world: this rank, the world size, and the driver's channel to the others.

    world = World.join(device="cpu", timeout_minutes=30)       # torchrun's env://, or a world of one
    prompts = world.from_driver(prompts if world.is_driver else None)
    batch = world.on_driver(lambda: source.next_batch(16), waiting_for="the prompts")  # its errors stop every rank
    world.barrier("preparing the players")
    home = world.split([[0, 1], [2, 3]])                       # this rank's slice as a world of its own (collective)
    every = world.gather(mine)                                 # one value from every rank, on every rank

Rank 0, the driver, does the long one-rank phases (making players, playing games against opponents,
judging, evaluation's games); the other ranks wait for it in ``from_driver`` / ``barrier``. Those
waits go through a gloo group of their own whose timeout is ``cluster.timeout_minutes``: a driver
stuck longer ends the run with a message naming that setting instead of a silent hang. The group is
gloo in every world (objects are pickled on the CPU; NCCL would need them on the GPU). A slice of the
world (``split``; SPARTA's players side by side) is a World of its own: ranks from 0 within it, its first
rank its driver, its own gloo group; ``first_rank`` says where it sits in the whole world.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_SETTING = "cluster.timeout_minutes"


class DriverTimeout(RuntimeError):
    """A rank waited for the driver longer than ``cluster.timeout_minutes``."""


class DriverFailed(RuntimeError):
    """The driver's part of a phase raised; the other ranks stop with this, naming its error (``kind``:
    the driver's exception's class name)."""

    def __init__(self, message: str, *, kind: str = ""):
        super().__init__(message)
        self.kind = kind


class _Failure:
    """What the driver broadcasts instead of a result when its part raised."""

    def __init__(self, message: str, kind: str = ""):
        self.message, self.kind = message, kind


class World:
    """This process's place in the run (explicit: stages get it passed, nothing reads globals)."""

    def __init__(self, *, rank: int, size: int, driver_group: dist.ProcessGroup | None, timeout_minutes: float,
                 first_rank: int = 0):
        self.rank, self.size = rank, size  # within this world (a slice's: from 0 at its first rank)
        self.driver_group = driver_group  # None in a world of one
        self.timeout_minutes = timeout_minutes
        self.first_rank = first_rank  # this world's rank 0 in the whole world

    @classmethod
    def join(cls, *, device: str, timeout_minutes: float) -> World:
        """Join the torchrun / SLURM world (env://) or make a world of one, set this rank's GPU, and make
        the driver group (collective: every rank calls it once, before any other group is built)."""
        from megatron_elo.parallel.spawn import init_world_of_one

        backend = "gloo" if device == "cpu" else "nccl"
        timeout = timedelta(minutes=timeout_minutes)
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend, timeout=timeout)  # torchrun / SLURM set RANK, WORLD_SIZE, MASTER_ADDR/PORT
        init_world_of_one(backend)
        rank, size = dist.get_rank(), dist.get_world_size()
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))))
        group = dist.new_group(backend="gloo", timeout=timeout) if size > 1 else None
        return cls(rank=rank, size=size, driver_group=group, timeout_minutes=timeout_minutes)

    @property
    def is_driver(self) -> bool:
        """Rank 0: draws prompts, plays the games, keeps the Elo pool, logs."""
        return self.rank == 0

    def from_driver(self, value, *, waiting_for: str = "the driver"):
        """``value`` as the driver has it, on every rank (pickled broadcast; identity in a world of one)."""
        if self.size == 1:
            return value
        box = [value]
        with self._timed(waiting_for):
            dist.broadcast_object_list(box, group=self.driver_group, group_src=0)
        return box[0]

    def gather(self, value, *, waiting_for: str = "the other ranks") -> list:
        """Every rank's ``value``, in rank order, on every rank (pickled; ``[value]`` in a world of one)."""
        if self.size == 1:
            return [value]
        out: list = [None] * self.size
        with self._timed(waiting_for):
            dist.all_gather_object(out, value, group=self.driver_group)
        return out

    def split(self, slices: list[list[int]]) -> World:
        """This rank's slice (``slices``: every slice's ranks, consecutive, covering the world) as a World of its
        own (collective: every rank calls it with the same slices, each slice's gloo group made in turn)."""
        if sorted(r for ranks in slices for r in ranks) != list(range(self.size)) or any(
                ranks != list(range(ranks[0], ranks[0] + len(ranks))) for ranks in slices):
            raise ValueError(f"World.split: the slices {slices} must be runs of consecutive ranks covering 0..{self.size - 1}")
        home = None
        for ranks in slices:
            group = dist.new_group(ranks, backend="gloo", timeout=timedelta(minutes=self.timeout_minutes)) if self.size > 1 else None
            if self.rank in ranks:
                home = World(rank=self.rank - ranks[0], size=len(ranks), driver_group=group if len(ranks) > 1 else None,
                             timeout_minutes=self.timeout_minutes, first_rank=ranks[0])
        return home

    def on_driver(self, work, *, waiting_for: str, share=None):
        """``work()`` on the driver; every rank gets ``share(result)`` (default: the result itself), the
        driver the whole result. If ``work`` raises on the driver, every rank stops: the driver with its
        own error, the others with ``DriverFailed`` naming it (none is left waiting for a broadcast)."""
        if self.size == 1:
            return work()
        if not self.is_driver:
            got = self.from_driver(None, waiting_for=waiting_for)
            if isinstance(got, _Failure):
                raise DriverFailed(f"rank {self.rank}: the driver failed during {waiting_for}: {got.message}", kind=got.kind)
            return got
        try:
            result = work()
        except Exception as err:
            self.from_driver(_Failure(f"{type(err).__name__}: {err}", type(err).__name__), waiting_for=waiting_for)
            raise
        self.from_driver(result if share is None else share(result), waiting_for=waiting_for)
        return result

    def barrier(self, waiting_for: str) -> None:
        """Every rank waits here until all arrive (the driver's long phases: ``waiting_for`` names it)."""
        if self.size > 1:
            with self._timed(waiting_for):
                dist.barrier(group=self.driver_group)

    def _timed(self, waiting_for: str):
        return _TimeoutNamed(self, waiting_for)


class _TimeoutNamed:
    """Re-raise a collective's timeout as ``DriverTimeout`` naming the setting and the phase."""

    def __init__(self, world: World, waiting_for: str):
        self.world, self.waiting_for = world, waiting_for

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is not None and isinstance(error, RuntimeError) and "timed out" in str(error).lower():
            raise DriverTimeout(
                f"rank {self.world.rank} waited more than {TIMEOUT_SETTING}={self.world.timeout_minutes:g} for "
                f"{self.waiting_for}; raise {TIMEOUT_SETTING} if that phase is legitimately this long "
                f"(a large evaluation or judge batch), else look for the driver's error in its log") from error
        return False
