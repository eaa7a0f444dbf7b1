"""``compare``'s results: one ``MethodResult`` per method over its seeds (final held-out win rate and
Elo, steps to the target, the curriculum's measurements of ``analysis/curriculum.py``), the markdown
table and the plots.

    results = [method_result(method, summaries, target=0.45, reference=ratings, selection=...) ...]
    print(format_table(results, start=0.42, target=0.47))
    plot_curves(out_dir, results)          # compare_curves.png, compare_mechanism.png, compare_<method>.png
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_elo.analysis.curriculum import (
    eval_curve,
    mean_interval,
    near_share,
    opponent_swing,
    selection_shift,
    trace_series,
)
from megatron_elo.flow import POLICY
from megatron_elo.utils.numeric import nan_mean


@dataclass(frozen=True, kw_only=True)
class SelectionSettings:
    """How a method drew its opponents (for the selection-shift measurement)."""

    temperature: float
    selection: str = "rating_gap"
    target_win_rate: float = 0.5
    initial_policy: float = 1000.0


@dataclass(frozen=True, kw_only=True)
class MethodResult:
    """One method over its seeds; every list has one value per seed (NaN where it does not apply)."""

    method: str
    final: list[float]  # final held-out win rate
    steps_to_target: list[int | None]  # first eval step reaching the target (None: never)
    final_elo: list[float] = field(default_factory=list)  # held-out Elo at the end (fitted at reference ratings)
    no_signal: list[float] = field(default_factory=list)  # mean share of prompt groups without signal
    near: list[float] = field(default_factory=list)  # mean share of prompts against an opponent near the policy
    chosen_win: list[float] = field(default_factory=list)  # mean score of the policy against its drawn opponents
    swing: list[float] = field(default_factory=list)  # frozen opponents' rating range over the run, mean over them
    shift: list[float] = field(default_factory=list)  # mean total-variation distance of selection from clean ratings
    elo_error: list[float] = field(default_factory=list)  # the policy's training Elo - its held-out Elo, at the end
    curves: list[list[dict]] = field(default_factory=list)  # per seed: [{step, win_rate, elo, train_elo}]
    series: list[dict[str, list[float]]] = field(default_factory=list)  # per seed: per-step no_signal, near, chosen_win

    @property
    def mean(self) -> float:
        return statistics.mean(self.final)

    @property
    def std(self) -> float:
        return statistics.stdev(self.final) if len(self.final) > 1 else 0.0


def steps_to_target(evals: list[dict], target: float) -> int | None:
    """The first evaluated step whose win rate reaches ``target`` (None if none does)."""
    return next((e["step"] for e in evals if e["win_rate"] >= target), None)


def method_result(method: str, summaries: list[dict], *, target: float, reference: Mapping[str, float],
                  selection: SelectionSettings | None) -> MethodResult:
    """``summaries``: the method's runs' summary.json, one per seed; ``reference``: the opponents' fixed
    ratings for the held-out Elo; ``selection``: how it drew opponents (None: no draw to measure)."""
    curves, series = [], []
    for s in summaries:
        train_elo = {row["step"]: row.get(POLICY) for row in s.get("elo_history", [])}
        curves.append([{**point, "train_elo": train_elo.get(point["step"])} for point in eval_curve(s, reference)])
        series.append({"no_signal": trace_series(s, "no_signal"), "near": near_share(s),
                       "chosen_win": trace_series(s, "reward_mean")})
    swings = [nan_mean(list(opponent_swing(s).values())) for s in summaries]
    shifts = [nan_mean(selection_shift(s, reference, temperature=selection.temperature, selection=selection.selection,
                                       target_win_rate=selection.target_win_rate,
                                       initial_policy=selection.initial_policy)) if selection else float("nan")
              for s in summaries]
    return MethodResult(
        method=method, final=[s["win_rate_after"] for s in summaries],
        steps_to_target=[steps_to_target(s["evals"], target) for s in summaries],
        final_elo=[c[-1]["elo"] if c else float("nan") for c in curves],
        no_signal=[nan_mean(x["no_signal"]) for x in series], near=[nan_mean(x["near"]) for x in series],
        chosen_win=[nan_mean(x["chosen_win"]) for x in series] if method != "point" else [float("nan")] * len(series),
        swing=swings, shift=shifts, elo_error=[_final_elo_error(c) if method != "point" else float("nan") for c in curves], curves=curves, series=series)


def _final_elo_error(curve: list[dict]) -> float:
    """How far the rating the curriculum used is from the policy's held-out Elo at the last evaluation."""
    if not curve or curve[-1].get("train_elo") is None:
        return float("nan")
    return curve[-1]["train_elo"] - curve[-1]["elo"]


def _cell(values: list[float], digits: int = 3) -> str:
    mean, half = mean_interval(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} +- {half:.{digits}f}"


def format_table(results: list[MethodResult], *, start: float, target: float) -> str:
    """The markdown tables: outcomes (mean +- 95% interval over seeds) and the curriculum's measurements."""
    lines = [f"start win rate {start:.3f}; target {target:.3f}; +- is a 95% Student-t interval over seeds", "",
             "| method | final win rate | per seed | final held-out Elo | steps to target, per seed |",
             "|---|---|---|---|---|"]
    for r in results:
        reach = ", ".join("-" if s is None else str(s) for s in r.steps_to_target)
        lines.append(f"| {r.method} | {_cell(r.final)} | {', '.join(f'{v:.3f}' for v in r.final)} | "
                     f"{_cell(r.final_elo, 0)} | {reach} |")
    lines += ["", "| method | without signal | near the policy | policy's score vs drawn | opponents' rating swing | "
              "selection shift (TV) | training Elo - held-out Elo |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.method} | {_cell(r.no_signal, 2)} | {_cell(r.near, 2)} | {_cell(r.chosen_win, 2)} | "
                     f"{_cell(r.swing, 0)} | {_cell(r.shift, 3)} | {_cell(r.elo_error, 0)} |")
    return "\n".join(lines)


def _band(ax, steps, per_seed: np.ndarray, label: str, **style) -> None:
    mean = np.nanmean(per_seed, axis=0)
    line = ax.plot(steps, mean, label=label, **style)[0]
    if per_seed.shape[0] > 1:
        ax.fill_between(steps, np.nanmin(per_seed, axis=0), np.nanmax(per_seed, axis=0), alpha=0.2, color=line.get_color())


def _curve_array(result: MethodResult, key: str) -> tuple[list[int], np.ndarray]:
    steps = [p["step"] for p in result.curves[0]]
    return steps, np.array([[np.nan if p.get(key) is None else p[key] for p in c[:len(steps)]] for c in result.curves],
                           dtype=np.float64)


def _smooth(values: list[float], window: int = 20) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return np.array([np.nanmean(x[max(0, i - window + 1):i + 1]) if np.isfinite(x[max(0, i - window + 1):i + 1]).any()
                     else np.nan for i in range(len(x))])


def plot_curves(out: Path, results: list[MethodResult]) -> list[Path]:
    """See ``_plot_curves``; steps where every seed is NaN (a method without that measurement) are left blank."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean / nanmin of an all-NaN column
        return _plot_curves(out, results)


def _plot_curves(out: Path, results: list[MethodResult]) -> list[Path]:
    """compare_curves.png (held-out win rate and Elo of every method, shaded min-max over seeds),
    compare_mechanism.png (no-signal share, near share, policy's score vs drawn, smoothed over 20 steps,
    mean over seeds) and one compare_<method>.png each (its seeds, with the training Elo dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in (r for r in results if r.curves and r.curves[0]):
        for ax, key in zip(axes, ("win_rate", "elo"), strict=True):
            _band(ax, *_curve_array(r, key), r.method)
    for ax, label in zip(axes, ("held-out win rate", "held-out Elo (reference ratings)"), strict=True):
        ax.set_xlabel("step"), ax.set_ylabel(label), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out / "compare_curves.png", dpi=120), plt.close(fig)
    written.append(out / "compare_curves.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in results:
        for ax, key in zip(axes, ("no_signal", "near", "chosen_win"), strict=True):
            runs = [s[key] for s in r.series if s[key]]
            if runs and not all(math.isnan(v) for v in runs[0]):
                length = min(len(x) for x in runs)
                ax.plot(range(1, length + 1), np.nanmean([_smooth(x[:length]) for x in runs], axis=0), label=r.method)
    for ax, label in zip(axes, ("prompts without signal", "prompts vs an opponent near the policy",
                                "policy's score vs drawn opponents"), strict=True):
        ax.set_xlabel("step"), ax.set_ylabel(label), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout(), fig.savefig(out / "compare_mechanism.png", dpi=120), plt.close(fig)
    written.append(out / "compare_mechanism.png")

    for r in (r for r in results if r.curves and r.curves[0]):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        _band(axes[0], *_curve_array(r, "win_rate"), "held-out win rate")
        _band(axes[1], *_curve_array(r, "elo"), "held-out Elo")
        steps, train = _curve_array(r, "train_elo")
        if np.isfinite(train).any():
            _band(axes[1], steps, train, "training Elo", linestyle="--")
        for ax in axes:
            ax.set_xlabel("step"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
        fig.suptitle(f"{r.method}: {len(r.curves)} seed(s), mean and min-max")
        fig.tight_layout()
        path = out / f"compare_{r.method.replace(':', '-')}.png"
        fig.savefig(path, dpi=120), plt.close(fig)
        written.append(path)
    return written
