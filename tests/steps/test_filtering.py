from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from icon2.core.errors import InputError
from icon2.steps.filtering import apply_filter, split
from icon2.steps.scoring import score_table


def _frame() -> pl.DataFrame:
    """Six rows; ids d and b tie on consistency 2.0, criterion c is never chosen."""
    return pl.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f"],
            "raw_x": [5.0, 2.0, 1.0, 0.0, 3.0, 0.5],
            "raw_y": [0.0, 0.0, 0.0, 2.0, 0.0, 0.0],
            "raw_z": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "criterion": ["x", "x", "x", "y", "x", "x"],
            "consistency": [5.0, 2.0, 1.0, 2.0, 3.0, 0.5],
            "margin": [5.0, 0.2, 1.0, 2.0, 0.1, 0.5],
        }
    )


def test_threshold_keeps_at_or_above_value_sorted() -> None:
    kept, counts = apply_filter(_frame(), rule="threshold", value=2.0)
    assert kept["id"].to_list() == ["a", "e", "b", "d"]  # 2.0 tie broken by id
    assert counts == {
        "scored": 6,
        "after_threshold": 4,
        "kept": 4,
        "kept_x": 3,
        "kept_y": 1,
        "kept_z": 0,
    }
    assert kept.columns == _frame().columns


def test_top_k_breaks_ties_by_id_whatever_the_input_order() -> None:
    frame = _frame()
    for seed in range(5):
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
        kept, counts = apply_filter(shuffled, rule="top_k", value=3)
        assert kept["id"].to_list() == ["a", "e", "b"]  # b beats d on the 2.0 tie
        assert counts["after_top_k"] == 3
    kept, _ = apply_filter(frame, rule="top_k", value=100)
    assert kept.height == 6


def test_top_fraction_uses_ceil_and_keeps_at_least_one() -> None:
    kept, counts = apply_filter(_frame(), rule="top_fraction", value=0.5)
    assert kept["id"].to_list() == ["a", "e", "b"]
    assert counts["after_top_fraction"] == 3
    kept, _ = apply_filter(_frame(), rule="top_fraction", value=0.34)  # ceil(2.04) = 3
    assert kept.height == 3
    kept, _ = apply_filter(_frame(), rule="top_fraction", value=0.01)
    assert kept["id"].to_list() == ["a"]
    kept, _ = apply_filter(_frame(), rule="top_fraction", value=1.0)
    assert kept.height == 6


def test_top_fraction_ignores_float_noise() -> None:
    frame = pl.DataFrame(
        {"id": [f"i{k:02d}" for k in range(30)], "raw_x": [float(k) for k in range(30)]}
    ).with_columns(criterion=pl.lit("x"), consistency=pl.col("raw_x"), margin=pl.lit(math.inf))
    kept, _ = apply_filter(frame, rule="top_fraction", value=0.1)  # 0.1 * 30 = 3.0000000000000004
    assert kept.height == 3


def test_margin_rule_applies_after_the_main_rule() -> None:
    kept, counts = apply_filter(_frame(), rule="top_k", value=4, min_margin=0.5)
    assert kept["id"].to_list() == ["a", "d"]  # e (0.1) and b (0.2) dropped
    assert counts["after_top_k"] == 4
    assert counts["after_margin"] == 2
    assert counts["kept"] == 2
    assert (counts["kept_x"], counts["kept_y"], counts["kept_z"]) == (1, 1, 0)
    _, plain = apply_filter(_frame(), rule="top_k", value=4)
    assert "after_margin" not in plain


def test_empty_threshold_names_the_rule() -> None:
    msg = r"filter\.rule=threshold with filter\.value=7\.5 keeps 0 of 6 .*max consistency 5"
    with pytest.raises(InputError, match=msg):
        apply_filter(_frame(), rule="threshold", value=7.5)


def test_empty_margin_names_min_margin_and_preceding_rule() -> None:
    msg = r"filter\.min_margin=0\.3 removed all 2 instructions left after top_k .*margin 0\.2"
    with pytest.raises(InputError, match=msg):
        apply_filter(_frame().filter(pl.col("id").is_in(["b", "e"])), rule="top_k", value=2,
                     min_margin=0.3)  # fmt: skip


def test_filter_validation_errors() -> None:
    for rule, value in [("top_fraction", 0.0), ("top_fraction", 1.5), ("top_k", 0)]:
        with pytest.raises(ValueError, match=r"filter\.value"):
            apply_filter(_frame(), rule=rule, value=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"filter\.rule"):
        apply_filter(_frame(), rule="best", value=1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="margin"):
        apply_filter(_frame().drop("margin"), rule="top_k", value=1)


def test_filter_on_score_table_output() -> None:
    scores = {"p": torch.tensor([1.0, 4.0, 2.0]), "q": torch.tensor([3.0, 0.0, 2.5])}
    table = score_table(["u", "v", "w"], ["t"] * 3, scores, standardise=False)
    kept, counts = apply_filter(table, rule="top_k", value=2)
    assert kept["id"].to_list() == ["v", "u"]
    assert (counts["kept_p"], counts["kept_q"]) == (1, 1)


def _ids(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"id{k}" for k in range(n)], "x": list(range(n))})


def test_split_is_deterministic_order_independent_and_keeps_row_order() -> None:
    frame = _ids(200)
    a = split(frame, validation_fraction=0.1, seed=7)
    b = split(frame, validation_fraction=0.1, seed=7)
    assert a.equals(b)
    assert a.drop("split").equals(frame)  # row order and columns untouched
    assert a["split"].dtype == pl.String
    assert a["split"].value_counts().sort("split").rows() == [("train", 180), ("validation", 20)]
    shuffled = split(frame.sample(fraction=1.0, shuffle=True, seed=1), validation_fraction=0.1,
                     seed=7)  # fmt: skip
    assert shuffled.sort("x").equals(a)
    other = split(frame, validation_fraction=0.1, seed=8)
    assert not other["split"].equals(a["split"])


def test_split_proportions_and_edge_cases() -> None:
    assert (
        split(_ids(10), validation_fraction=0.3, seed=0)["split"].to_list().count("validation") == 3
    )
    assert (split(_ids(10), validation_fraction=0.0, seed=0)["split"] == "train").all()
    # A tiny fraction still gives one validation row; a large one still leaves a train row.
    assert (
        split(_ids(5), validation_fraction=0.01, seed=0)["split"].to_list().count("validation") == 1
    )
    assert split(_ids(2), validation_fraction=0.9, seed=0)["split"].to_list().count("train") == 1
    assert split(_ids(1), validation_fraction=0.5, seed=0)["split"].to_list() == ["train"]
    assert split(_ids(0), validation_fraction=0.5, seed=0).height == 0


def test_split_validation_errors() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="validation_fraction"):
            split(_ids(4), validation_fraction=bad, seed=0)
    with pytest.raises(ValueError, match="unique"):
        split(pl.DataFrame({"id": ["a", "a"]}), validation_fraction=0.5, seed=0)
