"""Stand-ins for megatron-core's transformer-engine modules (``megatron.core.extensions.transformer_engine``),
so that megatron-core's own TE layer spec can be built and run on a machine without transformer-engine.

Each keeps the parameter names of the TE module it stands for (TE's ``LayerNormLinear``: ``weight``,
``bias``, ``layer_norm_weight``; ``Linear``: ``weight``, ``bias``; ``RMSNorm``: ``weight``) and computes
what it computes at TP = 1 in fp32 (RMSNorm, then the linear); that is all a name-mapping test needs.
The real modules are tested where TE imports (``launch/gpu_checks.sh``).
"""

from __future__ import annotations

import torch

from megatron_elo.models.gpt import SDPAttention


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class _Linear(torch.nn.Module):
    def __init__(self, input_size, output_size, *, config, bias, skip_bias_add=False, **_):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(output_size, input_size, dtype=config.params_dtype))
        self.bias = torch.nn.Parameter(torch.zeros(output_size, dtype=config.params_dtype)) if bias else None
        self.skip_bias_add = skip_bias_add

    def forward(self, x):
        out = torch.nn.functional.linear(x, self.weight)
        if self.bias is None:
            return out, None
        return (out, self.bias) if self.skip_bias_add else (out + self.bias, None)


class TELayerNormColumnParallelLinear(_Linear):
    """TE's LayerNormLinear: the norm before the linear lives in it (``layer_norm_weight``)."""

    def __init__(self, input_size, output_size, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.layer_norm_weight = torch.nn.Parameter(torch.ones(input_size, dtype=config.params_dtype))
        self.eps = config.layernorm_epsilon

    def forward(self, x):
        return super().forward(_rms_norm(x, self.layer_norm_weight, self.eps))


class TERowParallelLinear(_Linear):
    """TE's Linear, row-parallel (TP = 1 here)."""


class TENorm(torch.nn.Module):
    """TE's RMSNorm (``weight``)."""

    def __init__(self, config, hidden_size, eps=1e-6, **_):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.eps = eps

    def forward(self, x):
        return _rms_norm(x, self.weight, self.eps)


class StandInTESpecProvider:
    """What megatron-core's ``TESpecProvider`` hands its spec builders, with the stand-ins."""

    def linear(self):
        return TERowParallelLinear

    def column_parallel_linear(self):
        return TERowParallelLinear

    def row_parallel_linear(self):
        return TERowParallelLinear

    def fuse_layernorm_and_linear(self) -> bool:
        return True

    def column_parallel_layer_norm_linear(self):
        return TELayerNormColumnParallelLinear

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False):
        return TENorm

    def core_attention(self):
        return SDPAttention


def te_layer_spec(arch):
    """megatron-core's own ``get_gpt_layer_with_transformer_engine_spec`` for ``arch``, built with the stand-ins."""
    from unittest import mock

    from megatron.core.models.gpt import gpt_layer_specs

    with mock.patch.object(gpt_layer_specs, "TESpecProvider", StandInTESpecProvider, create=True):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.family == "qwen3")
