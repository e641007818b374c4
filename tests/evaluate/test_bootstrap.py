"""The seeded bootstrap interval of a mean (icon2.evaluate.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from icon2.evaluate.bootstrap import mean_ci


def test_the_interval_holds_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 30)
    large = rng.normal(1.0, 1.0, 1000)
    m_s, lo_s, hi_s = mean_ci(small, seed=0)
    m_l, lo_l, hi_l = mean_ci(large, seed=0)
    assert lo_s < m_s < hi_s and lo_l < m_l < hi_l
    assert m_s == pytest.approx(small.mean()) and m_l == pytest.approx(large.mean())
    # The standard error shrinks as 1/sqrt(n): 30 -> 1000 values is ~5.8x narrower.
    assert 3.5 < (hi_s - lo_s) / (hi_l - lo_l) < 9.0
    # Near the normal interval mean ± 1.96 s / sqrt(n).
    se = large.std(ddof=1) / np.sqrt(large.size)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_seeded_and_the_level_widens_it() -> None:
    x = (np.arange(200) % 3 == 0).astype(float)  # 0/1 outcomes, mean 0.335
    assert mean_ci(x, seed=7) == mean_ci(x, seed=7)
    assert mean_ci(x, seed=7) != mean_ci(x, seed=8)
    _, lo90, hi90 = mean_ci(x, seed=7, level=0.90)
    _, lo99, hi99 = mean_ci(x, seed=7, level=0.99)
    assert lo99 < lo90 < x.mean() < hi90 < hi99


@pytest.mark.parametrize("values", [[0.0] * 50, [1.0] * 3, [0.25]])
def test_equal_values_give_a_point_interval(values: list[float]) -> None:
    v = values[0]
    assert mean_ci(np.array(values), seed=0) == (v, v, v)


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [
        ([], {}, "no values"),
        ([1.0, float("nan")], {}, "finite"),
        ([0.0, 1.0], {"level": 1.0}, "level"),
        ([0.0, 1.0], {"resamples": 0}, "resamples"),
    ],
)
def test_bad_arguments(values: list[float], kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mean_ci(np.array(values), seed=0, **kwargs)  # type: ignore[arg-type]
