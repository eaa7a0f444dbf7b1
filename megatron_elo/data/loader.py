"""Training prompts in batches: per-epoch seeded shuffle, DP sharding, resumable position.

    loader = PromptLoader(prompts, seed=0, shuffle=True)
    batch = loader.next_batch(64)                       # the global batch: same on every rank
    mine = dp_shard(batch, dp_rank=1, dp=4)             # this DP rank's 16, contiguous

The order is a pure function of the absolute position p (epoch p // N, row permutation(seed, epoch)
[p % N]), so a batch that crosses an epoch boundary takes the rest of one epoch and the start of
the next, and a resumed loader (or the DALI backend, ``data/dali.py``) yields exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from megatron_elo.flow import Prompt

T = TypeVar("T")


def epoch_order(num_rows: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Row indices [num_rows] of one epoch: a permutation seeded by (seed, epoch), or 0..N-1."""
    if not shuffle:
        return np.arange(num_rows)
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


def rows_at(start: int, size: int, *, num_rows: int, seed: int, shuffle: bool) -> list[int]:
    """Row indices at absolute positions start .. start + size - 1 (crossing epochs as needed)."""
    rows, orders = [], {}
    for position in range(start, start + size):
        epoch = position // num_rows
        if epoch not in orders:
            orders[epoch] = epoch_order(num_rows, seed=seed, epoch=epoch, shuffle=shuffle)
        rows.append(int(orders[epoch][position % num_rows]))
    return rows


def dp_shard(batch: Sequence[T], *, dp_rank: int, dp: int) -> list[T]:
    """DP rank ``dp_rank``'s contiguous share of a global batch; the batch must divide by ``dp``."""
    if len(batch) % dp:
        raise ValueError(f"a batch of {len(batch)} prompts does not split over dp={dp}; make rollout.prompts_per_step "
                         f"a multiple of parallel.dp")
    share = len(batch) // dp
    return list(batch[dp_rank * share:(dp_rank + 1) * share])


class PromptLoader:
    """Prompts in the seeded per-epoch order; ``state_dict`` / ``load_state_dict`` resume exactly."""

    def __init__(self, prompts: list[Prompt], *, seed: int, shuffle: bool):
        if not prompts:
            raise ValueError("PromptLoader needs at least one prompt")
        self.prompts, self.seed, self.shuffle = prompts, seed, shuffle
        self.absolute = 0  # prompts handed out so far, over all epochs

    @property
    def epoch(self) -> int:
        """The epoch the next prompt comes from."""
        return self.absolute // len(self.prompts)

    def next_rows(self, size: int) -> list[int]:
        """Indices of the next ``size`` prompts; advances the position."""
        rows = rows_at(self.absolute, size, num_rows=len(self.prompts), seed=self.seed, shuffle=self.shuffle)
        self.absolute += size
        return rows

    def next_batch(self, size: int) -> list[Prompt]:
        """The next ``size`` prompts."""
        return [self.prompts[i] for i in self.next_rows(size)]

    def state_dict(self) -> dict:
        """Where the loader is (JSON-serialisable)."""
        return {"epoch": self.epoch, "position": self.absolute % len(self.prompts), "absolute": self.absolute}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict`` (also reads the older {epoch, position} form)."""
        self.absolute = state.get("absolute", state["epoch"] * len(self.prompts) + state["position"])
