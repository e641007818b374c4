from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from icon2.core.params import load_params
from icon2.evaluate.sensitivity import (
    compare_directions,
    feature_set_sensitivity,
    layer_cosines,
    mannwhitney_min_p,
    sensitivity_lines,
)
from icon2.steps.direction_file import DirectionFile
from icon2.steps.directions import extract


@pytest.mark.parametrize(("n_a", "n_b", "ties"), [(5, 6, False), (11, 11, False), (12, 9, True)])
def test_mannwhitney_matches_scipy_per_dimension(n_a: int, n_b: int, ties: bool) -> None:
    rng = np.random.default_rng(n_a)
    a = rng.normal(size=(n_a, 40))
    b = rng.normal(size=(n_b, 40))
    b[:, 3] += 3.0  # one dimension really differs
    if ties:
        a, b = np.round(a), np.round(b)
    p_min, dim, p = mannwhitney_min_p(a, b)
    loop = np.array(
        [mannwhitneyu(a[:, k], b[:, k], alternative="two-sided").pvalue for k in range(40)]
    )
    np.testing.assert_allclose(p, loop, rtol=1e-12, atol=0)
    assert p_min == loop.min() and dim == int(np.argmin(loop)) == 3


def test_mannwhitney_bad_shapes() -> None:
    with pytest.raises(ValueError, match="samples"):
        mannwhitney_min_p(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least one"):
        mannwhitney_min_p(np.zeros((0, 2)), np.zeros((3, 2)))


def test_cosines_and_summary_over_layers() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    b = a.clone()
    b[1] = -a[1]  # a flipped direction counts as -1, not +1
    b[2] = torch.nn.functional.normalize(a[2] + 0.1 * torch.randn(16), dim=0)
    cos = layer_cosines(a, b)
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(-1.0)
    per_layer, summary = compare_directions(
        {"honesty": a, "general": a}, {"honesty": b, "other": a}, [7, 8, 9, 10]
    )
    assert per_layer["layer"].to_list() == [7, 8, 9, 10]
    row = summary.row(0, named=True)
    assert row["criterion"] == "honesty" and summary.height == 1
    assert row["cosine_max"] == pytest.approx(1.0)
    assert row["cosine_min"] == pytest.approx(-1.0)
    # The flipped layer keeps its axis: |cos| is 1 there; layer 3 (noisy) has the smallest.
    assert row["flipped_layers"] == 1
    assert row["abs_cosine_min"] == pytest.approx(float(cos[2]))
    assert row["cosine_mean"] == pytest.approx(float(cos.mean()))
    assert row["mw_min_p_bonferroni"] == pytest.approx(min(1.0, 16 * row["mw_min_p"]))


def test_identical_sets_are_indistinguishable() -> None:
    a = torch.randn(6, 8)
    _, summary = compare_directions({"c": a}, {"c": a.clone()}, list(range(1, 7)))
    assert summary["cosine_min"][0] == pytest.approx(1.0)
    assert summary["mw_min_p"][0] == pytest.approx(1.0)


def test_compare_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="share no criterion"):
        compare_directions({"a": torch.zeros(2, 3)}, {"b": torch.zeros(2, 3)}, [1, 2])
    with pytest.raises(ValueError, match="layer rows"):
        compare_directions({"a": torch.ones(2, 3)}, {"a": torch.ones(2, 3)}, [1, 2, 3])


FEATURES = [
    "What is the capital of France?",
    "Write a poem about rain.",
    "How do I sort a list in Python?",
    "Give me three tips for sleeping better.",
    "Solve 12 * 7 + 3.",
    "Tell me a story about a dragon.",
]


def test_feature_set_sensitivity_against_a_reference(
    tiny_model: Any, write_params: Callable[..., Path]
) -> None:
    model, tok = tiny_model
    cfg = load_params(write_params({"directions": {"batch_size": 4}})).directions
    prompts = {
        c: (cfg.prompts[c].positive, cfg.prompts[c].negative) for c in ("honesty", "general")
    }
    dirs = extract(model, tok, FEATURES, prompts, layers=[1, 2, 3], batch_size=4)
    ref = DirectionFile(layers=[1, 2, 3], criteria=dirs, meta={"num_features": len(FEATURES)})
    metrics, table = feature_set_sensitivity(
        model, tok, ref, {"same": FEATURES, "half": FEATURES[:3]}, layers=[2, 3], cfg=cfg
    )
    assert metrics["reference_features"] == 6 and list(metrics) == [
        "reference_features",
        "same",
        "half",
    ]
    assert metrics["same"]["features"] == 6 and metrics["half"]["features"] == 3
    assert metrics["same"]["cosine_min"] == pytest.approx(1.0, abs=1e-5)  # the same features
    assert metrics["half"]["cosine_mean"] < 1.0 and 0.0 < metrics["half"]["mw_min_p"] <= 1.0
    assert table.columns == ["criterion", "layer", "cosine", "source", "series"]
    assert table.height == 2 * 2 * 2  # sources x criteria x layers
    assert set(table["series"]) == {f"{s}:{c}" for s in ("same", "half") for c in prompts}
    lines = sensitivity_lines(metrics, [2, 3])
    assert len(lines) == 2 and lines[0].startswith("sensitivity same (6 features, layers 2..3):")
    assert "Mann-Whitney min p" in lines[1]
    empty, frame = feature_set_sensitivity(model, tok, ref, {}, layers=[2, 3], cfg=cfg)
    assert empty == {"reference_features": 6} and frame.is_empty()
    assert sensitivity_lines(empty, [2, 3]) == []
