"""A benchmark's report: a markdown leaderboard, JSON, and plots (intervals per model, preference vs length).

    paths = write_report(result, out_dir)      # report.md, report.json, scores.png, length.png (pairwise kinds)
    print(format_table(result))
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from megatron_elo.harness.results import BenchmarkResult


def _cell(number) -> str:
    if math.isnan(number.value):
        return "n/a"
    return f"{number.value:.3f} [{number.low:.3f}, {number.high:.3f}]"


def format_table(result: BenchmarkResult) -> str:
    """The leaderboard as markdown: a row per model, each number with its interval, then the counts."""
    numbers = list(dict.fromkeys(k for row in result.rows for k in row.numbers))
    counts = list(dict.fromkeys(k for row in result.rows for k in row.counts))
    header = ["model", "step"] + numbers + counts
    lines = [f"### {result.name} ({result.kind})", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for row in result.rows:
        cells = [row.model, "" if row.step is None else str(row.step)]
        cells += [_cell(row.numbers[k]) if k in row.numbers else "" for k in numbers]
        cells += [str(row.counts.get(k, "")) for k in counts]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Intervals: {result.interval}."]
    lines += [f"Note: {note}." for note in result.notes]
    if result.judge:
        lines.append("Judge: " + ", ".join(f"{k} {v:.4g}" for k, v in result.judge.items()) + ".")
    return "\n".join(lines)


def _plot_scores(result: BenchmarkResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if not math.isnan(r.numbers[result.headline].value)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(rows)), 3.5))
    values = [r.numbers[result.headline].value for r in rows]
    errors = [[v - r.numbers[result.headline].low for v, r in zip(values, rows, strict=True)],
              [r.numbers[result.headline].high - v for v, r in zip(values, rows, strict=True)]]
    ax.errorbar(range(len(rows)), values, yerr=errors, fmt="o", capsize=4)
    ax.set_xticks(range(len(rows)), [r.model for r in rows], rotation=30, ha="right")
    ax.set_ylabel(result.headline)
    ax.set_title(f"{result.name}: {result.headline} with intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_length(result: BenchmarkResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for model in dict.fromkeys(p.model for p in result.points):
        mine = [p for p in result.points if p.model == model]
        delta = np.asarray([p.length_delta for p in mine], dtype=float)
        pref = np.asarray([p.preference for p in mine])
        order = np.argsort(delta)
        bins = np.array_split(order, min(8, len(order)))
        ax.plot([delta[b].mean() for b in bins], [pref[b].mean() for b in bins], marker="o", label=model)
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("answer length - other answer's length (characters)")
    ax.set_ylabel("preference for the answer (binned mean)")
    ax.set_title(f"{result.name}: preference vs length difference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: BenchmarkResult, out_dir: str | Path) -> list[Path]:
    """report.md, report.json and the plots under ``out_dir`` (made), their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(format_table(result) + "\n")
    (out / "report.json").write_text(json.dumps(asdict(result), indent=2, default=float))
    paths = [out / "report.md", out / "report.json"]
    if any(not math.isnan(r.numbers[result.headline].value) for r in result.rows):
        _plot_scores(result, out / "scores.png")
        paths.append(out / "scores.png")
    if result.points:
        _plot_length(result, out / "length.png")
        paths.append(out / "length.png")
    return paths
