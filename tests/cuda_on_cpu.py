"""Run megatron-core's CUDA-only DDP and optimizers on the CPU, for tests over gloo.

megatron-core 0.16 allocates its grad buffers, loss-scale and norm tensors with ``device="cuda"`` /
``torch.cuda.current_device()`` and checks parameter types against ``torch.cuda.*Tensor`` names,
nothing more CUDA-specific on the paths the trainer uses (no overlap, no CUDA graphs, no streams).
``cuda_on_cpu()`` sends those allocations to the CPU and answers the type checks as CUDA would, so
the real bucketing, all-reduce / reduce-scatter / all-gather, fp32 main weights, clipping and Adam
code runs in CPU processes. What it does not exercise: CUDA itself (the ``gpu`` tests do, on one
GPU). Use it only inside a worker process of ``run_distributed``: it patches torch process-wide.
"""

from __future__ import annotations

import contextlib

import torch

_FACTORIES = ("tensor", "zeros", "empty", "ones", "full", "arange")


def _on_cpu(kwargs: dict) -> dict:
    device = kwargs.get("device")
    if isinstance(device, int) or (device is not None and torch.device(device).type == "cuda"):
        kwargs["device"] = "cpu"
    return kwargs


@contextlib.contextmanager
def cuda_on_cpu():
    """Inside: tensor factories given a CUDA device allocate on the CPU, ``torch.cuda.current_device()``
    is the CPU, ``Tensor.cuda()`` is a no-op and ``Tensor.type()`` names CPU tensors as CUDA ones."""
    saved = []

    def patch(owner, name, replacement):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    for name in _FACTORIES:
        factory = getattr(torch, name)
        patch(torch, name, lambda *args, _factory=factory, **kwargs: _factory(*args, **_on_cpu(kwargs)))
    patch(torch.cuda, "current_device", lambda: "cpu")
    patch(torch.cuda, "synchronize", lambda *args, **kwargs: None)
    patch(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    type_name = torch.Tensor.type

    def cuda_type_name(self, *args, **kwargs):
        result = type_name(self, *args, **kwargs)
        return result.replace("torch.", "torch.cuda.", 1) if not args and not kwargs else result

    patch(torch.Tensor, "type", cuda_type_name)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
