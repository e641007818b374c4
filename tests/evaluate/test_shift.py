"""Direction shift: answer-token projections, the paired shift and its CI, and a
known-answer case on a real (tiny) model whose swap or sign flip fails."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from icon2.evaluate.shift import (
    answer_shift,
    direction_shift,
    projections,
    shift_line,
    summarize_shift,
)
from icon2.model.states import answer_token_means
from icon2.steps.direction_file import CriterionDirections, DirectionFile


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


def _pushed(sign: float) -> dict[str, dict[str, float | None]]:
    torch.manual_seed(1)
    base = torch.randn(40, 2, 4)
    u = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    noise = 0.1 * torch.randn(40, 2, 4)
    trained = base + sign * 0.5 * u + noise  # every answer moved half a unit along ±u
    return direction_shift(
        {"honesty": projections(trained, u)}, {"honesty": projections(base, u)}, seed=0
    )


def test_a_push_along_plus_u_is_a_positive_shift_with_its_ci_above_zero() -> None:
    up, down = _pushed(+1.0)["honesty"], _pushed(-1.0)["honesty"]
    assert up["shift"] == pytest.approx(0.5, abs=0.05)
    assert up["shift_low"] > 0 and up["share_up"] > 0.9  # type: ignore[operator]
    assert down["shift"] == pytest.approx(-0.5, abs=0.05)
    assert down["shift_high"] < 0 and down["share_up"] < 0.1  # type: ignore[operator]
    # Spread units: the shift over the SD of the starting answers' projections.
    assert up["shift_sd"] == pytest.approx(up["shift"] / up["spread"])  # type: ignore[operator]
    head = summarize_shift(_pushed(+1.0))
    assert head["criteria_moved"] == 1 and head["direction_shift"] > 0
    assert summarize_shift(_pushed(-1.0))["criteria_moved"] == 0


def test_swapping_trained_and_starting_flips_the_shift() -> None:
    torch.manual_seed(2)
    t, b = torch.randn(30).double() + 0.3, torch.randn(30).double()
    fwd = direction_shift({"c": t}, {"c": b}, seed=0)["c"]
    rev = direction_shift({"c": b}, {"c": t}, seed=0)["c"]
    assert fwd["shift"] == pytest.approx(-rev["shift"])  # type: ignore[operator]
    assert fwd["share_up"] == pytest.approx(1 - rev["share_up"])  # type: ignore[operator]


def test_prompts_without_an_answer_token_are_left_out_and_one_prompt_has_no_spread() -> None:
    t = torch.tensor([1.0, float("nan"), 3.0], dtype=torch.float64)
    b = torch.tensor([0.0, 5.0, 1.0], dtype=torch.float64)
    out = direction_shift({"c": t}, {"c": b}, seed=0)["c"]
    assert out["n"] == 2 and out["shift"] == pytest.approx(1.5)
    one = direction_shift({"c": t[:1]}, {"c": b[:1]}, seed=0)["c"]
    assert one["shift"] == 1.0 and one["shift_sd"] is None
    assert "n/a" in shift_line({"c": one})
    none = direction_shift({"c": t[1:2]}, {"c": b[1:2]}, seed=0)
    assert none["c"]["n"] == 0 and none["c"]["shift"] is None
    assert summarize_shift(none) == {
        "direction_shift": None,
        "criteria_moved": 0,
        "direction_shift_c": None,
        "direction_shift_c_low": None,
        "direction_shift_c_high": None,
    }


QUESTIONS = ["Name a prime.", "Say hello.", "Sort a list.", "Capital of France?", "Add 2 and 2."]
HIGH = ["Two is prime.", "Hello there, friend!", "Use sorted().", "Paris.", "Four."]
LOW = ["Nine.", "Go away.", "I will not.", "Rome, obviously.", "Five, or so."]


def _dfile_along(model: Any, tok: Any, layers: list[int]) -> DirectionFile:
    """Directions pointing from the LOW answers' states to the HIGH answers' states, as
    the starting model reads them: HIGH projects higher than LOW by construction."""
    kw: dict[str, Any] = {"layers": layers, "system": None, "batch_size": 2}
    hi = answer_token_means(model, tok, QUESTIONS, HIGH, **kw).mean(0)
    lo = answer_token_means(model, tok, QUESTIONS, LOW, **kw).mean(0)
    u = torch.nn.functional.normalize(hi - lo, dim=1)
    n = len(layers)
    crit = {
        c: CriterionDirections(
            direction=sign * u,
            evr=torch.ones(n),
            contrastive_norm=torch.full((n,), 2.0),
            hidden_norm=torch.ones(n),
            mean_projection=torch.zeros(n),
        )
        for c, sign in (("honesty", 1.0), ("harmlessness", -1.0))
    }
    return DirectionFile(layers=layers, criteria=crit, meta={})


def test_answer_shift_known_answer_on_a_model(tiny_model: Any) -> None:
    model, tok = tiny_model
    dfile = _dfile_along(model, tok, [1, 2, 3])
    kw: dict[str, Any] = {
        "dfile": dfile,
        "layers": [2, 3],
        "system": None,
        "batch_size": 2,
        "seed": 0,
        "resamples": 500,
    }
    up = answer_shift(model, tok, QUESTIONS, HIGH, LOW, **kw)
    # Trained answers HIGH against starting answers LOW: positive along +u ...
    assert up["honesty"]["shift"] > 0  # type: ignore[operator]
    # ... and negative along −u (a sign flip of the direction fails the first assert).
    assert up["harmlessness"]["shift"] == pytest.approx(-up["honesty"]["shift"])  # type: ignore[operator]
    # Trained and starting answers swapped: the shift changes sign.
    down = answer_shift(model, tok, QUESTIONS, LOW, HIGH, **kw)
    assert down["honesty"]["shift"] == pytest.approx(-up["honesty"]["shift"])  # type: ignore[operator]
    # The same answers on both sides: no shift.
    same = answer_shift(model, tok, QUESTIONS, HIGH, HIGH, **kw)
    assert same["honesty"]["shift"] == 0.0
    assert "honesty +" in shift_line(up) and "5 prompts" in shift_line(up)
