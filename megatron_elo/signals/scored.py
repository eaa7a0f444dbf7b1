"""Answers scored alone, and the pairs the self-improvement methods choose from the scores (pure rules).

    scores, games, verdicts = score_answers(judge, prompts, groups, rng)   # [P, k] float64, NaN: no valid score
    choices = tsr_choices(current, anchor)                # Temporal Self-Rewarding, phase 1 (anchored rejection)
    choices = tsr_choices(current, anchor, future)        # phase 2 (future-guided chosen)
    choices = best_vs_worst(scores)                       # a prompt's best answer over its worst (EVOLVE's direct pairs)
    kept = refinement_choices(drafts, refined)            # EVOLVE: each refinement against its draft

A ``Choice`` names its answers by source ("current", "anchor", "future", "draft", "refined", ...) and index,
so the recipe can find their tokens; only a strictly higher score makes a pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megatron_elo.flow import Game, Prompt, Response, Verdict


@dataclass(frozen=True, kw_only=True)
class Choice:
    """One training pair of prompt ``prompt_index``: the chosen and rejected answers as (source, index)."""

    prompt_index: int
    chosen: tuple[str, int]
    rejected: tuple[str, int]
    chosen_score: float
    rejected_score: float


def score_answers(judge, prompts: Sequence[Prompt], groups: Sequence[Sequence[Response]],
                  rng: np.random.Generator) -> tuple[np.ndarray, list[Game], list[Verdict]]:
    """[P, k] the judge's score of each answer alone (``groups[p]``: prompt p's k answers), NaN when its
    verdict is invalid (an unreadable grade: counted by the judge, never a score); the games and verdicts."""
    games = [Game(game_id=i * len(group) + j, prompt=prompt, policy=answer, opponent=None)
             for i, (prompt, group) in enumerate(zip(prompts, groups, strict=True)) for j, answer in enumerate(group)]
    width = max((len(g) for g in groups), default=0)
    if any(len(g) != width for g in groups):
        raise ValueError(f"score_answers: every prompt needs the same number of answers, got {sorted({len(g) for g in groups})}")
    scores = np.full((len(groups), width), np.nan)
    verdicts = judge.judge(games, rng) if games else []
    for game, verdict in zip(games, verdicts, strict=True):
        if verdict.valid and verdict.score is not None:
            scores[game.game_id // width, game.game_id % width] = verdict.score
    return scores, games, list(verdicts)


def best_index(row: np.ndarray) -> int | None:
    """The highest valid score's index (the first among equals); None when none is valid."""
    valid = np.flatnonzero(~np.isnan(row))
    return int(valid[np.argmax(row[valid])]) if len(valid) else None


def worst_index(row: np.ndarray) -> int | None:
    """The lowest valid score's index (the first among equals); None when none is valid."""
    valid = np.flatnonzero(~np.isnan(row))
    return int(valid[np.argmin(row[valid])]) if len(valid) else None


def tsr_choices(current: np.ndarray, anchor: np.ndarray, future: np.ndarray | None = None) -> list[Choice]:
    """Temporal Self-Rewarding's pairs, [P, k] scores of M_i's, M_0's (and M_f's) samples of each prompt.
    Rejected (anchored): M_0's worst when it scored below M_i's worst, else M_i's worst. Chosen: M_i's best;
    with ``future``, M_f's best instead when it scores higher. A pair only when chosen > rejected."""
    choices = []
    for p in range(current.shape[0]):
        best, worst = best_index(current[p]), worst_index(current[p])
        if best is None:
            continue
        rejected, low = ("current", worst), current[p, worst]
        anchor_worst = worst_index(anchor[p])
        if anchor_worst is not None and anchor[p, anchor_worst] < low:
            rejected, low = ("anchor", anchor_worst), anchor[p, anchor_worst]
        chosen, high = ("current", best), current[p, best]
        future_best = None if future is None else best_index(future[p])
        if future_best is not None and future[p, future_best] > high:
            chosen, high = ("future", future_best), future[p, future_best]
        if high > low:
            choices.append(Choice(prompt_index=p, chosen=chosen, rejected=rejected, chosen_score=float(high),
                                  rejected_score=float(low)))
    return choices


def best_vs_worst(scores: np.ndarray, *, source: str = "answer") -> list[Choice]:
    """Each prompt's best answer over its worst ([P, m] scores), when they differ; indices into the row."""
    choices = []
    for p in range(scores.shape[0]):
        best, worst = best_index(scores[p]), worst_index(scores[p])
        if best is not None and scores[p, best] > scores[p, worst]:
            choices.append(Choice(prompt_index=p, chosen=(source, best), rejected=(source, worst),
                                  chosen_score=float(scores[p, best]), rejected_score=float(scores[p, worst])))
    return choices


def refinement_choices(drafts: np.ndarray, refined: np.ndarray) -> list[Choice]:
    """Each refinement against the draft it refined ([R] scores, R = prompts x samples, flat): the better of
    the two is chosen for the "refine this draft" prompt (the draft itself when the refinement made it
    worse); equal or unscored pairs make none. ``prompt_index`` is the draft's flat index."""
    choices = []
    for i, (before, after) in enumerate(zip(drafts, refined, strict=True)):
        if np.isnan(before) or np.isnan(after) or before == after:
            continue
        won = after > before
        choices.append(Choice(prompt_index=i, chosen=("refined" if won else "draft", i),
                              rejected=("draft" if won else "refined", i), chosen_score=float(max(before, after)),
                              rejected_score=float(min(before, after))))
    return choices


def mix_pairs(direct: Sequence, refine: Sequence, *, share: float, rng: np.random.Generator) -> tuple[list, list]:
    """(direct, refine) subsampled (order kept) so that refine pairs are ``share`` of the whole: the larger
    kind gives way; when either kind is empty the other is kept whole (there is nothing to balance against)."""
    direct, refine = list(direct), list(refine)
    if not direct or not refine or share in (0.0, 1.0):
        return ([] if share == 1.0 and refine else direct), ([] if share == 0.0 and direct else refine)
    if len(refine) / (len(direct) + len(refine)) > share:
        keep_refine, keep_direct = max(round(share / (1 - share) * len(direct)), 1), len(direct)
    else:
        keep_refine, keep_direct = len(refine), max(round((1 - share) / share * len(refine)), 1)
    pick = lambda items, count: [items[i] for i in sorted(rng.choice(len(items), size=count, replace=False))]  # noqa: E731
    return pick(direct, min(keep_direct, len(direct))), pick(refine, min(keep_refine, len(refine)))
