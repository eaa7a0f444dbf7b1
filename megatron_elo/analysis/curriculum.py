"""What ``compare`` measures of the curriculum in each run, read from a run's ``summary.json``
(its evaluations, Elo history and per-step trace: ``runner/report.step_trace``).

- held-out Elo: the policy's rating fitted to its evaluation games against the frozen opponents at
  fixed reference ratings (the config's initial ratings): comparable across methods, point included;
- near share: the fraction of a step's prompts played against an opponent the policy is close to in
  strength, by its latest evaluation (its win rate against that opponent within ``NEAR_BAND``);
- chosen win probability: the policy's mean score in the step's games (against the opponents it drew);
- no-signal share: prompts whose n samples all got the same reward (no gradient);
- rating noise: how far each frozen opponent's rating wanders over a run (its strength does not
  change), and how far that moves the selection probabilities: the total-variation distance between
  the probabilities each step drew from and those the same policy rating gives with every opponent at
  its reference rating.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

from megatron_elo.elo.ratings import expected_score
from megatron_elo.elo.selection import selection_probabilities
from megatron_elo.flow import POLICY

NEAR_BAND = (0.35, 0.65)  # an opponent is "near" when the policy's evaluated win rate against it is in here
# Student t, 97.5% quantile, by degrees of freedom: a 95% interval of a mean over a few seeds
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% Student-t interval) over seeds; NaN values are left out, the
    half-width is NaN below two values."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    if len(kept) < 2:
        return kept[0], float("nan")
    df = len(kept) - 1
    quantile = _T975[max(k for k in _T975 if k <= df)] if df <= 30 else 1.96
    return statistics.mean(kept), quantile * statistics.stdev(kept) / math.sqrt(len(kept))


def rating_against(win_rates: Mapping[str, float], ratings: Mapping[str, float]) -> float:
    """The rating R at which sum_j E(R beats j) = sum_j win_rate_j (the maximum-likelihood rating for
    equally many games against each opponent at fixed ``ratings``), found by bisection; clamped to the
    opponents' range +- 800 when the policy wins or loses everything."""
    names = [n for n in win_rates if n in ratings]
    if not names:
        return float("nan")
    target = sum(win_rates[n] for n in names)
    low, high = min(ratings[n] for n in names) - 800.0, max(ratings[n] for n in names) + 800.0
    for _ in range(60):
        middle = (low + high) / 2
        if sum(expected_score(middle, ratings[n]) for n in names) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def eval_curve(summary: dict, reference: Mapping[str, float]) -> list[dict]:
    """[{step, win_rate, elo}] of a run's evaluations; elo is ``rating_against`` the reference ratings."""
    return [{"step": e["step"], "win_rate": e["win_rate"], "elo": rating_against(e.get("per_opponent", {}), reference)}
            for e in summary.get("evals", [])]


def _latest_eval(evals: list[dict], step: int) -> dict | None:
    before = [e for e in evals if e["step"] < step]
    return before[-1] if before else None


def near_share(summary: dict) -> list[float]:
    """Per traced step, the share of its prompts played against an opponent within ``NEAR_BAND`` of the
    policy by the latest evaluation before the step (NaN for a step of a method without opponents)."""
    evals, shares = summary.get("evals", []), []
    for row in summary.get("trace", []):
        latest = _latest_eval(evals, row["step"])
        played = {name: count for name, count in row["prompts"].items() if name != "-"}
        if latest is None or not played:
            shares.append(float("nan"))
            continue
        rates = latest.get("per_opponent", {})
        near = sum(count for name, count in played.items() if NEAR_BAND[0] <= rates.get(name, -1.0) <= NEAR_BAND[1])
        shares.append(near / sum(played.values()))
    return shares


def trace_series(summary: dict, key: str) -> list[float]:
    """One field of every traced step (NaN where missing)."""
    return [float("nan") if row.get(key) is None else float(row[key]) for row in summary.get("trace", [])]


def opponent_swing(summary: dict) -> dict[str, float]:
    """{opponent: max - min of its rating over the run}; empty without an Elo history."""
    history = summary.get("elo_history", [])
    names = [n for n in (history[0] if history else {}) if n not in ("step", POLICY)]
    return {n: max(r[n] for r in history) - min(r[n] for r in history) for n in names}


def selection_shift(summary: dict, reference: Mapping[str, float], *, temperature: float, selection: str,
                    target_win_rate: float, initial_policy: float) -> list[float]:
    """Per traced step with a selection distribution, the total-variation distance between it and the
    distribution at the same policy rating (the one it was drawn with: the previous step's) with every
    opponent at its ``reference`` rating."""
    history = {row["step"]: row for row in summary.get("elo_history", [])}
    shifts = []
    for row in summary.get("trace", []):
        used = row.get("p_select") or {}
        if len(used) < 2:
            continue
        names = list(used)
        before = history.get(row["step"] - 1, {}).get(POLICY, initial_policy)
        clean = selection_probabilities(before, [reference[n] for n in names], temperature=temperature,
                                        selection=selection, target_win_rate=target_win_rate)
        shifts.append(0.5 * float(np.abs(np.array([used[n] for n in names]) - clean).sum()))
    return shifts
