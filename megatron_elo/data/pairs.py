"""Preference-pair files (jsonl / parquet) -> (prompt, chosen, rejected) rows, errors naming the row and field.

    rows = read_pairs("prefs.jsonl", fields=PairFields())        # [PreferenceRow]
    source = PairSource(rows, tokenizer, seed=1, shuffle=True, max_prompt_tokens=..., max_answer_tokens=...)
    pairs = source.next_pairs(8)                                 # PairRows (token ids), position advanced

``PairRows`` is also what online recipes make of their judged samples (``PairRows.from_rollouts``).

Layouts read (the ones TRL's preference data sets and UltraFeedback-binarized use):
- ``prompt``, ``chosen``, ``rejected`` strings;
- ``prompt`` as chat messages ending in a user turn, ``chosen`` / ``rejected`` as lists of one assistant message;
- ``chosen`` / ``rejected`` as whole conversations ending in the assistant's answer, with a ``prompt`` field
  (UltraFeedback-binarized) or without one (``pairs.prompt_field: null``: the prompt is the conversation
  before the answer, which both sides must share).
Answers are the assistant turn's text, tokenised without special tokens and ended with EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_elo.data.loader import rows_at
from megatron_elo.data.prompts import PromptFields, PromptFileError, _jsonl_rows, _parquet_rows, row_to_prompt
from megatron_elo.data.source import fit_prompt
from megatron_elo.data.tokenizer import PromptTokenizer
from megatron_elo.flow import PairSignal, Prompt, PromptBatch, Response


@dataclass(frozen=True, kw_only=True)
class PairFields:
    """Which columns of a pair file hold what (``algorithm.pairs.*_field``)."""

    prompt: str | None = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    id: str | None = "id"


@dataclass(frozen=True, kw_only=True)
class PreferenceRow:
    """One pair of the file."""

    prompt: Prompt
    chosen: str
    rejected: str


def _answer(value: object, field: str, where: str) -> tuple[str, list[dict] | None]:
    """A chosen / rejected value -> (answer text, the conversation before it or None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(f"{where}: field {field!r} is empty")
        return value, None
    ok = isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value)
    if not ok or value[-1]["role"] != "assistant":
        raise PromptFileError(f"{where}: field {field!r} is neither a string nor chat messages ending in an assistant "
                              f"message ({{'role': 'assistant', 'content': ...}})")
    return str(value[-1]["content"]), [dict(role=m["role"], content=m["content"]) for m in value[:-1]]


def row_to_pair(row: dict, fields: PairFields, *, where: str) -> PreferenceRow:
    """One file row -> ``PreferenceRow`` (``where``: "file:line", for errors)."""
    for field in (fields.chosen, fields.rejected):
        if field not in row:
            raise PromptFileError(f"{where}: no field {field!r} (has {sorted(row)}); set algorithm.pairs.chosen_field / "
                                  f"rejected_field")
    chosen, chosen_context = _answer(row[fields.chosen], fields.chosen, where)
    rejected, rejected_context = _answer(row[fields.rejected], fields.rejected, where)
    if fields.prompt is not None and fields.prompt in row:
        prompt = row_to_prompt(row, PromptFields(prompt=fields.prompt, id=fields.id), where=where)
    elif chosen_context:  # the implicit prompt: what both conversations share before their answers
        if chosen_context != rejected_context:
            raise PromptFileError(f"{where}: {fields.chosen!r} and {fields.rejected!r} differ before their answers; an "
                                  f"implicit prompt must be the same conversation on both sides")
        prompt = row_to_prompt({"prompt": chosen_context, **({"id": row[fields.id]} if fields.id in row else {})},
                               PromptFields(prompt="prompt", id="id"), where=where)
    else:
        where_from = f"no field {fields.prompt!r}" if fields.prompt else "algorithm.pairs.prompt_field is null"
        raise PromptFileError(f"{where}: no prompt: {where_from} and {fields.chosen!r} is a bare answer, not a "
                              f"conversation; set algorithm.pairs.prompt_field")
    return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected)


def read_pairs(path: str | Path, *, fields: PairFields = PairFields()) -> list[PreferenceRow]:
    """Every pair of a .jsonl / .json or .parquet file, in file order; PromptFileError names a bad row."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file; check algorithm.pairs.path")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    pairs = [row_to_pair(row, fields, where=where) for where, row in rows]
    if not pairs:
        raise PromptFileError(f"{path}: no pairs")
    return pairs


def answer_token_ids(tokenizer: PromptTokenizer, text: str, *, max_tokens: int) -> tuple[int, ...]:
    """An answer's text as the player would have sampled it: its ids and EOS, cut to ``max_tokens``."""
    return tuple([*tokenizer.encode_answer(text), tokenizer.eos_id][:max_tokens])


@dataclass(frozen=True, kw_only=True)
class PairRows:
    """Pairs as token ids, in pair order (the same on every rank)."""

    prompt_ids: tuple[tuple[int, ...], ...]
    chosen_ids: tuple[tuple[int, ...], ...]
    rejected_ids: tuple[tuple[int, ...], ...]
    chosen_win: tuple[float, ...]
    rejected_win: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def response_tokens(self) -> float:
        """Answer tokens over every pair, both sides."""
        return float(sum(len(a) + len(b) for a, b in zip(self.chosen_ids, self.rejected_ids, strict=True)))

    @classmethod
    def from_rollouts(cls, batch: PromptBatch, rollouts: list[list[Response]], signal: PairSignal) -> PairRows:
        """The pairs of ``signal``: the prompt's ids and the two samples' answer ids."""
        pairs = signal.pairs
        return cls(prompt_ids=tuple(batch.token_ids[p.prompt_index] for p in pairs),
                   chosen_ids=tuple(rollouts[p.prompt_index][p.chosen].token_ids for p in pairs),
                   rejected_ids=tuple(rollouts[p.prompt_index][p.rejected].token_ids for p in pairs),
                   chosen_win=tuple(p.chosen_win for p in pairs), rejected_win=tuple(p.rejected_win for p in pairs))

    @classmethod
    def from_choices(cls, choices: Sequence, prompt_ids: Sequence[tuple[int, ...]],
                     answer_ids: Callable[[tuple[str, int], int], tuple[int, ...]]) -> PairRows:
        """Rows of ``signals.scored.Choice`` pairs: prompt ``prompt_ids[c.prompt_index]``, answers
        ``answer_ids((source, index), prompt_index)``; hard win rates (1 chosen, 0 rejected)."""
        return cls(prompt_ids=tuple(prompt_ids[c.prompt_index] for c in choices),
                   chosen_ids=tuple(answer_ids(c.chosen, c.prompt_index) for c in choices),
                   rejected_ids=tuple(answer_ids(c.rejected, c.prompt_index) for c in choices),
                   chosen_win=(1.0,) * len(choices), rejected_win=(0.0,) * len(choices))

    def __add__(self, other: PairRows) -> PairRows:
        return PairRows(prompt_ids=self.prompt_ids + other.prompt_ids, chosen_ids=self.chosen_ids + other.chosen_ids,
                        rejected_ids=self.rejected_ids + other.rejected_ids, chosen_win=self.chosen_win + other.chosen_win,
                        rejected_win=self.rejected_win + other.rejected_win)

    def tensors(self, indices: list[int], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs ``indices`` as rows (chosen, rejected, chosen, ...): tokens [2k, S] int64 right-padded,
        response mask [2k, S] bool, win rates [2k] float32."""
        rows, masks, wins = [], [], []
        for i in indices:
            for answer, win in ((self.chosen_ids[i], self.chosen_win[i]), (self.rejected_ids[i], self.rejected_win[i])):
                rows.append(list(self.prompt_ids[i]) + list(answer))
                masks.append([False] * len(self.prompt_ids[i]) + [True] * len(answer))
                wins.append(win)
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([m + [False] * (width - len(m)) for m in masks], dtype=torch.bool)
        return tokens, mask, torch.tensor(wins, dtype=torch.float32)


class PairSource:
    """The pairs in the seeded per-epoch order as token ids; prompts fitted like training prompts
    (``rollout.max_prompt_tokens`` / ``overlong_prompt``; a dropped one is skipped and counted), answers
    cut at ``max_answer_tokens`` (counted). ``state_dict`` resumes exactly."""

    def __init__(self, rows: list[PreferenceRow], tokenizer: PromptTokenizer, *, seed: int, shuffle: bool,
                 max_prompt_tokens: int | None, overlong: str, max_answer_tokens: int):
        self.rows, self.tokenizer = rows, tokenizer
        self.seed, self.shuffle = seed, shuffle
        self.max_prompt_tokens, self.overlong, self.max_answer_tokens = max_prompt_tokens, overlong, max_answer_tokens
        self.absolute = 0
        self.dropped = self.truncated_answers = 0

    def _answer_ids(self, text: str) -> tuple[int, ...]:
        ids = answer_token_ids(self.tokenizer, text, max_tokens=self.max_answer_tokens)
        self.truncated_answers += ids[-1:] != (self.tokenizer.eos_id,)
        return ids

    def next_pairs(self, count: int) -> PairRows:
        """The next ``count`` usable pairs; advances the position (past dropped ones too)."""
        prompt_ids, chosen, rejected = [], [], []
        while len(prompt_ids) < count:
            for index in rows_at(self.absolute, count - len(prompt_ids), num_rows=len(self.rows), seed=self.seed,
                                 shuffle=self.shuffle):
                self.absolute += 1
                row = self.rows[index]
                ids = tuple(self.tokenizer.encode_prompt(row.prompt))
                fitted = ids if self.max_prompt_tokens is None else fit_prompt(
                    row.prompt, ids, max_tokens=self.max_prompt_tokens, overlong=self.overlong)
                if fitted is None:
                    self.dropped += 1
                    if self.dropped >= len(self.rows) and not prompt_ids:
                        raise ValueError(f"every pair's prompt is over rollout.max_prompt_tokens={self.max_prompt_tokens}")
                    continue
                prompt_ids.append(fitted)
                chosen.append(self._answer_ids(row.chosen))
                rejected.append(self._answer_ids(row.rejected))
        ones = (1.0,) * count
        return PairRows(prompt_ids=tuple(prompt_ids), chosen_ids=tuple(chosen), rejected_ids=tuple(rejected),
                        chosen_win=ones, rejected_win=(0.0,) * count)

    def metrics(self) -> dict[str, float]:
        """Pairs dropped for an overlong prompt, answers cut, epochs so far."""
        return {"pairs/overlong_dropped": float(self.dropped), "pairs/answers_truncated": float(self.truncated_answers),
                "pairs/epoch": float(self.absolute // len(self.rows))}

    def state_dict(self) -> dict:
        """The position and the counts (JSON)."""
        return {"absolute": self.absolute, "dropped": self.dropped, "truncated_answers": self.truncated_answers}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``."""
        self.absolute, self.dropped = int(state["absolute"]), int(state["dropped"])
        self.truncated_answers = int(state["truncated_answers"])
