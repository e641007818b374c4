"""Evaluation signals that need no judge, and the judge's discrimination."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from icon2.core.errors import InputError
from icon2.evaluate.signals import (
    HeldOut,
    common_held_out,
    held_out,
    held_out_reward,
    judge_discrimination,
    judge_free_signals,
    reward_accuracy,
    signals_line,
)
from icon2.model.logprobs import response_logps


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


def test_common_held_out_pools_every_methods_validation_pairs() -> None:
    a = _pairs([("validation", "s", "q1", "c1", "r1"), ("train", "s", "q0", "c0", "r0")])
    b = _pairs([("validation", "s", "q2", "c2", "r2"), ("validation", "s", "q1", "c1", "r1")])
    held = common_held_out({"a": a, "b": b})
    assert held == HeldOut(["q1", "q2"], ["c1", "c2"], ["r1", "r2"], "s", ["a", "b"])
    # q1 counted once, under the first table that has it.
    # The same set whatever method is being scored: the order of the tables only orders it.
    assert sorted(common_held_out({"b": b, "a": a}).user) == sorted(held.user)
    with pytest.raises(InputError, match="common held-out set is empty"):
        common_held_out({"a": _pairs([("train", "s", "q", "c", "r")])})
    c = _pairs([("validation", "other", "q3", "c3", "r3")])
    with pytest.raises(InputError, match="different system prompts"):
        common_held_out({"a": a, "c": c})


def _nudged(model_dir: Any, scale: float) -> Any:
    """A copy of the tiny model whose LM head is perturbed (seeded): another policy."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w.add_(scale * torch.randn(w.shape, generator=g))
    return model


def test_held_out_reward_equals_a_hand_computation_and_flips_with_a_swap(
    tiny_model: Any, tiny_model_dir: Any
) -> None:
    base, tok = tiny_model
    trained = _nudged(tiny_model_dir, 0.5)
    held = HeldOut(
        ["Name a prime.", "Capital of France?", "Say hi.", "Sort a list."],
        ["2.", "Paris.", "Hello there!", "Use sorted()."],
        ["4.", "Rome is.", "No.", "By hand, slowly."],
        None,
    )
    kw: dict[str, Any] = {"beta": 0.1, "batch_size": 2, "seed": 0, "resamples": 500}
    out = held_out_reward(trained, base, tok, held, **kw)
    logp = {
        (name, side): response_logps(m, tok, held.user, ys, batch_size=2)[0].numpy()
        for name, m in (("t", trained), ("b", base))
        for side, ys in (("c", held.chosen), ("r", held.rejected))
    }
    margin = 0.1 * ((logp["t", "c"] - logp["b", "c"]) - (logp["t", "r"] - logp["b", "r"]))
    assert out["reward_accuracy"] == pytest.approx(float(np.mean(margin > 0)))
    assert out["reward_margin"] == pytest.approx(float(margin.mean()))
    assert out["reward_margin_low"] <= out["reward_margin"] <= out["reward_margin_high"]
    assert 0 < out["reward_accuracy"] < 1  # the case can tell a swap apart
    swapped = HeldOut(held.user, held.rejected, held.chosen, None)
    flipped = held_out_reward(trained, base, tok, swapped, **kw)
    assert flipped["reward_accuracy"] == pytest.approx(1 - out["reward_accuracy"])
    assert flipped["reward_margin"] == pytest.approx(-out["reward_margin"])
    # Roles swapped (the starting model scored against the trained one): the margin flips.
    roles = held_out_reward(base, trained, tok, held, **kw)
    assert roles["reward_margin"] == pytest.approx(-out["reward_margin"])


def test_held_out_reward_by_source_splits_the_pool(tiny_model: Any, tiny_model_dir: Any) -> None:
    """Each source's accuracy is the hand-computed share on its own rows; relabelled rows
    move their wins with them."""
    base, tok = tiny_model
    trained = _nudged(tiny_model_dir, 0.5)
    user = ["Name a prime.", "Capital of France?", "Say hi.", "Sort a list.", "Count to 3."]
    chosen = ["2.", "Paris.", "Hello there!", "Use sorted().", "1, 2, 3."]
    rejected = ["4.", "Rome is.", "No.", "By hand, slowly.", "3, 2, 1."]
    kw: dict[str, Any] = {"beta": 0.1, "batch_size": 2, "seed": 0, "resamples": 200}
    whole = held_out_reward(trained, base, tok, HeldOut(user, chosen, rejected, None), **kw)
    assert "by_source" not in whole  # unnamed rows: no split
    logp = {
        (name, side): response_logps(m, tok, user, ys, batch_size=2)[0].numpy()
        for name, m in (("t", trained), ("b", base))
        for side, ys in (("c", chosen), ("r", rejected))
    }
    won = (logp["t", "c"] - logp["b", "c"]) - (logp["t", "r"] - logp["b", "r"]) > 0
    for labels in (["x", "x", "y", "y", "y"], ["y", "x", "x", "y", "x"]):
        named = HeldOut(user, chosen, rejected, None, labels)
        out = held_out_reward(trained, base, tok, named, **kw)
        assert out["reward_accuracy"] == whole["reward_accuracy"]
        split = out["by_source"]
        assert list(split) == list(dict.fromkeys(labels))  # in order of first appearance
        for name in ("x", "y"):
            mine = np.array(labels) == name
            assert split[name]["pairs"] == int(mine.sum())
            assert split[name]["reward_accuracy"] == pytest.approx(float(won[mine].mean()))
            low, high = split[name]["reward_accuracy_low"], split[name]["reward_accuracy_high"]
            assert low <= split[name]["reward_accuracy"] <= high
    assert won[:2].mean() != won[2:].mean()  # the case can tell the two labellings apart


def test_signals_of_a_model_against_itself(tiny_model: Any) -> None:
    model, tok = tiny_model
    held = HeldOut(["Name a prime."], ["2."], ["4."], None)
    kw: dict[str, Any] = {"beta": 0.1, "batch_size": 2, "seed": 0, "resamples": 200}
    assert held_out_reward(model, model, tok, HeldOut([], [], [], None), **kw) == {}
    out = judge_free_signals(model, model, tok, held=held, tie_rate=0.25, **kw)
    # π = π_ref: every implicit reward is 0, no pair is won.
    assert out == {
        "held_out_pairs": 1,
        "reward_accuracy": 0.0,
        "reward_accuracy_low": 0.0,
        "reward_accuracy_high": 0.0,
        "reward_margin": 0.0,
        "reward_margin_low": 0.0,
        "reward_margin_high": 0.0,
        "judge_discrimination": 0.75,
    }
    assert signals_line(out) == (
        "signals: held-out reward accuracy 0.000 [0.000, 0.000] on 1 pairs, "
        "judge discrimination 0.750"
    )
    no_pairs = {k: v for k, v in out.items() if not k.startswith("reward")}
    assert "reward accuracy n/a" in signals_line(no_pairs)
