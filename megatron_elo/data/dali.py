"""NVIDIA DALI as a prompt-loader backend over pre-tokenized prompt shards (``data.loader: dali``).

    write_token_shards(token_rows, "prompts_tok/")                  # once: ids of every prompt, on disk
    loader = DaliPromptLoader(prompts, "prompts_tok/", batch_size=64, seed=0, shuffle=True, pad_id=0)
    batch = loader.next_batch(64)        # the same Prompt rows as PromptLoader(prompts, seed=0, ...)
    loader.last_tokens                   # [64, L] int64, right-padded ids of that batch (GPU when present)

Shards: ``tokens.npy`` (every prompt's ids concatenated, int32), ``offsets.npy`` ([N + 1] int64) and
``meta.json`` (prompt count, a digest of the prompts' ids and texts). Shards are only as good as the
tokenizer that wrote them: given the run's ``encode``, the loader refuses shards of other prompts or
of another tokenizer / chat template (digest, and the first rows re-encoded and compared).
The pipeline's external source asks for batch i and returns the rows at absolute positions
``start + i * batch_size ...`` (``loader.rows_at``: the default loader's order), DALI pads them to the
batch's longest row and, with a GPU, moves them to the device while the previous step runs
(prefetch queue). CPU-only (``device_id=None``) here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from megatron_elo.data.loader import PromptLoader, rows_at
from megatron_elo.flow import Prompt

SPOT_CHECK_ROWS = 16  # rows re-encoded at start-up to catch a changed tokenizer or chat template


def prompts_digest(prompts: Sequence[Prompt]) -> str:
    """sha256 over every prompt's id, text and messages, in file order: which prompt file the shards belong to."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps([prompt.prompt_id, prompt.text, [[m.role, m.content] for m in prompt.messages]]).encode())
    return digest.hexdigest()


def write_token_shards(token_rows: Sequence[Sequence[int]], out_dir: str | Path, *, prompts: Sequence[Prompt] | None = None) -> Path:
    """Store pre-tokenized prompts as ``tokens.npy`` + ``offsets.npy`` (+ ``meta.json``) under ``out_dir``;
    ``prompts`` (the rows' prompts, same order) lets loaders check the shards belong to their prompt file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(r) for r in token_rows], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError(f"prompt row {int(np.argmax(lengths == 0))} has no tokens")
    np.save(out / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
    np.save(out / "tokens.npy", np.concatenate([np.asarray(r, dtype=np.int32) for r in token_rows]))
    meta = {"num_prompts": len(token_rows), "prompts_sha256": prompts_digest(prompts) if prompts is not None else None}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


class DaliPromptLoader(PromptLoader):
    """``PromptLoader``'s order and resumable position, batches read and padded by a DALI pipeline."""

    def __init__(self, prompts: list[Prompt], shard_dir: str | Path, *, batch_size: int, seed: int, shuffle: bool,
                 pad_id: int, device_id: int | None = None, num_threads: int = 1,
                 encode: Callable[[Prompt], list[int]] | None = None):
        super().__init__(prompts, seed=seed, shuffle=shuffle)
        shard_dir = Path(shard_dir)
        self.offsets = np.load(shard_dir / "offsets.npy")
        self.tokens = np.load(shard_dir / "tokens.npy", mmap_mode="r")
        if len(self.offsets) != len(prompts) + 1:
            raise ValueError(f"{shard_dir}: shards hold {len(self.offsets) - 1} prompts, the prompt file {len(prompts)}; "
                             "re-run write_token_shards for this file")
        if encode is not None:
            self._check_shards_match(shard_dir, encode)
        self.batch_size, self.pad_id, self.device_id, self.num_threads = batch_size, pad_id, device_id, num_threads
        self.last_tokens: torch.Tensor | None = None
        self.last_rows: list[int] = []
        self._pipeline = None

    def _check_shards_match(self, shard_dir: Path, encode: Callable[[Prompt], list[int]]) -> None:
        """Raise ValueError when the shards hold other prompts (digest) or another tokenization (first rows)."""
        fix = (f"delete {shard_dir} to re-tokenize (the run writes it again), or point data.token_shards at the "
               f"shards of this prompt file and tokenizer")
        meta_file = shard_dir / "meta.json"
        recorded = json.loads(meta_file.read_text()).get("prompts_sha256") if meta_file.is_file() else None
        if recorded is not None and recorded != prompts_digest(self.prompts):
            raise ValueError(f"{shard_dir}: the token shards were written for another prompt file (prompt digest differs); {fix}")
        for row in range(min(SPOT_CHECK_ROWS, len(self.prompts))):
            stored = self.tokens[self.offsets[row]:self.offsets[row + 1]].tolist()
            expected = list(encode(self.prompts[row]))
            if stored != expected:
                raise ValueError(f"{shard_dir}: row {row} ({self.prompts[row].prompt_id!r}) holds ids {stored[:12]}... but the "
                                 f"run's tokenizer / chat template gives {expected[:12]}...: the shards were written with "
                                 f"another tokenizer; {fix}")

    def _batch_source(self, start: int):
        def source(info):  # batch ``info.iteration`` of this pipeline: pure in the iteration (prefetch-safe)
            rows = rows_at(start + info.iteration * self.batch_size, self.batch_size, num_rows=len(self.prompts),
                           seed=self.seed, shuffle=self.shuffle)
            ids = [np.asarray(self.tokens[self.offsets[r]:self.offsets[r + 1]], dtype=np.int32) for r in rows]
            return ids, [np.array([r], dtype=np.int64) for r in rows]

        return source

    def _build(self) -> None:
        from nvidia.dali import fn, pipeline_def

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=2, exec_dynamic=True)
        def prompt_pipeline():
            ids, rows = fn.external_source(source=self._batch_source(self.absolute), batch=True, batch_info=True,
                                           num_outputs=2, dtype=None)
            padded = fn.pad(ids, fill_value=self.pad_id, axes=(0,))  # to the batch's longest prompt
            if self.device_id is not None:
                padded = padded.gpu()
            return padded, rows

        self._pipeline = prompt_pipeline()
        self._pipeline.build()

    def next_batch(self, size: int) -> list[Prompt]:
        """The next ``size`` (= batch_size) prompts; their padded ids are in ``last_tokens``."""
        if size != self.batch_size:
            raise ValueError(f"the DALI pipeline was built for batches of {self.batch_size}, asked for {size}")
        if self._pipeline is None:
            self._build()
        padded, rows = self._pipeline.run()
        padded = padded.as_cpu() if self.device_id is not None else padded
        self.last_tokens = torch.from_numpy(np.stack([np.asarray(t) for t in padded]).astype(np.int64))
        self.last_rows = [int(np.asarray(r)[0]) for r in rows]
        self.absolute += size
        return [self.prompts[r] for r in self.last_rows]

    @property
    def last_ids(self) -> list[list[int]]:
        """The last batch's prompt ids without padding (one list per prompt)."""
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in self.last_rows]
        return [row[:n].tolist() for row, n in zip(self.last_tokens, lengths, strict=True)]

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``: the pipeline is rebuilt to start there."""
        super().load_state_dict(state)
        self._pipeline = None
