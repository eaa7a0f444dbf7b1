"""Reading an LLM judge's reply: the template, verdict parsing, truncated replies, think blocks.

    letter = parse_verdict("Answer B is clearer. [[B]]")                   # "B"
    letter, text = read_reply(JudgeReply("Verdict: A. Because", truncated=True))   # None: cut, no [[verdict]]
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Letter = Literal["A", "B", "tie"]
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "judge_pairwise.txt"
TEMPLATE_FIELDS = frozenset({"question", "answer_a", "answer_b"})
LOGPROB_PREFILL = "[["
LOGPROB_CHOICES = {"A": "A", "B": "B", "C": "tie"}

_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
# labels in verdict positions only: the keyword in any case, the letter a capital (the English article
# "a" is not a verdict: "Neither answer is a complete solution"), ties only as the reply's last words
_LABELLED = re.compile(r"\b(?i:(?:final\s+)?(?:verdict|winner|answer|choice|decision|better(?:\s+answer)?)\s*(?:is)?"
                       r"\s*[:=\-]?\s*(?:answer|assistant|response|output)?)\s*\(?\b(A|B|C|(?i:tie))\b\)?")
_TIE_ENDING = re.compile(r"\b(?:tie|draw|equally good|equally bad)\s*[.!]?\s*$", re.IGNORECASE)


def parse_verdict(text: str) -> Letter | None:
    """The verdict in a judge's reply, or None when there is none or it is ambiguous.

    Bracketed [[A]] / [[B]] / [[C]] (C = tie) win over labelled forms ("Verdict: B", a capital letter
    after the label), which win over a bare reply ("A", "tie.") or a reply ending in a tie ("It is a
    draw."). Two different verdicts of the same kind: None.
    """
    for pattern in (_BRACKETED, _LABELLED):
        found = {_letter(m) for m in pattern.findall(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    bare = text.strip().strip(string.punctuation + " ").strip()
    if bare.upper() in ("A", "B"):
        return bare.upper()
    if bare.lower() in ("c", "tie", "draw") or (_TIE_ENDING.search(text) and not re.search(r"\b[AB]\b", text)):
        return "tie"
    return None


def _letter(raw: str) -> Letter:
    raw = raw.upper()
    return "tie" if raw in ("C", "TIE") else raw


def load_template(path: str | None) -> str:
    """The pairwise template text (``judge.template``, default configs/judge_pairwise.txt), checked to
    use exactly the fields {question}, {answer_a} and {answer_b}."""
    source = Path(path) if path else DEFAULT_TEMPLATE
    if not source.is_file():
        raise FileNotFoundError(f"judge.template: no file at {source}; point it at a text file with "
                                f"{{question}}, {{answer_a}} and {{answer_b}}, or leave it unset for the built-in one")
    text = source.read_text()
    used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    if used != TEMPLATE_FIELDS:
        raise ValueError(f"judge.template {source}: uses fields {sorted(used)}; it must use exactly "
                         f"{sorted(TEMPLATE_FIELDS)} (write literal braces as {{{{ and }}}})")
    return text


@dataclass(frozen=True)
class JudgeReply:
    """A judge's completion: its text, whether it was cut at the token limit, or why it failed."""

    text: str
    truncated: bool = False
    error: str | None = None  # the engine refused this request (e.g. HTTP 400: over max_model_len)


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def visible_text(reply: JudgeReply) -> tuple[str | None, str]:
    """(the reply after its think block, or None when the block never closes; the text to record)."""
    text = reply.text
    if _THINK_OPEN in text:
        opened_last = text.rfind(_THINK_OPEN) > text.rfind(_THINK_CLOSE)
        if opened_last:
            return None, f"unclosed {_THINK_OPEN} block (set model.chat_template_kwargs: {{enable_thinking: false}}): {text}"
        text = text[text.rfind(_THINK_CLOSE) + len(_THINK_CLOSE):]
    return text, text


def read_reply(reply: JudgeReply) -> tuple[Letter | None, str]:
    """(verdict or None, the text to record) of one reply: a think block is skipped (invalid if it never
    closes), a reply cut at the token limit needs a bracketed verdict."""
    text, recorded = visible_text(reply)
    if text is None:
        return None, recorded
    if reply.truncated and not _BRACKETED.search(text):
        return None, f"cut at judge.max_new_tokens without a [[verdict]]: {text}"
    return parse_verdict(text), text


# ---------------------------------------------------------------- grades and preference scales

_GRADE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")  # MT-Bench's "Rating: [[7]]"
_GRADE_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")  # its fallback: "[7]"
GRADE_RANGE = (1.0, 10.0)


def parse_grade(text: str) -> float | None:
    """The 1-10 grade in a judge's reply ("Rating: [[7]]", or "[7]" when no double brackets), or None:
    no grade, several different grades, or a number outside 1-10."""
    for pattern in (_GRADE, _GRADE_SINGLE):
        found = {float(m) for m in pattern.findall(text)}
        if len(found) == 1:
            grade = found.pop()
            return grade if GRADE_RANGE[0] <= grade <= GRADE_RANGE[1] else None
        if len(found) > 1:
            return None
    return None


# Arena-Hard's five-level scale: [[A>>B]] (A much better) ... [[B>>A]]; "<" forms read the other way round
_SCALE = re.compile(r"\[\[\s*([AB])\s*(>>|>|=|<<|<)\s*([AB])\s*\]\]")
ScaleVerdict = Literal["A>>B", "A>B", "A=B", "B>A", "B>>A"]


def parse_scale_verdict(text: str) -> ScaleVerdict | None:
    """The verdict of a five-level pairwise reply ([[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]]; "A<B" is
    read as "B>A"), or None: none, several different ones, or a side compared with itself."""
    found = set()
    for left, op, right in _SCALE.findall(text.upper()):
        if left == right:
            return None
        if op.startswith("<"):
            left, op, right = right, op.replace("<", ">"), left
        found.add("A=B" if op == "=" else f"{left}{op}{right}")
    return found.pop() if len(found) == 1 else None
