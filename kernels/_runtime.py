"""Where Triton kernels run: compiled on CUDA, or Triton's interpreter on CPU tensors (tests, CI).

The interpreter is chosen by Triton when it is imported (``TRITON_INTERPRET=1`` in the
environment), not per call: ``tests/conftest.py`` and ``megatron-elo train`` set it when CUDA is
absent, before anything imports triton. Under the interpreter every program runs in numpy, one at
a time: use small shapes and fp32 (bf16 ``tl.dot`` is wrong there; bf16 is checked on the GPU).
"""

from __future__ import annotations

import os

import torch


def interpreter_enabled() -> bool:
    """True when Triton was (or will be) imported in interpreter mode."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def enable_interpreter_without_cuda() -> bool:
    """Ask for Triton's interpreter when there is no GPU; must run before triton is imported.
    Returns whether the interpreter is (now) enabled."""
    import sys

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return interpreter_enabled()


def check_launchable(*tensors: torch.Tensor) -> None:
    """Raise a clear error before launching a kernel on tensors Triton cannot run on."""
    devices = {t.device.type for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"kernel inputs must share one device, got {sorted(devices)}")
    if devices == {"cpu"} and not interpreter_enabled():
        raise RuntimeError("Triton kernels on CPU tensors need Triton's interpreter: export TRITON_INTERPRET=1 "
                           "before starting Python (slow; for tests), or run on CUDA, or set trainer.kernels=torch")


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()
