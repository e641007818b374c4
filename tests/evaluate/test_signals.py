"""Evaluation signals that need no judge, and the judge's discrimination."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from icon2.core.errors import InputError
from icon2.evaluate.signals import (
    HeldOut,
    answer_states,
    direction_shift,
    held_out,
    held_out_reward,
    judge_discrimination,
    judge_free_signals,
    projections,
    read_answers,
    reward_accuracy,
    signals_line,
    summarize_shift,
)
from icon2.steps.direction_file import DirectionFile
from icon2.steps.directions import CriterionDirections


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


def _pairs(rows: list[tuple[str, str | None, str, str, str]]) -> pl.DataFrame:
    """(split, system, user, chosen, rejected) rows as a pair table."""
    return pl.DataFrame(
        {
            "split": [r[0] for r in rows],
            "prompt": [
                ([] if r[1] is None else [{"role": "system", "content": r[1]}])
                + [{"role": "user", "content": r[2]}]
                for r in rows
            ],
            "chosen": [[{"role": "assistant", "content": r[3]}] for r in rows],
            "rejected": [[{"role": "assistant", "content": r[4]}] for r in rows],
        }
    )


def test_held_out_reads_the_validation_split() -> None:
    held = held_out(
        _pairs(
            [
                ("train", "s", "q0", "c0", "r0"),
                ("validation", "s", "q1", "c1", "r1"),
                ("validation", "s", "q2", "c2", "r2"),
            ]
        )
    )
    assert held == HeldOut(["q1", "q2"], ["c1", "c2"], ["r1", "r2"], "s")
    assert held_out(_pairs([("train", None, "q", "c", "r")])) == HeldOut([], [], [], None)
    with pytest.raises(InputError, match="several system prompts"):
        held_out(_pairs([("validation", "a", "q", "c", "r"), ("validation", None, "q", "c", "r")]))


def test_read_answers_refuses_an_empty_sample_file(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"instruction": "q", "trained": "a", "base": "b"}) + "\n\n")
    assert read_answers(path) == [{"instruction": "q", "trained": "a", "base": "b"}]
    path.write_text("\n")
    with pytest.raises(InputError, match=r"no answers to read; raise evaluate\.samples"):
        read_answers(path)


def _dfile(d: int = 64) -> DirectionFile:
    torch.manual_seed(0)
    crit = {
        c: CriterionDirections(
            direction=torch.nn.functional.normalize(torch.randn(3, d), dim=1),
            evr=torch.ones(3),
            contrastive_norm=torch.tensor([1.0, 2.0, 4.0]),
            hidden_norm=torch.ones(3),
            mean_projection=torch.zeros(3),
        )
        for c in ("honesty", "general")
    }
    return DirectionFile(layers=[1, 2, 3], criteria=crit, meta={})


def test_signals_of_a_model_against_itself(tiny_model: Any) -> None:
    model, tok = tiny_model
    held = HeldOut(["Name a prime."], ["2."], ["4."], None)
    assert (
        held_out_reward(model, model, tok, HeldOut([], [], [], None), beta=0.1, batch_size=2) == {}
    )
    assert held_out_reward(model, model, tok, held, beta=0.1, batch_size=2) == {
        "reward_accuracy": 0.0,  # π = π_ref: every implicit reward is 0, no pair is won
        "reward_margin": 0.0,
    }
    answers = [
        {"instruction": "Say hello.", "trained": "Hello!", "base": "Hello!"},
        {"instruction": "Sort a list.", "trained": "sorted()", "base": "sorted()"},
    ]
    states = answer_states(model, tok, answers, "trained", layers=[2, 3], system="s", batch_size=2)
    assert states.shape == (2, 2, 64)
    out = judge_free_signals(
        model,
        model,
        tok,
        held=held,
        answers=answers,
        dfile=_dfile(),
        layers=[2, 3],
        tie_rate=0.25,
        beta=0.1,
        system="s",
        batch_size=2,
    )
    # The same answers re-read by the same model: no shift.
    assert out == {
        "held_out_pairs": 1,
        "reward_accuracy": 0.0,
        "reward_margin": 0.0,
        "answers": 2,
        "direction_shift": 0.0,
        "direction_shift_honesty": 0.0,
        "direction_shift_general": 0.0,
        "judge_discrimination": 0.75,
    }
    assert signals_line(out) == (
        "signals: held-out reward accuracy 0.000, direction shift +0.0000, "
        "judge discrimination 0.750"
    )
    no_pairs = {k: v for k, v in out.items() if not k.startswith("reward")}
    assert "reward accuracy n/a" in signals_line(no_pairs)


def test_direction_shift_reads_both_answers_with_the_starting_model(tiny_model: Any) -> None:
    model, tok = tiny_model
    answers = [
        {"instruction": "Say hello.", "trained": "Hello there, friend!", "base": "Hi."},
        {"instruction": "Sort a list.", "trained": "Use sorted().", "base": "No."},
    ]
    dfile, layers = _dfile(), [1, 3]
    out = judge_free_signals(
        model,
        model,
        tok,
        held=HeldOut([], [], [], None),
        answers=answers,
        dfile=dfile,
        layers=layers,
        tie_rate=1.0,
        beta=0.1,
        system=None,
        batch_size=1,
    )
    assert "reward_accuracy" not in out and out["judge_discrimination"] == 0.0
    u = dfile.criteria["honesty"].direction[[0, 2]]
    s = dfile.criteria["honesty"].contrastive_norm[[0, 2]]
    read = {
        k: answer_states(model, tok, answers, k, layers=layers, system=None, batch_size=1)
        for k in ("trained", "base")
    }
    want = (projections(read["trained"], u, s) - projections(read["base"], u, s)).mean()
    assert out["direction_shift_honesty"] == pytest.approx(float(want)) != 0.0
