"""Tiny players made locally before a run (``prepare`` in the config: the CPU demo)."""

from __future__ import annotations

from pathlib import Path

from megatron_elo.config.schema import RunConfig
from megatron_elo.parallel.world import World
from megatron_elo.utils.logging import get_logger

log = get_logger(__name__)


def prepare_players(cfg: RunConfig, world: World) -> None:
    """Make the snapshots ``cfg.prepare`` asks for that are not on disk yet (the driver; the other
    ranks wait for it). Existing snapshots are reused."""
    if world.is_driver and cfg.prepare is not None:
        prepare = cfg.prepare
        missing = [s.path for s in prepare.snapshots if not (Path(s.path) / "config.json").is_file()]
        if missing:
            from megatron_elo.tasks.pretrain import train_snapshots

            log.info("making %d tiny player(s) by SFT on the task: %s", len(missing), missing)
            train_snapshots(prepare.arch, [(s.path, s.sft_steps) for s in prepare.snapshots], seed=prepare.seed,
                            batch_size=prepare.batch_size, lr=prepare.lr, max_operand=cfg.data.synthetic.max_operand)
    world.barrier("the driver to make the tiny players (prepare)")
