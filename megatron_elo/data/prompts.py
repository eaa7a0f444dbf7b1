"""Read prompt files (jsonl or parquet) into ``Prompt`` rows, with errors that name the row and field.

    prompts = read_prompts("data/train.jsonl", fields=PromptFields(prompt="question", reference="answer"))

A row's prompt field holds either the user turn as a string, or chat messages
(``[{"role": "system" | "user" | "assistant", "content": ...}, ...]``, the last one a user turn).
Ids come from ``fields.id`` when the row has it, else from a hash of the prompt (stable across runs:
they key the opponent-answer cache).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from megatron_elo.flow import ChatMessage, Prompt


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file, the row and the fix."""


@dataclass(frozen=True, kw_only=True)
class PromptFields:
    """Which columns of a prompt file hold what."""

    prompt: str = "prompt"  # user turn text, or a list of chat messages
    id: str | None = "id"  # optional; missing -> content hash
    reference: str | None = None  # optional checkable answer (programmatic judges)


def _content_id(value: object) -> str:
    return "h" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _messages_error(value: object) -> str | None:
    if not isinstance(value, list) or not value:
        return "is neither a string nor a non-empty list of chat messages"
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) < {"role", "content"}:
            return f"message {i} is not a {{'role': ..., 'content': ...}} object"
        if message["role"] not in ("system", "user", "assistant"):
            return f"message {i} has role {message['role']!r} (system, user or assistant)"
    if value[-1]["role"] != "user":
        return "does not end with a user message (the policy answers the last user turn)"
    return None


def row_to_prompt(row: dict, fields: PromptFields, *, where: str) -> Prompt:
    """One file row -> ``Prompt``; ``where`` ("file:line") goes into errors."""
    if fields.prompt not in row:
        raise PromptFileError(f"{where}: no field {fields.prompt!r} (has {sorted(row)}); set data.prompt_field")
    value = row[fields.prompt]
    if hasattr(value, "tolist"):  # parquet list columns arrive as numpy arrays
        value = value.tolist()
    if not isinstance(value, str):
        problem = _messages_error(value)
        if problem:
            raise PromptFileError(f"{where}: field {fields.prompt!r} {problem}")
    elif not value.strip():
        raise PromptFileError(f"{where}: field {fields.prompt!r} is empty")
    prompt_id = row.get(fields.id) if fields.id else None
    reference = row.get(fields.reference) if fields.reference else None
    if fields.reference and reference is None:
        raise PromptFileError(f"{where}: no field {fields.reference!r} (data.reference_field); every row needs it")
    messages = () if isinstance(value, str) else tuple(ChatMessage(role=m["role"], content=str(m["content"])) for m in value)
    return Prompt(prompt_id=str(prompt_id) if prompt_id is not None else _content_id(value),
                  text=value if isinstance(value, str) else messages[-1].content,
                  reference=None if reference is None else str(reference), messages=messages)


def _jsonl_rows(path: Path):
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{path}:{number}: not valid JSON ({err.msg}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise PromptFileError(f"{path}:{number}: a JSON {type(row).__name__}, expected an object")
            yield f"{path}:{number}", row


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise PromptFileError(f"{path}: not a readable parquet file ({err})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {number}", row


def read_prompts(path: str | Path, *, fields: PromptFields = PromptFields()) -> list[Prompt]:
    """Every prompt of a .jsonl / .json (one object per line) or .parquet file, in file order.

    Raises PromptFileError naming the row for bad JSON, missing fields, malformed messages, duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file; check data.train_path / data.eval_path")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    prompts, seen = [], {}
    for where, row in rows:
        prompt = row_to_prompt(row, fields, where=where)
        if prompt.prompt_id in seen:
            raise PromptFileError(f"{where}: prompt id {prompt.prompt_id!r} repeats {seen[prompt.prompt_id]}; ids must be unique")
        seen[prompt.prompt_id] = where
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"{path}: no prompts")
    return prompts


def prompt_messages(prompt: Prompt, *, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of a prompt, as chat templates take them: its conversation, or a user turn
    of its text; ``system_prompt`` goes first unless the conversation has its own system turn."""
    turns = [{"role": m.role, "content": m.content} for m in prompt.messages] or [{"role": "user", "content": prompt.text}]
    if system_prompt and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns
