"""The harness's statistics: length-controlled win rate, Bradley-Terry scores, bootstrap intervals.

    lc = length_controlled_win_rate(preference, length_delta, difficulty, l2=0.2)   # AlpacaEval 2.0's idea
    ratings = bradley_terry(winner_a, loser_b, outcome, weight, n_models=3, anchor=0)
    low, high = bootstrap_quantiles(statistic, n_rows, rounds=100, seed=0, quantiles=(0.05, 0.95))

Pure numpy. Logistic fits are Newton's method on a soft-label log-likelihood with an L2 penalty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ELO_SCALE, ELO_BASE, ELO_ANCHOR = 400.0, 10.0, 1000.0  # arena-hard-auto's compute_mle_elo


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def fit_logistic(features: np.ndarray, targets: np.ndarray, *, weights: np.ndarray | None = None, l2: float = 0.0,
                 iterations: int = 50) -> np.ndarray:
    """Coefficients w [F] maximising sum_i weight_i * (t_i log s(x_i w) + (1 - t_i) log(1 - s(x_i w))) - l2/2 |w|^2.

    features [N, F]; targets [N] in [0, 1] (soft labels: a tie is 0.5); no intercept unless a column is ones."""
    x = np.asarray(features, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    w_rows = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=np.float64)
    coef = np.zeros(x.shape[1])
    ridge = l2 * np.eye(x.shape[1])
    for _ in range(iterations):
        p = _sigmoid(x @ coef)
        gradient = x.T @ (w_rows * (t - p)) - l2 * coef
        hessian = (x * (w_rows * p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(coef)), gradient)
        coef = coef + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return coef


@dataclass(frozen=True, kw_only=True)
class LengthControlled:
    """The length-controlled win rate of one model and its fitted GLM."""

    win_rate: float  # mean predicted preference with the length term at zero, in [0, 1]
    coef_model: float  # the model's intercept (logit)
    coef_length: float  # weight of tanh(standardised length difference)
    coef_difficulty: float  # weight of the instruction difficulty (0 when it is absent)


def length_controlled_win_rate(preference: np.ndarray, length_delta: np.ndarray, difficulty: np.ndarray | None = None,
                               *, l2: float = 0.2) -> LengthControlled:
    """AlpacaEval 2.0's length control (metrics/glm_winrate.py) on one model's questions.

    preference [Q]: P(candidate preferred over the reference) per question (ties 0.5, both orders averaged);
    length_delta [Q]: len(candidate) - len(reference), characters; difficulty [Q] or None: the question's
    difficulty. GLM logit = theta + phi * tanh(delta / std(delta)) + psi * difficulty, fitted with L2 ``l2``;
    the LC win rate is the mean prediction with the length term set to zero."""
    preference = np.asarray(preference, dtype=np.float64)
    delta = np.asarray(length_delta, dtype=np.float64)
    scale = delta.std(ddof=1) if len(delta) > 1 else 0.0
    standardised = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    columns = [np.ones_like(delta), standardised]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, dtype=np.float64))
    coef = fit_logistic(np.stack(columns, axis=1), preference, l2=l2)
    no_length = coef[0] + (coef[2] * columns[2] if difficulty is not None else 0.0)
    return LengthControlled(win_rate=float(np.mean(_sigmoid(np.broadcast_to(no_length, delta.shape)))),
                            coef_model=float(coef[0]), coef_length=float(coef[1]),
                            coef_difficulty=float(coef[2]) if difficulty is not None else 0.0)


def bradley_terry(model_a: Sequence[int], model_b: Sequence[int], outcome: Sequence[float], *, n_models: int,
                  anchor: int, weights: Sequence[float] | None = None, l2: float = 1e-4) -> np.ndarray:
    """Bradley-Terry ratings [n_models] on the Elo scale (400 points = 10x odds) with ``anchor`` fixed at 1000.

    One row per game: model_a, model_b (indices), outcome 1 (a won), 0 (b won), 0.5 (tie), an optional
    weight (a game counted several times). ``l2`` (per rating, logit scale) keeps a model that won every
    game finite. arena-hard-auto's compute_mle_elo: a tie is one win each way, which is this soft label."""
    a, b = np.asarray(model_a), np.asarray(model_b)
    free = [m for m in range(n_models) if m != anchor]
    column = {m: i for i, m in enumerate(free)}
    x = np.zeros((len(a), len(free)))
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        if i in column:
            x[row, column[i]] += 1.0
        if j in column:
            x[row, column[j]] -= 1.0
    coef = fit_logistic(x, np.asarray(outcome, dtype=np.float64), weights=None if weights is None else np.asarray(weights),
                        l2=l2) if free else np.zeros(0)
    ratings = np.full(n_models, ELO_ANCHOR)
    for m, i in column.items():
        ratings[m] = ELO_ANCHOR + ELO_SCALE * coef[i] / math.log(ELO_BASE)
    return ratings


def expected_score(rating: float | np.ndarray, against: float) -> float | np.ndarray:
    """Bradley-Terry win probability of ``rating`` against ``against`` (Elo scale)."""
    return 1.0 / (1.0 + ELO_BASE ** ((against - np.asarray(rating)) / ELO_SCALE))


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray | float], n_rows: int, *, rounds: int, seed: int) -> np.ndarray:
    """``statistic(row_indices)`` on ``rounds`` resamples of 0..n_rows-1 with replacement: [rounds, ...]."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(statistic(rng.integers(0, n_rows, size=n_rows)), dtype=np.float64) for _ in range(rounds)])


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its normal 95% interval); nan for no values, 0 half-width for one."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), 0.0
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))
