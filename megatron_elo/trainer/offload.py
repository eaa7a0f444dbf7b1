"""Move an idle trainer's device memory to the host and back, every tensor keeping its identity.

    offload(trainer)            # weights, fp32 main weights, Adam moments -> host; gradient buffers freed
    reload(trainer)             # back, bitwise; views (megatron-core's bucketed param / grad buffers) intact
    with resident(trainer):     # a no-op on a resident trainer; else reload, work, offload again
        save_checkpoint(...)

Each distinct storage behind those tensors is copied to host memory (pinned when it is on a GPU) and then
resized to zero bytes, which frees it; reloading resizes it back and copies the bytes in. Gradients
(and megatron-core's fp32 grad buffers) are freed without a copy and come back as zeros: every step
zeroes them before it accumulates (``PolicyTrainer.forward_backward``), so between steps they hold
nothing a later step reads, and skipping them saves about 45% of the host memory and transfer of a
bf16 model with fp32 gradients and the distributed optimizer. Parameters,
optimizer-state dicts and the views megatron-core's DDP keeps into its flat buffers all still point at the
same storage objects, so nothing has to be re-wired (the approach verl takes for megatron-core models).
Used by SPARTA's tribe (``algorithm.sparta.offload_idle``): only the player being updated holds device memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class HostCopy:
    """The storages an offloaded trainer freed, each with its bytes on the host."""

    storages: list[torch.UntypedStorage]
    host: list[torch.Tensor]  # [nbytes] uint8 each
    scratch: list[tuple[torch.UntypedStorage, int]]  # gradient storages freed without a copy, with their nbytes

    @property
    def nbytes(self) -> int:
        """Bytes moved to the host."""
        return sum(h.numel() for h in self.host)

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of gradient memory freed without a copy."""
        return sum(size for _, size in self.scratch)


def _bytes_of(storage: torch.UntypedStorage, size: int) -> torch.Tensor:
    """A [size] uint8 tensor over the whole of ``storage``."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage, 0, (size,))


def _optimizer_tensors(optimizer) -> Iterator[tuple[torch.Tensor, bool]]:
    """The tensors of a torch optimizer, each with whether it is a gradient: its parameters (fp32 main weights or
    shards), their gradients, its state."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            yield param, False
            if param.grad is not None:
                yield param.grad, True
    for state in optimizer.state.values():
        yield from ((value, False) for value in state.values() if isinstance(value, torch.Tensor))


def trainer_tensors(trainer) -> Iterator[tuple[torch.Tensor, bool]]:
    """Every tensor a trainer keeps between steps, each with whether it is a gradient: the model's parameters,
    their gradients (and megatron-core's ``main_grad`` buffer views), buffers, and its optimizer's main weights,
    gradients and state (either kind, ``trainer/optimizer.py``; none for a frozen copy)."""
    for param in trainer.model.parameters():
        yield param, False
        yield from ((g, True) for g in (param.grad, getattr(param, "main_grad", None)) if g is not None)
    yield from ((b, False) for b in trainer.model.buffers())
    wrapper = trainer.optimizer
    if wrapper is None:
        return
    if hasattr(wrapper, "main_params"):  # TorchOptimizer: fp32 main weights of a mixed-precision model
        yield from ((p, False) for p in wrapper.main_params)
        yield from ((p.grad, True) for p in wrapper.main_params if p.grad is not None)
    inner = wrapper.optimizer
    for each in getattr(inner, "chained_optimizers", [inner]):  # megatron-core's chain, or torch AdamW itself
        yield from _optimizer_tensors(getattr(each, "optimizer", each))
        for groups in ("shard_fp32_from_float16_groups", "fp32_from_float16_groups", "shard_fp32_groups"):
            for group in getattr(each, groups, None) or []:
                yield from ((p, False) for p in group if p is not None)


def _storages_of(trainer) -> tuple[list[torch.UntypedStorage], list[torch.UntypedStorage]]:
    """The distinct non-empty storages behind ``trainer_tensors``: (kept, gradient-only). A storage reached
    through any tensor that is not a gradient is kept."""
    storages, kept = {}, set()
    for tensor, is_gradient in trainer_tensors(trainer):
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0 or tensor.device.type == "meta":
            continue
        storages.setdefault(storage.data_ptr(), storage)
        if not is_gradient:
            kept.add(storage.data_ptr())
    return ([s for key, s in storages.items() if key in kept],
            [s for key, s in storages.items() if key not in kept])


def offload(trainer) -> HostCopy:
    """Free the device memory of ``trainer`` (see the module docstring); idempotent. Returns what was moved."""
    if trainer.offloaded is not None:
        return trainer.offloaded
    kept, gradients = _storages_of(trainer)
    host = []
    for storage in kept:
        size = storage.nbytes()
        copy = torch.empty(size, dtype=torch.uint8, pin_memory=storage.device.type == "cuda")
        copy.copy_(_bytes_of(storage, size))
        host.append(copy)
    scratch = [(storage, storage.nbytes()) for storage in gradients]
    for storage in [*kept, *gradients]:  # after every copy: views of one storage were all read first
        storage.resize_(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # back to the device, for the engine or the next player
    trainer.offloaded = HostCopy(storages=kept, host=host, scratch=scratch)
    return trainer.offloaded


def reload(trainer) -> None:
    """Bring an offloaded trainer's memory back, bitwise (gradients as zeros; a no-op on a resident trainer)."""
    copy = trainer.offloaded
    if copy is None:
        return
    for storage, host in zip(copy.storages, copy.host, strict=True):
        storage.resize_(host.numel())
        _bytes_of(storage, host.numel()).copy_(host)
    for storage, size in copy.scratch:
        storage.resize_(size)
        _bytes_of(storage, size).zero_()
    trainer.offloaded = None


@contextmanager
def resident(trainer) -> Iterator[None]:
    """``trainer`` on its device inside the block; offloaded again after if it was offloaded before."""
    was_offloaded = trainer.offloaded is not None
    reload(trainer)
    try:
        yield
    finally:
        if was_offloaded:
            offload(trainer)
