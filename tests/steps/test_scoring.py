from __future__ import annotations

import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from icon2.core.tables import score_schema
from icon2.steps.scoring import consistency, score_table


def test_consistency_matches_explicit_loops() -> None:
    g = torch.Generator().manual_seed(0)
    n, n_layers, d = 5, 3, 8
    states = torch.randn(n, n_layers, d, generator=g) * 4.0
    dirs = {c: F.normalize(torch.randn(n_layers, d, generator=g), dim=-1) for c in ("a", "b")}
    got = consistency(states, dirs)
    assert list(got) == ["a", "b"]
    for name, u in dirs.items():
        assert got[name].dtype == torch.float64
        assert got[name].shape == (n,)
        for i in range(n):
            total = 0.0
            for layer in range(n_layers):
                total += float(torch.dot(states[i, layer].double(), u[layer].double()))
            assert float(got[name][i]) == pytest.approx(total / n_layers, rel=1e-12, abs=1e-12)


def test_consistency_shape_errors_name_the_criterion() -> None:
    states = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"'helpful'.*\(2, 4\)"):
        consistency(states, {"ok": torch.zeros(3, 4), "helpful": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"'honest'"):
        consistency(states, {"honest": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match=r"\[n, L, d\]"):
        consistency(torch.zeros(3, 4), {"a": torch.zeros(3, 4)})


def test_argmax_consistency_and_margin_by_hand() -> None:
    scores = {
        "a": torch.tensor([1.0, 0.0, 2.0]),
        "b": torch.tensor([3.0, 0.5, 2.0]),
        "c": torch.tensor([2.0, -1.0, 0.0]),
    }
    t = score_table(["x", "y", "z"], ["i1", "i2", "i3"], scores, standardise=False)
    assert t["criterion"].to_list() == ["b", "b", "a"]  # z: a and b tie -> a comes first
    assert t["consistency"].to_list() == [3.0, 0.5, 2.0]
    assert t["margin"].to_list() == [1.0, 0.5, 0.0]
    assert t["raw_a"].to_list() == [1.0, 0.0, 2.0]
    assert t["standardised"].to_list() == [False] * 3


def test_standardised_columns_by_hand() -> None:
    scores = {"a": torch.tensor([1.0, 3.0]), "flat": torch.tensor([5.0, 5.0])}
    t = score_table(["x", "y"], ["i", "j"], scores, standardise=True)
    assert t["std_a"].to_list() == [-1.0, 1.0]  # mean 2, population std 1
    assert t["std_flat"].to_list() == [0.0, 0.0]  # zero spread -> 0 for every row
    assert t["criterion"].to_list() == ["flat", "a"]
    assert t["margin"].to_list() == [1.0, 1.0]


def test_standardise_flips_choice_when_one_criterion_has_larger_raw_scale() -> None:
    # A's raw scores are ~100x B's, so raw argmax always picks A. Row 0 is A's weakest
    # instruction but B's strongest: standardised, B wins there.
    scores = {
        "A": torch.tensor([100.0, 200.0, 300.0]),
        "B": torch.tensor([3.0, 2.0, 1.0]),
    }
    ids, texts = ["p", "q", "r"], ["t1", "t2", "t3"]
    raw = score_table(ids, texts, scores, standardise=False)
    std = score_table(ids, texts, scores, standardise=True)
    assert raw["criterion"][0] == "A"
    assert std["criterion"][0] == "B"
    assert std["consistency"][0] == pytest.approx(math.sqrt(1.5))  # (3 − 2) / sqrt(2/3)
    # Raw scores are kept either way; only the choice and its scale differ.
    assert raw["raw_A"].to_list() == std["raw_A"].to_list()
    assert std["standardised"].all() and not raw["standardised"].any()


def test_schema_and_column_order() -> None:
    scores = {"b": torch.tensor([1.0]), "a": torch.tensor([2.0])}
    t = score_table(["x"], ["i"], scores, standardise=False)
    want = score_schema(["b", "a"])
    assert t.schema == pl.Schema(want)
    assert t.columns == [
        "id",
        "instruction",
        "raw_b",
        "raw_a",
        "std_b",
        "std_a",
        "criterion",
        "consistency",
        "margin",
        "standardised",
    ]


def test_single_criterion_margin_is_infinite() -> None:
    t = score_table(["x", "y"], ["i", "j"], {"only": torch.tensor([1.0, 2.0])}, standardise=True)
    assert t["margin"].to_list() == [math.inf, math.inf]
    assert t["criterion"].to_list() == ["only", "only"]


def test_empty_set_gives_empty_table_with_schema() -> None:
    t = score_table([], [], {"a": torch.zeros(0), "b": torch.zeros(0)}, standardise=True)
    assert t.height == 0
    assert t.schema == pl.Schema(score_schema(["a", "b"]))


def test_score_table_input_errors() -> None:
    one = {"a": torch.tensor([1.0])}
    with pytest.raises(ValueError, match="at least one criterion"):
        score_table(["x"], ["i"], {}, standardise=False)
    with pytest.raises(ValueError, match="instructions"):
        score_table(["x"], [], one, standardise=False)
    with pytest.raises(ValueError, match="'a' has 1 scores for 2"):
        score_table(["x", "y"], ["i", "j"], one, standardise=False)
    with pytest.raises(ValueError, match="unique"):
        score_table(["x", "x"], ["i", "j"], {"a": torch.zeros(2)}, standardise=False)
    with pytest.raises(ValueError, match=r"non-finite.*'y'"):
        nan = {"a": torch.tensor([0.0, math.nan])}
        score_table(["x", "y"], ["i", "j"], nan, standardise=False)
