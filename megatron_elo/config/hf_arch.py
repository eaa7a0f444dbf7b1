"""Read an ``ArchConfig`` from a Hugging Face ``config.json`` (Qwen2, Qwen3, Llama families)."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_elo.config.schema import ArchConfig

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")


def arch_from_hf_config(hf: dict, *, source: str = "config.json") -> ArchConfig:
    """Map HF config keys onto ``ArchConfig``. Raises ValueError naming the key that is missing or
    the model_type that is not supported."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    try:
        num_heads = hf["num_attention_heads"]
        return ArchConfig(
            family=model_type,
            num_layers=hf["num_hidden_layers"],
            hidden_size=hf["hidden_size"],
            ffn_hidden_size=hf["intermediate_size"],
            num_attention_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim"),
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rope_theta=float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except KeyError as err:
        raise ValueError(f"{source}: required key {err.args[0]!r} is missing") from None


def read_hf_arch(model_dir: str | Path) -> ArchConfig:
    """``ArchConfig`` of the HF checkpoint directory ``model_dir`` (reads its config.json)."""
    config_path = Path(model_dir) / "config.json"
    return arch_from_hf_config(json.loads(config_path.read_text()), source=str(config_path))
