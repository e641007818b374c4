"""Evaluation signals that need no judge, and the judge's discrimination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icon2.evaluate.signals import (
    direction_shift,
    judge_discrimination,
    projections,
    reward_accuracy,
    summarize_shift,
)


def test_reward_accuracy_counts_strict_wins() -> None:
    pc, pr = np.array([-10.0, -10.0, -5.0, -7.0]), np.array([-12.0, -9.0, -5.0, -7.0])
    rc, rr = np.array([-11.0, -10.0, -5.0, -6.0]), np.array([-11.0, -10.0, -5.0, -6.0])
    # margins: β[(+1) − (−1)] = 0.2, β[0 − 1] = −0.1, 0, β[−1 − (−1)] = 0
    out = reward_accuracy(pc, pr, rc, rr, beta=0.1)
    assert out["reward_accuracy"] == 0.25 and out["reward_ties"] == 0.5
    assert out["reward_margin"] == pytest.approx((0.2 - 0.1) / 4)
    start = reward_accuracy(rc, rr, rc, rr, beta=0.1)  # the starting model: r ≡ 0
    assert start["reward_accuracy"] == 0.0 and start["reward_ties"] == 1.0
    with pytest.raises(ValueError, match="four"):
        reward_accuracy(pc, pr[:2], rc, rr, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        reward_accuracy(pc, pr, rc, rr, beta=0.0)


def test_projection_is_layer_mean_of_scaled_dot_products() -> None:
    torch.manual_seed(0)
    states = torch.randn(5, 3, 8)
    dirs = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    scale = torch.tensor([1.0, 2.0, 4.0])
    got = projections(states, dirs, scale)
    want = [
        sum(float(states[i, k] @ dirs[k]) / float(scale[k]) for k in range(3)) / 3 for i in range(5)
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not match"):
        projections(states, dirs[:2])
    with pytest.raises(ValueError, match="positive"):
        projections(states, dirs, torch.zeros(3))


def test_direction_shift_of_a_pushed_copy() -> None:
    torch.manual_seed(1)
    base = torch.randn(10, 2, 4)
    u = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    trained = base + 0.5 * u  # every answer moved half a unit along u at every layer
    shift = direction_shift({"honesty": projections(trained, u)}, {"honesty": projections(base, u)})
    assert shift["honesty"]["shift"] == pytest.approx(0.5)
    assert shift["honesty"]["share_up"] == 1.0
    assert summarize_shift(shift)["direction_shift"] == pytest.approx(0.5)


def test_judge_discrimination_matches_the_tie_rule() -> None:
    p = np.array([0.5, 0.52, 0.56, 0.3, 0.5])
    assert judge_discrimination(p, tie_margin=0.05) == pytest.approx(2 / 5)
    assert judge_discrimination(np.full(32, 0.5), tie_margin=0.05) == 0.0  # a blind judge
    with pytest.raises(ValueError):
        judge_discrimination(np.array([]), tie_margin=0.05)
