"""Benchmark files as users already have them -> typed questions (and a baseline's answers).

    questions = read_questions("alpaca_eval.json")          # AlpacaEval: instruction, output, generator, dataset
    questions = read_questions("question.jsonl")            # MT-Bench: question_id, category, turns, reference
    questions = read_questions("arena-hard-v2.jsonl")       # Arena-Hard: uid / question_id, category, prompt / turns
    answers = read_answers("model_answer/gpt-4-0314.jsonl") # {question_id: text}

A file is a JSON list or JSON lines; each row's layout is recognised by its fields, so one reader
takes all three. A bad row raises ``BenchmarkFileError`` naming the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read; the message names the file, line and field, and the fix."""


@dataclass(frozen=True, kw_only=True)
class BenchQuestion:
    """One benchmark question: its user turns, and what the file says about the expected answers."""

    question_id: str
    category: str
    turns: tuple[str, ...]  # the user turns, first to last (AlpacaEval / Arena-Hard: one)
    reference_answer: str | None = None  # AlpacaEval's `output`: the reference model's answer to turn 1
    reference_generator: str | None = None  # who wrote reference_answer (AlpacaEval's `generator`)
    grading_references: tuple[str, ...] = ()  # MT-Bench's `reference`: one reference answer per turn


def _rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed row) of a JSON list (line numbers: positions, 1-based) or of JSON lines."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise BenchmarkFileError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        yield from enumerate(rows, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkFileError(f"{path}:{number}: not valid JSON ({err.msg}); one JSON object per line") from None


def _text(row: dict, field: str, where: str) -> str:
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkFileError(f"{where}: field {field!r} must be a non-empty string, got {value!r:.80}")
    return value


def _turns(row: dict, where: str) -> tuple[str, ...]:
    """A row's user turns: ``instruction`` / ``prompt`` (one), or ``turns`` (strings or {"content": ...})."""
    if "instruction" in row:
        return (_text(row, "instruction", where),)
    if "prompt" in row:
        return (_text(row, "prompt", where),)
    if "turns" not in row:
        raise BenchmarkFileError(f"{where}: no question; a row needs `instruction` (AlpacaEval), `turns` (MT-Bench) "
                                 f"or `prompt` / `turns` (Arena-Hard)")
    turns = row["turns"]
    if not isinstance(turns, list) or not turns:
        raise BenchmarkFileError(f"{where}: field 'turns' must be a non-empty list, got {turns!r:.80}")
    out = []
    for i, turn in enumerate(turns):
        content = turn.get("content") if isinstance(turn, dict) else turn
        if not isinstance(content, str) or not content.strip():
            raise BenchmarkFileError(f"{where}: field 'turns.{i}' must be a non-empty string (or {{\"content\": ...}}), "
                                     f"got {turn!r:.80}")
        out.append(content)
    return tuple(out)


def _question_id(row: dict, turns: tuple[str, ...]) -> str:
    for field in ("question_id", "uid", "id"):
        if row.get(field) is not None:
            return str(row[field])
    return "q" + hashlib.sha256(json.dumps(turns).encode()).hexdigest()[:12]  # AlpacaEval rows: by instruction


def _question(row: object, where: str) -> BenchQuestion:
    if not isinstance(row, dict):
        raise BenchmarkFileError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    turns = _turns(row, where)
    references = row.get("reference") or ()
    if isinstance(references, str):
        references = (references,)
    if not isinstance(references, (list, tuple)) or not all(isinstance(r, str) for r in references):
        raise BenchmarkFileError(f"{where}: field 'reference' must be a list of strings (one per turn), got {references!r:.80}")
    output = row.get("output")
    if output is not None and not isinstance(output, str):
        raise BenchmarkFileError(f"{where}: field 'output' (the reference answer) must be a string, got {output!r:.80}")
    category = row.get("category") or row.get("dataset") or "default"
    return BenchQuestion(question_id=_question_id(row, turns), category=str(category), turns=turns,
                         reference_answer=output, reference_generator=row.get("generator"),
                         grading_references=tuple(references))


def read_questions(path: str | Path, *, limit: int | None = None) -> list[BenchQuestion]:
    """The file's questions in file order (the first ``limit``); ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: no such file; point the benchmark's path at its question file")
    questions, seen = [], {}
    for number, row in _rows(path):
        question = _question(row, f"{path}:{number}")
        if question.question_id in seen:
            raise BenchmarkFileError(f"{path}:{number}: question id {question.question_id!r} is also on line "
                                     f"{seen[question.question_id]}; ids must be unique")
        seen[question.question_id] = number
        questions.append(question)
        if limit is not None and len(questions) == limit:
            break
    if not questions:
        raise BenchmarkFileError(f"{path}: no questions")
    return questions


def _answer_text(row: dict, where: str) -> str:
    """Answer / output string, or Arena-Hard v0.1's choices[0].turns[0].content."""
    for field in ("answer", "output"):
        if field in row:
            return _text(row, field, where)
    try:
        content = row["choices"][0]["turns"][0]["content"]
    except (KeyError, IndexError, TypeError):
        raise BenchmarkFileError(f"{where}: no answer; a row needs `answer`, `output` or Arena-Hard's "
                                 f"`choices[0].turns[0].content`") from None
    if not isinstance(content, str):
        raise BenchmarkFileError(f"{where}: field 'choices.0.turns.0.content' must be a string")
    return content


def read_answers(path: str | Path) -> dict[str, str]:
    """{question id: answer text} of an answers file (jsonl / JSON list: question_id / uid / id, and answer /
    output / Arena-Hard's choices)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: no such file; point baseline_answers at the baseline's answers file")
    answers = {}
    for number, row in _rows(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{where}: a row must be a JSON object")
        key = next((str(row[f]) for f in ("question_id", "uid", "id") if row.get(f) is not None), None)
        if key is None:
            raise BenchmarkFileError(f"{where}: no question id; a row needs `question_id`, `uid` or `id`")
        answers[key] = _answer_text(row, where)
    return answers
