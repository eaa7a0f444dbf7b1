"""Small numeric helpers shared by the recipes' metrics and the analysis reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def nan_mean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the non-NaN values (the scored ones); NaN when there are none, without numpy's warning."""
    array = np.asarray(values, dtype=np.float64)
    kept = array[~np.isnan(array)]
    return float(kept.mean()) if kept.size else float("nan")
