"""Read and write Hugging Face checkpoints (config.json + *.safetensors) on local disk."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from megatron_elo.config.schema import ArchConfig

HF_MODEL_CLASSES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}


def load_hf_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's *.safetensors files, by HF name (on CPU)."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files; point model.path at an HF checkpoint directory")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def hf_config_dict(arch: ArchConfig, *, dtype: str = "float32") -> dict:
    """A config.json for ``arch`` that transformers and vLLM load."""
    config = {
        "architectures": [HF_MODEL_CLASSES[arch.family]], "model_type": arch.family,
        "num_hidden_layers": arch.num_layers, "hidden_size": arch.hidden_size, "intermediate_size": arch.ffn_hidden_size,
        "num_attention_heads": arch.num_attention_heads, "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.kv_channels, "vocab_size": arch.vocab_size, "max_position_embeddings": arch.max_position_embeddings,
        "rope_theta": arch.rope_theta, "rms_norm_eps": arch.rms_norm_eps, "tie_word_embeddings": arch.tie_word_embeddings,
        "hidden_act": "silu", "torch_dtype": dtype,
    }
    if arch.family == "qwen2":
        config["use_sliding_window"] = False
    return config


def save_hf_checkpoint(state: Mapping[str, torch.Tensor], arch: ArchConfig, out_dir: str | Path, *,
                       config: dict | None = None) -> Path:
    """Write ``state`` (HF names) as model.safetensors plus config.json (``config`` or one built
    from ``arch``). A tied ``lm_head.weight`` is not written twice. Returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()
               if not (arch.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config or hf_config_dict(arch), indent=2))
    return out
