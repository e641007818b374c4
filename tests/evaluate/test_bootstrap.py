"""Bootstrap CIs of a mean: they hold the mean, narrow with n, repeat with the seed."""

from __future__ import annotations

import numpy as np
import pytest

from icon2.evaluate.bootstrap import mean_ci


def test_the_interval_holds_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    m, lo, hi = mean_ci(small, seed=0, resamples=1000)
    assert lo < m < hi and m == pytest.approx(small.mean())
    _, lo2, hi2 = mean_ci(large, seed=0, resamples=1000)
    assert hi2 - lo2 < (hi - lo) / 3
    assert lo2 < 1.0 < hi2  # the true mean
    assert mean_ci(small, seed=0, resamples=1000) == (m, lo, hi)  # seeded


def test_degenerate_and_bad_inputs() -> None:
    assert mean_ci(np.array([0.5, 0.5, 0.5]), seed=0) == (0.5, 0.5, 0.5)
    assert mean_ci(np.array([2.0]), seed=0) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="no values"):
        mean_ci(np.array([]), seed=0)
    with pytest.raises(ValueError, match="finite"):
        mean_ci(np.array([1.0, np.nan]), seed=0)
