"""SPARTA's panel: every other model of the tribe scores both answers of a duel; reputations weigh the votes.

    verdict = panel_verdict(scores_a={"m2": 7, "m3": 4}, scores_b={"m2": 5, "m3": 6}, reputations=reps)
    verdict.winner        # "a", "b" or None (an exact tie of the aggregates: no pair)
    verdict.agrees        # whether the panel's majority (one vote per judge) picked the same side

The aggregate score of an answer is sum_k R_k s^k / sum_k R_k over the panel's judges k (their
reputations R_k, ``elo.reputation.Reputations.weighted_score``); the higher aggregate wins. When a
judge's reply to either answer of a duel has no parsable score (``parse_panel_score``), that judge
scores both answers 5, as the SPARTA authors' code does (``duel_scores``: one unreadable reply does
not hand the other answer the duel); the caller counts the unreadable replies.
``weighting="uniform"`` takes the plain mean instead (the ablation SPARTA's reputation weighting is
measured against). The checker panel of verifiable tasks (the tiny demo) scores
10 - |error| (at least 1) and, with each judge's own noise probability, a uniform 1-10 draw instead.
Pure Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from megatron_elo.elo.reputation import Reputations
from megatron_elo.tasks.arithmetic import answer_error

UNPARSED_SCORE = 5.0  # the authors' score of a reply they cannot read
_SCORE_FIELD = re.compile(r'"score"\s*:\s*(\d+(?:\.\d+)?)')


def parse_panel_score(text: str) -> float | None:
    """The 1-10 score of a panel judge's JSON reply ({"score": 7, ...}, possibly inside other text), or
    None when there is no such field or it is outside 1-10 (the caller then uses ``UNPARSED_SCORE``)."""
    start, end = text.find("{"), text.rfind("}")
    value = None
    if 0 <= start < end:
        try:
            parsed = json.loads(text[start:end + 1])
            value = parsed.get("score") if isinstance(parsed, dict) else None
        except json.JSONDecodeError:
            value = None
    if value is None:
        found = _SCORE_FIELD.findall(text)
        value = float(found[-1]) if len(set(found)) == 1 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 1.0 <= float(value) <= 10.0 else None


def duel_scores(score_a: float | None, score_b: float | None) -> tuple[float, float]:
    """One judge's scores of a duel's two answers from its two replies' readings (None: unreadable, or not
    asked because overlong): both as read, or both ``UNPARSED_SCORE`` when either is missing."""
    if score_a is None or score_b is None:
        return UNPARSED_SCORE, UNPARSED_SCORE
    return score_a, score_b


@dataclass(frozen=True, kw_only=True)
class PanelVerdict:
    """A duel's panel decision: both aggregates, the winner (None: exact tie), the majority's agreement."""

    aggregate_a: float
    aggregate_b: float
    winner: Literal["a", "b"] | None
    agrees: bool | None  # None when the majority is split evenly or the aggregates tie


@dataclass(frozen=True, kw_only=True)
class PanelScores:
    """Every panel judge's score of every duel answer of an iteration."""

    scores: Mapping[tuple[int, str], Mapping[str, float]]  # (prompt index, answering player) -> {judge: 1-10}
    parsed: int = 0  # LLM replies with a readable score
    unparsed: int = 0  # LLM replies without a readable score (that judge scores both answers of the duel 5)
    overlong: int = 0  # LLM panel prompts over the judge's engine length (not asked; likewise both 5)


def panel_verdict(*, scores_a: Mapping[str, float], scores_b: Mapping[str, float], reputations: Reputations,
                  weighting: Literal["reputation", "uniform"] = "reputation") -> PanelVerdict:
    """The decision of a panel that scored answer a (``scores_a``: {judge: score}) and answer b, by the
    reputation-weighted (or plain) mean; the same judges must have scored both."""
    if set(scores_a) != set(scores_b) or not scores_a:
        raise ValueError(f"every panel judge scores both answers: a by {sorted(scores_a)}, b by {sorted(scores_b)}")
    if weighting == "reputation":
        a, b = reputations.weighted_score(scores_a), reputations.weighted_score(scores_b)
    else:
        a, b = float(np.mean(list(scores_a.values()))), float(np.mean([scores_b[k] for k in scores_a]))
    winner = "a" if a > b else "b" if b > a else None
    votes = sum((scores_a[k] > scores_b[k]) - (scores_a[k] < scores_b[k]) for k in scores_a)
    majority = "a" if votes > 0 else "b" if votes < 0 else None
    agrees = None if winner is None or majority is None else majority == winner
    return PanelVerdict(aggregate_a=a, aggregate_b=b, winner=winner, agrees=agrees)


def checker_score(answer: str, reference: str) -> float:
    """The checker's 1-10 score of an arithmetic answer: 10 - |error|, at least 1 (1 when not a number)."""
    return max(1.0, 10.0 - answer_error(answer, reference))


def noisy_checker_scores(noise: Mapping[str, float], answer: str, reference: str,
                         rng: np.random.Generator) -> dict[str, float]:
    """{judge: its score of ``answer``}: the checker's, or with probability ``noise[judge]`` a uniform
    integer in 1-10 (one uniform draw per judge, in ``noise``'s order, then one more when it fires)."""
    scores = {}
    for judge, p in noise.items():
        scores[judge] = float(rng.integers(1, 11)) if rng.random() < p else checker_score(answer, reference)
    return scores


def fill_score_template(template: str, *, question: str, answer: str) -> str:
    """The panel prompt: ``{question}`` and ``{answer}`` replaced (the template's other braces, its JSON
    example, kept as they are)."""
    return template.replace("{question}", question).replace("{answer}", answer)
