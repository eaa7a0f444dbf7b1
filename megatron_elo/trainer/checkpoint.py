"""Sharded training checkpoints: model shard, optimizer, schedule, RNG and step, per (tp, pp) rank.

    <dir>/step_00000010/
        meta.json                 format, step, layout, arch, every file's SHA-256 (written last: a directory
                                  without it is incomplete)
        shard_tp0_pp0.pt ...      model weights + optimizer state of each (tp, pp) shard (DP rank 0 writes)
        shard_<name>_tp0_pp0.pt   the same of each further trained player (SPARTA's tribe), meta.json's "players"
        rng_rank0.pt ...          each rank's torch / numpy / python (and CUDA) RNG states
        state_rank0.pt ...        each rank's own run state, when it has some (an overlapped run's pending batch)

The optimizer state is per parameter and whole over DP (fp32 main weight, Adam moments:
``TrainerOptimizer.full_state``, gathered when the distributed optimizer shards it), so a checkpoint
resumes under a different DP size, on either ``trainer.optimizer`` and in either precision; TP and PP
must match (convert through HF to change them). The LR schedule is a function of the step.
Each step is written to a temporary directory and renamed into place, so an interrupted save never
damages an earlier checkpoint; ``checkpoint_problems`` checks a checkpoint's files against the
checksums in its meta.json, and ``latest_valid_checkpoint`` skips the corrupt ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_elo.models.gpt import model_layer_spec
from megatron_elo.trainer.offload import resident
from megatron_elo.trainer.step import PolicyTrainer

META = "meta.json"
FORMAT = 2  # 1 (before 2026-11-24): torch optimizer state_dict + main_params; not readable any more


def step_dir(root: str | Path, step: int) -> Path:
    """Directory of the checkpoint at ``step``."""
    return Path(root) / f"step_{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (one with meta.json), or None."""
    complete = sorted(p for p in Path(root).glob("step_*") if (p / META).is_file())
    return complete[-1] if complete else None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_problems(path: str | Path) -> list[str]:
    """What is wrong with the checkpoint at ``path`` (an unreadable meta.json, a file missing or not
    matching its recorded SHA-256); [] when it is sound (checkpoints without checksums are trusted)."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as err:
        return [f"{path / META}: unreadable ({type(err).__name__}: {err})"]
    problems = []
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file_sha256(file) != expected:
            problems.append(f"{file}: its SHA-256 is not the one recorded at save time (truncated or damaged)")
    return problems


def latest_valid_checkpoint(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint under ``root`` whose files match their checksums, and a warning
    line for each newer one skipped."""
    skipped = []
    for candidate in sorted((p for p in Path(root).glob("step_*") if (p / META).is_file()), reverse=True):
        problems = checkpoint_problems(candidate)
        if not problems:
            return candidate, skipped
        skipped.append(f"checkpoint {candidate} is corrupt, skipped: {'; '.join(problems)}")
    return None, skipped


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's current device
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def shard_name(tp_rank: int, pp_rank: int, player: str | None = None) -> str:
    """File of one (tp, pp) shard: of the run's first trained player (None), or of the player ``player``."""
    return f"shard_tp{tp_rank}_pp{pp_rank}.pt" if player is None else f"shard_{player}_tp{tp_rank}_pp{pp_rank}.pt"


def save_checkpoint(trainer: PolicyTrainer | None, root: str | Path, *, extra: dict | None = None, keep_last: int = 0,
                    rank_state: dict | None = None, step: int | None = None,
                    others: dict[str, PolicyTrainer | None] | None = None) -> Path:
    """Write the trainer's state at its current step (collective: every rank calls it).

    step: the run's step, naming the directory and meta.json's "step" (default: the trainer's optimizer
    steps; they differ when a step takes several optimizer steps, or none: an overlapped run's first).
    extra: JSON-serialisable run state kept in meta.json (data position, Elo pool, MLflow run id).
    keep_last: delete all but the newest ``keep_last`` checkpoints afterwards (0 keeps all).
    rank_state: this rank's own state (torch-saveable), read back by ``load_rank_state``.
    others: further trained players by name (same layout), each in its own shard files.
    A trainer given as None lives on another slice of the world (SPARTA's ``algorithm.sparta.slices``): that
    slice's ranks write it. Rank 0 holds ``trainer``.
    """
    rank = dist.get_rank()
    if trainer is None and (rank == 0 or step is None):
        raise ValueError("save_checkpoint: rank 0 holds the first trainer (it writes meta.json), and a rank without it "
                         "is given the step")
    step = trainer.step if step is None else step
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    written = [f"rng_rank{rank}.pt"]
    for player, each in _held(trainer, others):
        c = each.groups.coords
        with resident(each):  # an offloaded player's memory back for its read (trainer/offload.py)
            optimizer_state = each.optimizer.full_state(keep=c.dp_rank == 0)  # collective over DP
            if c.dp_rank == 0:
                written.append(shard_name(c.tp_rank, c.pp_rank, player))
                torch.save({"model": each.model.state_dict(), "optimizer": optimizer_state, "step": each.step}, tmp / written[-1])
    torch.save(_rng_state(), tmp / written[0])
    if rank_state:
        written.append(f"state_rank{rank}.pt")
        torch.save(rank_state, tmp / written[-1])
    checksums: list = [None] * dist.get_world_size()  # each rank hashes its own files; rank 0 records them all
    dist.all_gather_object(checksums, {name: file_sha256(tmp / name) for name in written})
    if rank == 0:
        layout = trainer.groups.layout
        meta = {"format": FORMAT, "step": step, "tp": layout.tp, "pp": layout.pp, "dp": layout.dp,
                "arch": dataclasses.asdict(trainer.arch), "layer_spec": model_layer_spec(trainer.model), "extra": extra or {}, "players": sorted(others or {}),
                "files": {name: digest for per_rank in checksums for name, digest in sorted(per_rank.items())}}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep_last > 0:
            for old in sorted(p for p in Path(root).glob("step_*") if (p / META).is_file())[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(trainer: PolicyTrainer, path: str | Path, *, others: dict[str, PolicyTrainer] | None = None) -> dict:
    """Restore model, optimizer, step and RNG from ``path`` (and each of ``others``' own shards, by name,
    as ``save_checkpoint`` wrote them); returns meta["extra"]. Collective.

    Raises ValueError naming the mismatch when the checkpoint's format, TP / PP or architecture differ.
    """
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {META}); pick one listed by latest_checkpoint()")
    meta = json.loads(meta_file.read_text())
    if meta.get("format", 1) != FORMAT:
        raise ValueError(f"{path} is a checkpoint of format {meta.get('format', 1)}, this megatron-elo reads format {FORMAT}; "
                         f"export it to HF with the megatron-elo version that wrote it, then start from that model")
    held = _held(trainer, others)
    if not held:
        raise ValueError("load_checkpoint: this rank holds none of the trainers")
    some = held[0][1]  # every trainer of a run has one layout shape and one architecture
    layout = some.groups.layout
    if (meta["tp"], meta["pp"]) != (layout.tp, layout.pp):
        raise ValueError(f"{path} was written with tp={meta['tp']} pp={meta['pp']}, this run has tp={layout.tp} "
                         f"pp={layout.pp}; set parallel.tp/pp to match (DP may differ)")
    if meta["arch"] != dataclasses.asdict(some.arch):
        raise ValueError(f"{path} holds a different architecture than model.arch; point checkpointing at a fresh directory")
    saved_spec, spec = meta.get("layer_spec", "local"), model_layer_spec(some.model)
    if saved_spec != spec:  # the weights would load under other names (and the optimizer state with them)
        raise ValueError(f"{path} was written by a model of layer spec {saved_spec!r}, this run builds {spec!r}; set "
                         f"model.layer_spec={saved_spec}, or export the checkpoint to HF (`megatron-elo convert`) and start from that")
    # onto the CPU first: load_state_dict copies into the parameters' device (and the optimizer moves its
    # state there), where tensors saved from cuda:0 would otherwise all land on this node's first GPU
    if sorted(meta.get("players", [])) != sorted(others or {}):
        raise ValueError(f"{path} holds the players {sorted(meta.get('players', []))} besides the first, this run trains "
                         f"{sorted(others or {})}; resume from a checkpoint of this config or set checkpoint.resume=never")
    for player, each in held:
        c = each.groups.coords
        shard = torch.load(path / shard_name(c.tp_rank, c.pp_rank, player), map_location="cpu", weights_only=False)
        with resident(each):
            each.model.load_state_dict(shard["model"])
            each.optimizer.load_full_state(shard["optimizer"], adam_steps=shard["step"])  # collective over DP
        each.step = shard["step"]
    rng_file = path / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():  # absent when resuming onto more DP ranks than were saved
        _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return meta["extra"]


def _held(trainer: PolicyTrainer | None, others: dict[str, PolicyTrainer | None] | None) -> list[tuple[str | None, PolicyTrainer]]:
    """(player name, trainer) of the trainers this rank holds: the first (name None), then ``others`` in order."""
    return [(name, each) for name, each in [(None, trainer), *(others or {}).items()] if each is not None]


def load_rank_state(path: str | Path) -> dict:
    """This rank's own run state saved with the checkpoint at ``path`` ({} when it saved none)."""
    file = Path(path) / f"state_rank{dist.get_rank()}.pt"
    return torch.load(file, map_location="cpu", weights_only=False) if file.is_file() else {}
