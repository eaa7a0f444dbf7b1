"""What a benchmark produced: a leaderboard row per model, each number with its interval."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Number:
    """A value and its interval (low, high); ``how`` says what the interval is."""

    value: float
    low: float
    high: float


@dataclass(frozen=True, kw_only=True)
class ModelRow:
    """One model's numbers on a benchmark (``numbers`` in table order; the first is the headline)."""

    model: str
    numbers: dict[str, Number]
    counts: dict[str, int]  # questions / games decided, invalid replies dropped, ...
    step: int | None = None


@dataclass(frozen=True, kw_only=True)
class LengthPoint:
    """One judged question of a pairwise benchmark: the candidate's preference and the length difference."""

    model: str
    length_delta: int  # len(candidate) - len(other), characters
    preference: float  # 1 candidate preferred, 0 the other, 0.5 tie (both orders averaged)


@dataclass(frozen=True, kw_only=True)
class BenchmarkResult:
    """A benchmark's leaderboard (see the module docstring)."""

    name: str
    kind: str
    headline: str  # the name of each row's first number
    interval: str  # how intervals were computed, for the report
    rows: tuple[ModelRow, ...]
    points: tuple[LengthPoint, ...] = ()
    notes: tuple[str, ...] = ()
    judge: dict[str, float] = field(default_factory=dict)  # the judge's counts and speed

    def metrics(self) -> dict[str, float]:
        """bench/<name>/<model>/<number> (and _low / _high), bench/<name>/<model>/<count>."""
        out = {}
        for row in self.rows:
            prefix = f"bench/{self.name}/{row.model}"
            for key, number in row.numbers.items():
                out |= {f"{prefix}/{key}": number.value, f"{prefix}/{key}_low": number.low, f"{prefix}/{key}_high": number.high}
            out |= {f"{prefix}/{key}": float(count) for key, count in row.counts.items()}
        return out | {f"bench/{self.name}/judge/{key}": value for key, value in self.judge.items()}
