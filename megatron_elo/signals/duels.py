"""SPARTA's duels decided: the panel's scores -> verdicts, DPO pairs, the reputation update's duels, metrics.

    signal = judge_duels(batch, plan, answers, panel, reputations, weighting="reputation")
    signal.pairs          # (prompt index, chosen player, rejected player) of every decided duel
    rows = duel_pair_rows(batch, answers, signal)       # the pairs as token ids (every player trains on them)

Each duel's winner is the higher aggregate score (``weighting``: reputation-weighted or plain mean of
the panel's scores); an exact tie makes no pair and no reputation change. The other weighting is
decided beside it on the same scores, and where the prompt has a checkable reference the checker's
noise-free scores say which answer is really better: ``label_accuracy/<weighting>`` is the share of
duels with a real difference that each weighting labels right (a tie counts as not right). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from megatron_elo.data.pairs import PairRows
from megatron_elo.elo.reputation import Duel, Reputations
from megatron_elo.flow import PromptBatch, Response
from megatron_elo.judges.panel import PanelScores, PanelVerdict, checker_score, panel_verdict
from megatron_elo.matchmaking.duels import DuelMatch, DuelPlan

WEIGHTINGS = ("reputation", "uniform")


@dataclass(frozen=True, kw_only=True)
class DuelResult:
    """One duel, decided under both weightings; ``better``: the checker's noise-free pick (None: no reference
    or equal scores)."""

    duel: DuelMatch
    verdicts: dict[str, PanelVerdict]  # by weighting
    better: Literal["a", "b"] | None


@dataclass(frozen=True, kw_only=True)
class TribePair:
    """A decided duel's (winner, loser): the winner's answer is chosen."""

    prompt_index: int
    chosen: str  # the players whose answers are chosen / rejected
    rejected: str


@dataclass(frozen=True, kw_only=True)
class TribeSignal:
    """The iteration's decided duels under ``weighting``, their pairs and the reputation update's duels."""

    weighting: str
    results: tuple[DuelResult, ...]
    pairs: tuple[TribePair, ...]
    duels: tuple[Duel, ...]  # decided duels with their aggregates, in prompt order

    def metrics(self) -> dict[str, float]:
        """pairs, ties, panel agreement, label accuracy under each weighting, each player's duel win rate."""
        agreement = [r.verdicts[self.weighting].agrees for r in self.results if r.verdicts[self.weighting].agrees is not None]
        metrics = {"pairs": float(len(self.pairs)), "duel_ties": float(len(self.results) - len(self.pairs)),
                   "panel_agreement": float(np.mean(agreement)) if agreement else float("nan")}
        checkable = [r for r in self.results if r.better is not None]
        metrics["label_accuracy/duels"] = float(len(checkable))
        for weighting in WEIGHTINGS:
            right = [r.verdicts[weighting].winner == r.better for r in checkable]
            metrics[f"label_accuracy/{weighting}"] = float(np.mean(right)) if right else float("nan")
        played: dict[str, list[float]] = {}
        for r in self.results:
            winner = r.verdicts[self.weighting].winner
            for side, name in (("a", r.duel.first), ("b", r.duel.second)):
                played.setdefault(name, []).append(0.5 if winner is None else float(winner == side))
        metrics.update({f"duel_win_rate/{name}": float(np.mean(v)) for name, v in sorted(played.items())})
        return metrics


def _better(batch: PromptBatch, duel: DuelMatch, answers: dict[tuple[int, str], Response]) -> Literal["a", "b"] | None:
    reference = batch.prompts[duel.prompt_index].reference
    if reference is None:
        return None
    a = checker_score(answers[duel.prompt_index, duel.first].text, reference)
    b = checker_score(answers[duel.prompt_index, duel.second].text, reference)
    return "a" if a > b else "b" if b > a else None


def judge_duels(batch: PromptBatch, plan: DuelPlan, answers: dict[tuple[int, str], Response], panel: PanelScores,
                reputations: Reputations, *, weighting: str) -> TribeSignal:
    """Every duel of ``plan`` decided from ``panel``'s scores at the current reputations (module docstring)."""
    results, pairs, duels = [], [], []
    for duel in plan.duels:
        a, b = panel.scores[duel.prompt_index, duel.first], panel.scores[duel.prompt_index, duel.second]
        verdicts = {w: panel_verdict(scores_a=a, scores_b=b, reputations=reputations, weighting=w) for w in WEIGHTINGS}
        results.append(DuelResult(duel=duel, verdicts=verdicts, better=_better(batch, duel, answers)))
        verdict = verdicts[weighting]
        if verdict.winner is None:
            continue
        winner, loser = (duel.first, duel.second) if verdict.winner == "a" else (duel.second, duel.first)
        pairs.append(TribePair(prompt_index=duel.prompt_index, chosen=winner, rejected=loser))
        duels.append(Duel(player_a=duel.first, player_b=duel.second, score_a=verdict.aggregate_a, score_b=verdict.aggregate_b))
    return TribeSignal(weighting=weighting, results=tuple(results), pairs=tuple(pairs), duels=tuple(duels))


def duel_pair_rows(batch: PromptBatch, answers: dict[tuple[int, str], Response], pairs: tuple[TribePair, ...]) -> PairRows:
    """The pairs as token ids: the instruction's ids, the winner's and the loser's answer ids (hard labels)."""
    return PairRows(prompt_ids=tuple(batch.token_ids[p.prompt_index] for p in pairs),
                    chosen_ids=tuple(answers[p.prompt_index, p.chosen].token_ids for p in pairs),
                    rejected_ids=tuple(answers[p.prompt_index, p.rejected].token_ids for p in pairs),
                    chosen_win=tuple(1.0 for _ in pairs), rejected_win=tuple(0.0 for _ in pairs))
