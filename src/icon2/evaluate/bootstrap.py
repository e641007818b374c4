"""Bootstrap confidence intervals for a mean (scipy's, seeded), shared by the evaluations."""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap


def mean_ci(
    values: np.ndarray, *, seed: int, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) of ``values`` [n]: a percentile bootstrap interval.

    The percentile method, not BCa: the values here are often 0/1 outcomes, where BCa's
    jackknife acceleration is undefined whenever the leave-one-out means coincide.
    Degenerate samples get no resampling: when every value is equal (n == 1 included) the
    interval is (v, v), the only value any resample can have.

    Raises:
        ValueError: ``values`` is empty or not finite, or ``level`` / ``resamples`` out of range.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    if not np.isfinite(x).all():
        raise ValueError("mean_ci: values must be finite")
    if not 0.0 < level < 1.0:
        raise ValueError(f"mean_ci: level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"mean_ci: resamples must be >= 1, got {resamples}")
    mean = float(x.mean())
    if np.all(x == x[0]):
        return mean, mean, mean
    res = bootstrap(
        (x,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return mean, float(low), float(high)
