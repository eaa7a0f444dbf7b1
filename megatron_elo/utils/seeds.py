"""Seeds derived from names: stable across processes and runs (unlike ``hash()``)."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from the parts' text, e.g. ``stable_seed(run_seed, "medium", prompt_id)``."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1
