"""Win/tie/loss rates, per-group breakdown and the length-controlled win rate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from icon2.evaluate.winrate import summarize


def test_rates_and_alpacaeval_convention() -> None:
    # wins: 0.9, 0.6; ties (|p − 0.5| ≤ 0.05): 0.5, 0.55, 0.45; losses: 0.1
    p = np.array([0.9, 0.6, 0.5, 0.55, 0.45, 0.1])
    lens = np.full(6, 10.0)
    out = summarize(p, lens, lens)
    assert out["n"] == 6
    assert out["strict_win_rate"] == pytest.approx(2 / 6)
    assert out["tie_rate"] == pytest.approx(3 / 6)
    assert out["loss_rate"] == pytest.approx(1 / 6)
    assert out["win_rate"] == pytest.approx((2 + 0.5 * 3) / 6)
    assert out["mean_preference"] == pytest.approx(p.mean())
    assert out["mean_len_first"] == out["mean_len_second"] == 10.0
    assert "by_group" not in out


def test_tie_margin_zero_and_lengths() -> None:
    p = np.array([0.51, 0.5, 0.49])
    out = summarize(p, np.array([1.0, 2.0, 3.0]), np.array([4.0, 4.0, 4.0]), tie_margin=0.0)
    assert (out["strict_win_rate"], out["tie_rate"], out["loss_rate"]) == pytest.approx(
        (1 / 3, 1 / 3, 1 / 3)
    )
    assert out["mean_len_first"] == pytest.approx(2.0)
    assert out["mean_len_second"] == pytest.approx(4.0)


def test_by_group() -> None:
    p = np.array([0.9, 0.8, 0.5, 0.1])
    lens = np.ones(4)
    out = summarize(p, lens, lens, groups=["honest", "honest", "helpful", "helpful"])
    assert set(out["by_group"]) == {"honest", "helpful"}
    honest, helpful = out["by_group"]["honest"], out["by_group"]["helpful"]
    assert honest == {
        "n": 2,
        "win_rate": 1.0,
        "tie_rate": 0.0,
        "mean_preference": pytest.approx(0.85),
    }
    assert helpful["n"] == 2
    assert helpful["win_rate"] == pytest.approx(0.25)  # one tie, one loss
    assert helpful["tie_rate"] == pytest.approx(0.5)
    assert helpful["mean_preference"] == pytest.approx(0.3)


def test_length_driven_preference_is_controlled() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    len_second = rng.integers(50, 150, n).astype(float)
    # The trained model mostly writes longer answers, and the judge only rewards length.
    len_first = len_second + rng.normal(40.0, 40.0, n)
    diff = len_first - len_second
    p = expit(2.0 * np.tanh(diff / diff.std()))
    out = summarize(p, len_first, len_second)
    assert abs(out["win_rate"] - 0.5) > 0.2
    assert out["lc_win_rate"] == pytest.approx(0.5, abs=0.03)
    assert out["lc_coef_length"] == pytest.approx(2.0, abs=0.2)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.73])
def test_constant_preference_gives_lc_equal_to_it(c: float) -> None:
    rng = np.random.default_rng(1)
    len_first = rng.integers(10, 300, 500).astype(float)
    len_second = rng.integers(10, 300, 500).astype(float)
    out = summarize(np.full(500, c), len_first, len_second)
    assert out["lc_win_rate"] == pytest.approx(c, abs=1e-3)
    assert out["lc_coef_length"] == pytest.approx(0.0, abs=1e-2)


def test_equal_lengths_and_hard_labels_stay_finite() -> None:
    # Zero spread of length differences (s = 1) and 0/1 outcomes must not break the fit.
    p = np.array([1.0, 1.0, 0.0, 1.0])
    out = summarize(p, np.full(4, 5.0), np.full(4, 5.0))
    assert out["lc_win_rate"] == pytest.approx(0.75, abs=1e-3)
    assert np.isfinite(out["lc_coef_length"])


def test_errors() -> None:
    one = np.array([0.5])
    with pytest.raises(ValueError, match="n = 0"):
        summarize(np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="differ in length"):
        summarize(np.array([0.5, 0.6]), one, one)
    with pytest.raises(ValueError, match="differ in length"):
        summarize(one, one, one, groups=["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        summarize(np.array([1.5]), one, one)
    with pytest.raises(ValueError, match="tie_margin"):
        summarize(one, one, one, tie_margin=0.5)


def test_win_rate_interval_known_answers_and_swap() -> None:
    n = 40
    lengths = np.full(n, 10.0)
    ties = summarize(np.full(n, 0.5), lengths, lengths)
    assert (ties["win_rate_low"], ties["win_rate_high"]) == (0.5, 0.5)  # every resample ties
    # 30 clear wins and 10 clear losses: 0.75, its interval above 0.5.
    p = np.array([0.9] * 30 + [0.1] * 10)
    won = summarize(p, lengths, lengths)
    assert won["win_rate"] == 0.75
    assert 0.5 < won["win_rate_low"] < 0.75 < won["win_rate_high"] <= 1.0
    # The same judgements seen from the other model: the interval mirrors below 0.5.
    lost = summarize(1.0 - p, lengths, lengths)
    assert lost["win_rate_high"] < 0.5
    assert lost["win_rate_low"] == pytest.approx(1.0 - won["win_rate_high"], abs=0.03)
