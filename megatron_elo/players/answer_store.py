"""Frozen opponents' answers on disk, keyed by what the opponent actually saw.

    store = AnswerStore(Path(output_dir) / "opponent_cache" / "answers.sqlite")
    key = answer_key(model_dir, token_ids, settings, seed)
    store.get_many([key])  ->  {key: text} for the keys it holds
    store.put_many([(key, "p0", text)], opponent="medium")

The key is a digest of the opponent's model directory (resolved) and its checkpoint files (name, size
and modification time of each weight file, so a checkpoint rewritten in place, e.g. the demo's players
made again, is a new model), the rendered token ids of its prompt (chat template and system prompt
included), its sampling settings and the request's seed, so a changed template, system prompt,
temperature or checkpoint never reuses a stale answer. One sqlite
file, looked up per key (nothing is read whole into memory); only the driver writes it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from megatron_elo.rollout.engine import SamplingSettings

_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, opponent TEXT, prompt_id TEXT, text TEXT)"
_LOOKUP_CHUNK = 500  # keys per SELECT (sqlite's host-parameter limit is 999 on old builds)


@functools.lru_cache(maxsize=64)
def checkpoint_fingerprint(model_dir: str) -> list:
    """(name, bytes, mtime_ns) of the checkpoint's config and weight files, sorted: what identifies
    the model beside its path (read once per process and directory)."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    files = [f for f in root.iterdir() if f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt")]
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files)


def answer_key(model_dir: str | None, token_ids: Sequence[int], settings: SamplingSettings, seed: int) -> str:
    """The store's key of one answer: sha256 over (model and its checkpoint files, prompt ids, sampling
    settings, seed)."""
    resolved = str(Path(model_dir or "").resolve())
    described = [resolved, checkpoint_fingerprint(resolved), list(token_ids), settings.temperature, settings.top_p,
                 settings.top_k, settings.max_tokens, list(settings.stop_token_ids), seed]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


@contextlib.contextmanager
def sqlite_transaction(path: Path, schema: str):
    """A connection to the sqlite file ``path`` (made, with ``schema``) for one transaction, committed
    on success and closed afterwards: a connection per call is safe from several threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=60)
    try:
        with connection:
            connection.execute(schema)
            yield connection
    finally:
        connection.close()


def select_by_keys(connection, query: str, keys: Sequence[str]) -> list[tuple]:
    """The rows of ``query`` (ending in "key IN ({})") for every key, asked in chunks of 500 keys."""
    rows = []
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = list(keys[start:start + _LOOKUP_CHUNK])
        rows += connection.execute(query.format(",".join("?" * len(chunk))), chunk).fetchall()
    return rows


class AnswerStore:
    """An sqlite table of answer texts; a connection per call (safe from the opponents' threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """{key: text} for every key the store holds (missing keys are left out)."""
        keys = list(keys)
        if not keys or not self.path.is_file():
            return {}
        with sqlite_transaction(self.path, _SCHEMA) as connection:
            return dict(select_by_keys(connection, "SELECT key, text FROM answers WHERE key IN ({})", keys))

    def put_many(self, answers: Sequence[tuple[str, str, str]], *, opponent: str) -> None:
        """Store ``answers``: (key, prompt_id, text) rows of ``opponent`` (the prompt id is kept for inspection)."""
        rows = [(key, opponent, prompt_id, text) for key, prompt_id, text in answers]
        with sqlite_transaction(self.path, _SCHEMA) as connection:
            connection.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", rows)
