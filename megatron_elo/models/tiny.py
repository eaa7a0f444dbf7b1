"""Tiny random Hugging Face models made locally (tests, the CPU demo): nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_io import hf_config_dict


def make_tiny_hf_model(arch: ArchConfig, out_dir: str | Path, *, seed: int = 0, init_std: float = 0.02) -> Path:
    """Save a randomly initialised ``transformers`` model of ``arch`` (fp32 safetensors) to ``out_dir``.

    Norm weights are randomised around 1 too, so a test notices a swapped or missing norm.
    """
    import transformers

    config = transformers.AutoConfig.for_model(**hf_config_dict(arch))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, init_std if param.dim() > 1 else 0.1)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)
