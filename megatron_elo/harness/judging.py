"""The harness's judge: templates, prompts that fit, and replies cached in a store that survives a crash.

    judge = CachedJudge(backend, tokenizer, model_id=judge_path, store=JudgmentStore(run_dir / "eval" / "judgments.sqlite"))
    prompt = judge.fill(template, {"question": q, "answer_a": a, "answer_b": b}, answers=("answer_a", "answer_b"))
    replies = judge.replies(prompts, description="alpaca: judging")     # None where a prompt was dropped

A reply is stored under sha256(judge model and its checkpoint files, max_new_tokens, the rendered
prompt): the template, the question and both answers are all in the prompt. Prompts are sent in
chunks of ``chunk`` and each chunk's replies are committed before the next is sent, so a killed
evaluation loses at most one chunk and a rerun judges only what the store lacks. A refused request
is not stored (it is tried again on the next run) and is counted.
"""

from __future__ import annotations

import hashlib
import json
import string
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_elo.judges.verdicts import JudgeReply
from megatron_elo.players.answer_store import checkpoint_fingerprint, select_by_keys, sqlite_transaction
from megatron_elo.utils.logging import progress_bar

_SCHEMA = "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, text TEXT, truncated INTEGER)"
TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "eval"


def load_template(path: str | Path, fields: Iterable[str]) -> str:
    """A template's text, checked to use exactly ``fields`` (literal braces written {{ and }})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge template: no file at {path}")
    text = path.read_text()
    used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    if used != set(fields):
        raise ValueError(f"judge template {path}: uses fields {sorted(used)}; it must use exactly {sorted(fields)} "
                         f"(write literal braces as {{{{ and }}}})")
    return text


class JudgmentStore:
    """An sqlite table of judge replies by key (one connection per call)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def get_many(self, keys: Sequence[str]) -> dict[str, JudgeReply]:
        """{key: reply} for the keys it holds."""
        if not keys or not self.path.is_file():
            return {}
        with sqlite_transaction(self.path, _SCHEMA) as connection:
            rows = select_by_keys(connection, "SELECT key, text, truncated FROM judgments WHERE key IN ({})", keys)
        return {key: JudgeReply(text, truncated=bool(cut)) for key, text, cut in rows}

    def put_many(self, rows: Sequence[tuple[str, JudgeReply]]) -> None:
        """Store (key, reply) rows, committed together."""
        with sqlite_transaction(self.path, _SCHEMA) as connection:
            connection.executemany("INSERT OR REPLACE INTO judgments VALUES (?, ?, ?)",
                                   [(key, reply.text, int(reply.truncated)) for key, reply in rows])


@dataclass
class JudgeCounts:
    """What the judge did in this process, for the report (speed: ``judged / seconds``)."""

    prompts: int = 0  # judge prompts asked for
    cached: int = 0  # answered from the store
    judged: int = 0  # sent to the engine and answered
    failed: int = 0  # refused by the engine (not stored)
    overlong: int = 0  # did not fit the judge's context even with the answers cut: dropped
    cut: int = 0  # fitted only with the answers cut to max_answer_tokens
    seconds: float = 0.0  # time in the engine


class CachedJudge:
    """Renders, fits, caches and sends judge prompts (see the module docstring).

    backend: ``judges.llm.JudgeBackend`` (``complete``); tokenizer: the judge's HF tokenizer;
    max_prompt_tokens: its max_model_len - max_new_tokens (None: unchecked)."""

    def __init__(self, backend, tokenizer, *, model_id: str, store: JudgmentStore, max_new_tokens: int = 512,
                 template_kwargs: Mapping | None = None, max_prompt_tokens: int | None = None,
                 max_answer_tokens: int = 1024, overlong: str = "truncate", chunk: int = 64):
        self.backend, self.tokenizer, self.store = backend, tokenizer, store
        self.max_new_tokens, self.template_kwargs = max_new_tokens, dict(template_kwargs or {})
        self.max_prompt_tokens, self.max_answer_tokens, self.overlong = max_prompt_tokens, max_answer_tokens, overlong
        self.chunk = chunk
        resolved = str(Path(model_id).resolve()) if Path(model_id).exists() else model_id
        self.model_key = json.dumps([resolved, checkpoint_fingerprint(resolved), max_new_tokens])
        self.counts = JudgeCounts()

    def render(self, user: str) -> str:
        """The judge's prompt: ``user`` as a user turn in its chat template, then the assistant prefix."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True, **self.template_kwargs)

    def _fits(self, prompt: str) -> bool:
        return self.max_prompt_tokens is None or len(self.tokenizer.encode(prompt, add_special_tokens=False)) <= self.max_prompt_tokens

    def _cut(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= self.max_answer_tokens else self.tokenizer.decode(ids[: self.max_answer_tokens]) + " [... answer truncated]"

    def fill(self, template: str, fields: Mapping[str, str], *, answers: Sequence[str]) -> str | None:
        """The rendered prompt of ``template`` with ``fields``; over the judge's context, the ``answers``
        fields are cut to max_answer_tokens (judge.overlong=truncate) or the prompt is dropped (None)."""
        prompt = self.render(template.format(**fields))
        if self._fits(prompt):
            return prompt
        if self.overlong == "truncate":
            cut = dict(fields) | {name: self._cut(fields[name]) for name in answers}
            prompt = self.render(template.format(**cut))
            if self._fits(prompt):
                self.counts.cut += 1
                return prompt
        self.counts.overlong += 1
        return None

    def _key(self, prompt: str) -> str:
        return hashlib.sha256((self.model_key + "\0" + prompt).encode()).hexdigest()

    def replies(self, prompts: Sequence[str | None], *, description: str = "judging") -> list[JudgeReply | None]:
        """The judge's reply to every prompt (None where it was dropped; a refused request: a reply with
        ``error`` set), from the store where it has them, the rest sent chunk by chunk and stored."""
        keys = [self._key(p) if p is not None else None for p in prompts]
        found = self.store.get_many(sorted({k for k in keys if k is not None}))
        missing = sorted({k: i for i, k in enumerate(keys) if k is not None and k not in found}.values())
        self.counts.prompts += sum(k is not None for k in keys)
        self.counts.cached += sum(k is not None and k in found for k in keys)
        replies: dict[str, JudgeReply] = dict(found)
        if missing and hasattr(self.backend, "start"):
            self.backend.start()  # a lazily started engine starts before the clock (judged_per_s is judging only)
        with progress_bar(total=len(missing), description=description, enabled=bool(missing)) as bar:
            for start in range(0, len(missing), self.chunk):
                indices = missing[start:start + self.chunk]
                began = time.perf_counter()
                answered = self.backend.complete([prompts[i] for i in indices], max_new_tokens=self.max_new_tokens)
                self.counts.seconds += time.perf_counter() - began
                good = [(keys[i], reply) for i, reply in zip(indices, answered, strict=True) if reply.error is None]
                self.store.put_many(good)
                self.counts.judged += len(good)
                self.counts.failed += len(indices) - len(good)
                for i, reply in zip(indices, answered, strict=True):
                    replies[keys[i]] = reply
                bar.advance(len(indices))
        return [replies[k] if k is not None else None for k in keys]
