"""Tiny players made locally before a run (``prepare`` in the config: the CPU demo).

Each snapshot directory holds ``sft.json``: the settings it was made with (SFT settings and the
task's split, whose held-out and validation problems the SFT never draws). A snapshot whose
``sft.json`` differs from what the config asks for is made again, so a change of split can never
leave players that trained on the held-out problems.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from megatron_elo.config.schema import RunConfig
from megatron_elo.parallel.world import World
from megatron_elo.utils.logging import get_logger

log = get_logger(__name__)

STAMP = "sft.json"


def sft_settings(cfg: RunConfig, sft_steps: int) -> dict:
    """What a prepared snapshot is made from (compared with its ``sft.json``)."""
    prepare, synthetic = cfg.prepare, cfg.data.synthetic
    return {"sft_steps": sft_steps, "seed": prepare.seed, "lr": prepare.lr, "batch_size": prepare.batch_size,
            "arch": dataclasses.asdict(prepare.arch),
            "split": {"max_operand": synthetic.max_operand, "seed": synthetic.seed, "num_eval": synthetic.num_eval,
                      "num_validation": synthetic.num_validation}}


def stale_snapshots(cfg: RunConfig) -> list[str]:
    """Paths of the snapshots to make: missing, or made with other settings than ``sft_settings``."""
    stale = []
    for snapshot in cfg.prepare.snapshots:
        stamp = Path(snapshot.path) / STAMP
        if not (Path(snapshot.path) / "config.json").is_file():
            stale.append(snapshot.path)
        elif not stamp.is_file() or json.loads(stamp.read_text()) != sft_settings(cfg, snapshot.sft_steps):
            log.warning("prepared player %s was made with other settings (or before %s was written): making it again",
                        snapshot.path, STAMP)
            stale.append(snapshot.path)
    return stale


def prepare_players(cfg: RunConfig, world: World) -> None:
    """Make the snapshots ``cfg.prepare`` asks for that are not on disk as asked for (the driver; the
    other ranks wait for it). Snapshots made with the same settings are reused."""
    if world.is_driver and cfg.prepare is not None:
        prepare = cfg.prepare
        stale = stale_snapshots(cfg)
        if stale:
            from megatron_elo.tasks.arithmetic import split_of
            from megatron_elo.tasks.pretrain import train_snapshots

            synthetic = cfg.data.synthetic
            pairs = split_of(synthetic)["train"]
            log.info("making %d tiny player(s) by SFT on the task's training problems: %s", len(stale), stale)
            # one SFT run makes every snapshot (each is a point along it), so all of them are remade
            train_snapshots(prepare.arch, [(s.path, s.sft_steps) for s in prepare.snapshots], seed=prepare.seed,
                            batch_size=prepare.batch_size, lr=prepare.lr, max_operand=synthetic.max_operand, pairs=pairs)
            for snapshot in prepare.snapshots:
                (Path(snapshot.path) / STAMP).write_text(json.dumps(sft_settings(cfg, snapshot.sft_steps), indent=1))
    world.barrier("the driver to make the tiny players (prepare)")
