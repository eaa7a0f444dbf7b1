"""Fused Triton kernels for the loss side of an RL step (win/loss advantage, fused linear
log-prob + entropy, clipped policy-gradient loss), each beside a plain-torch reference.

This package knows nothing of vLLM or Megatron: kernels take tensors (and, for the vocab-parallel
log-prob, an explicit process group) and return tensors. Triton is imported lazily so the CPU
reference path works without it; under ``TRITON_INTERPRET=1`` the kernels run on CPU for tests.
"""
