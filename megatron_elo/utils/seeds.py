"""Seeds derived from names: stable across processes and runs (unlike ``hash()``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from the parts' text, e.g. ``stable_seed(run_seed, "medium", prompt_id)``."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


def request_seeds(base: int, keys: Sequence[object], n: int) -> list[int]:
    """One sampling seed per request (``keys``: e.g. prompt ids), so that no two samples share a stream.

    vLLM seeds sample j of a request with ``seed + j`` (``parallel_sampling.py``), so the requests'
    blocks ``[seed, seed + n)`` must not overlap: seeds are multiples of ``n`` drawn from
    ``stable_seed(base, key)``; a block already taken (a repeated key, or a hash collision) is drawn
    again with a counter, so the result depends only on ``base``, the keys in order and ``n``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    blocks, taken = [], set()
    for key in keys:
        attempt = 0
        block = stable_seed(base, key) // n
        while block in taken:
            attempt += 1
            block = stable_seed(base, key, attempt) // n
        taken.add(block)
        blocks.append(block)
    return [block * n for block in blocks]
