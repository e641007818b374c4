"""Bootstrap confidence intervals for the mean of per-item values (scipy's bootstrap)."""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap


def mean_ci(
    values: np.ndarray, *, seed: int, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile-bootstrap interval.

    Items are resampled with replacement ``resamples`` times (seeded, so the interval is
    reproducible). Degenerate cases: all values equal (or n = 1) → low = high = the mean,
    since no resample differs; no value → ValueError.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    mean = float(v.mean())
    if v.size == 1 or bool(np.all(v == v[0])):
        return mean, mean, mean
    res = bootstrap(
        (v,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)
