"""Checkpoint conversion without a process group (pure tensor work on one machine).

    megatron-elo convert --from hf --to megatron /models/Qwen2.5-7B /ckpt/qwen7b_tp2_pp2 --tp 2 --pp 2
    megatron-elo convert --from megatron --to hf runs/tiny_cpu/checkpoints/step_00000030 /export/policy

A Megatron directory holds ``meta.json`` (tp, pp, arch, padded vocab) and one file per (tp, pp)
shard: ``model_tp{t}_pp{p}.pt`` from a conversion, or ``shard_tp{t}_pp{p}.pt`` from training
(model + optimizer; only the model is read here).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_elo.config.hf_arch import read_hf_arch
from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_io import hf_config_dict, load_hf_state_dict, save_hf_checkpoint
from megatron_elo.models.hf_mapping import (
    hf_to_megatron,
    megatron_to_hf,
    merge_stages,
    padded_vocab_size,
    shard_for_rank,
    unshard_tp,
)

META = "meta.json"


def _refuse_existing(dst: Path) -> None:
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new directory (nothing was written)")


def hf_to_megatron_dir(src: str | Path, dst: str | Path, *, tp: int = 1, pp: int = 1, pad_vocab_to_multiple_of: int | None = 128) -> Path:
    """Split an HF checkpoint into ``tp * pp`` Megatron shard files under ``dst``."""
    src, dst = Path(src), Path(dst)
    _refuse_existing(dst)
    arch = read_hf_arch(src)
    if arch.num_attention_heads % tp or arch.num_kv_heads % tp or arch.num_layers % pp:
        raise ValueError(f"--tp {tp} / --pp {pp} do not divide heads={arch.num_attention_heads}, "
                         f"kv_heads={arch.num_kv_heads}, layers={arch.num_layers}")
    padded = padded_vocab_size(arch.vocab_size, tp, pad_vocab_to_multiple_of)
    if padded % tp:
        raise ValueError(f"vocab {arch.vocab_size} is not divisible by --tp {tp}; pass a padding multiple")
    full = hf_to_megatron(load_hf_state_dict(src), arch, padded_vocab=padded)
    dst.mkdir(parents=True, exist_ok=True)
    for t in range(tp):
        for p in range(pp):
            torch.save({"model": shard_for_rank(full, arch, tp_rank=t, tp=tp, pp_rank=p, pp=pp)}, dst / f"model_tp{t}_pp{p}.pt")
    meta = {"tp": tp, "pp": pp, "padded_vocab": padded, "arch": arch.__dict__, "source": str(src)}
    (dst / META).write_text(json.dumps(meta, indent=2))
    return dst


def read_megatron_dir(src: str | Path, player: str | None = None) -> tuple[dict[str, torch.Tensor], ArchConfig]:
    """The full (TP = PP = 1) Megatron state dict and architecture of a converted or training directory
    (``player``: that trained player's shards of a several-player checkpoint; None: the first player's)."""
    src = Path(src)
    if not (src / META).is_file():
        raise FileNotFoundError(f"{src}: no {META}; pass a directory written by `convert` or a training checkpoint step_*")
    meta = json.loads((src / META).read_text())
    arch = ArchConfig(**meta["arch"])
    stages = []
    for p in range(meta["pp"]):
        shards = []
        for t in range(meta["tp"]):
            candidates = ([src / f"model_tp{t}_pp{p}.pt", src / f"shard_tp{t}_pp{p}.pt"] if player is None
                          else [src / f"shard_{player}_tp{t}_pp{p}.pt"])
            file = next((c for c in candidates if c.is_file()), None)
            if file is None:
                raise FileNotFoundError(f"{src}: shard tp={t} pp={p} is missing ({candidates[0].name})")
            shards.append({k: v for k, v in torch.load(file, weights_only=False)["model"].items() if not k.endswith("_extra_state")})
        stages.append({name: unshard_tp(name, [s[name] for s in shards]) for name in shards[0]})
    return merge_stages(stages, arch), arch


def megatron_dir_to_hf(src: str | Path, dst: str | Path, *, player: str | None = None) -> Path:
    """Merge a Megatron directory's shards (``player``: see ``read_megatron_dir``) into an HF checkpoint
    (config.json + model.safetensors)."""
    dst = Path(dst)
    _refuse_existing(dst)
    full, arch = read_megatron_dir(src, player)
    return save_hf_checkpoint(megatron_to_hf(full, arch), arch, dst, config=hf_config_dict(arch))
