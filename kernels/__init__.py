"""Fused Triton kernels for the loss side of an RL step, each beside a plain-torch reference.

    from kernels import token_advantages, fused_linear_logprobs_entropy, fused_policy_loss

| kernel                           | module                    | torch reference (megatron_elo.loss.reference) |
|----------------------------------|---------------------------|-----------------------------------------------|
| win/loss advantage + broadcast   | kernels.advantage         | group_advantages, broadcast_to_tokens          |
| linear log-prob + entropy (TP)   | kernels.linear_logprob    | linear_logprobs_and_entropy                    |
| clipped PG loss + KL + entropy   | kernels.policy_loss       | policy_loss                                    |

Selected in training by ``trainer.kernels: triton``. This package knows nothing of vLLM or
Megatron: kernels take tensors (and an explicit process group) and return tensors. The kernels
import triton when first used (``kernels._runtime`` does not): on a machine without CUDA, Triton's
interpreter must be chosen before that (see ``_runtime``).
Benchmarks: ``megatron-elo bench kernels`` (kernels.benchmark).
"""

from importlib import import_module

_HOMES = {"token_advantages": "kernels.advantage", "fused_linear_logprobs_entropy": "kernels.linear_logprob",
          "combine_vocab_stats": "kernels.linear_logprob", "fused_policy_loss": "kernels.policy_loss"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
