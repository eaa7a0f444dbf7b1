"""Shared test setup: GPU tests skip cleanly without CUDA; Triton kernels run in Triton's
interpreter without CUDA (it must be chosen before anything imports triton, hence here)."""

from __future__ import annotations

import pytest

from kernels._runtime import enable_interpreter_without_cuda

enable_interpreter_without_cuda()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
