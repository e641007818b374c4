"""A6: the layer ranges, the subsample and one run of the γ⁺ × γ⁻ × range grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from icon2.core.errors import ModelError
from icon2.core.params import load_params
from icon2.steps.grid import (
    layer_ranges,
    layer_thirds,
    projection_layers,
    run_grid,
    subsample,
)
from icon2.steps.selection import GRID_SCHEMA, SCORED_SCHEMA
from icon2.steps.selection_report import apply_command
from tests.steps.baselines.test_pairs import KEPT, StubBackend, StubScorer
from tests.steps.test_pairs import _dfile


def test_layer_thirds_and_ranges() -> None:
    assert layer_thirds(9) == {"early": [1, 2, 3], "middle": [3, 4, 5, 6], "late": [7, 8, 9]}
    dfile, path = _dfile(), Path("d.safetensors")
    assert layer_ranges(None, 3, dfile, path) == {"early": [1], "middle": [1, 2], "late": [3]}
    assert layer_ranges({"a": [3, 2]}, 3, dfile, path) == {"a": [2, 3]}
    with pytest.raises(ModelError, match=r"select\.layer_ranges\.a: .* not in d\.safetensors"):
        layer_ranges({"a": [4]}, 4, dfile, path)
    assert projection_layers(None, 3, dfile, path) == [1, 2]  # the middle third
    assert projection_layers([3], 3, dfile, path) == [3]
    with pytest.raises(ModelError, match=r"select\.projection_layers: .* not in d\.safetensors"):
        projection_layers([4], 4, dfile, path)


def test_subsample_draws_train_rows_in_id_order() -> None:
    kept = pl.DataFrame({"id": [f"k{i}" for i in range(9, -1, -1)], "split": ["train"] * 10})
    rows = subsample(kept, 4, seed=0)
    assert rows.height == 4 and rows["id"].to_list() == sorted(rows["id"].to_list())
    assert subsample(kept, 4, seed=0).equals(rows)
    assert subsample(KEPT, 10, seed=0)["id"].to_list() == ["a", "b"]  # the train split


@pytest.mark.parametrize("criterion", ["reward", "projection_gap"])
def test_run_grid_scores_every_cell_and_applies_the_rule(
    tiny_model: Any,
    write_params: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    criterion: str,
) -> None:
    model, tok = tiny_model
    select = {"gamma_pos": [0.1, 0.3], "gamma_neg": [-0.1], "max_new_tokens": 5}
    over = {
        "select": {**select, "criterion": criterion, "min_share": 0.0},
        "pairs": {"batch_size": 3},
        "baselines": {"batch_size": 2},
    }
    p = load_params(write_params(over))
    # Per range: rows γ index × 2 instructions; row 2 = (γ⁺ 0.3, "a") ends by length.
    backend = StubBackend(truncate=[2])
    made: dict[str, Any] = {}
    asked: dict[str, Any] = {}

    def make_backend(*args: Any, **kwargs: Any) -> StubBackend:
        made.update(kwargs)
        return backend

    def make_scorer(*args: Any, **kwargs: Any) -> StubScorer:
        asked.update(args=args, kwargs=kwargs)
        return StubScorer()

    monkeypatch.setattr("icon2.engines.make_backend", make_backend)
    monkeypatch.setattr("icon2.steps.grid.make_scorer", make_scorer)
    ranges = {"low": [1, 2], "high": [3]}
    run = run_grid(p, tmp_path, model, tok, "tiny", _dfile(), KEPT, ranges, [2])
    assert made == {"batch_size": 3, "steering": True}
    if criterion == "reward":
        assert asked["args"][2] == (model, tok, "tiny") and asked["kwargs"]["batch_size"] == 2
        assert run.scorer == "stub" and run.scored["chosen_reward"].null_count() == 0
    else:  # judge-free: no scorer is made, no reward read
        assert asked == {} and run.scorer is None
        assert run.scored["chosen_reward"].null_count() == run.scored.height
    assert len(backend.calls) == 2 and all(s.max_new_tokens == 5 for _, s in backend.calls)
    assert run.scored.schema == pl.Schema(SCORED_SCHEMA) and run.scored.height == 2 * 2 * 1 * 2
    assert run.cells.schema == pl.Schema(GRID_SCHEMA) and run.cells.height == 2 * 2
    # A4's rule: the truncated answer drops its pair in each range; only kept pairs are read.
    dropped = run.scored.filter(pl.col("drop_reason").is_not_null())
    assert dropped["drop_reason"].to_list() == ["truncated"] * 2
    assert (dropped["gamma_pos"].to_list(), dropped["id"].to_list()) == ([0.3] * 2, ["a"] * 2)
    assert dropped["chosen_projection"].null_count() == 2
    assert run.scored["chosen_projection"].null_count() == 2
    assert run.cells["dropped_truncated"].to_list() == [0, 1, 0, 1]
    assert run.cells["kept_share"].to_list() == [1.0, 0.5, 1.0, 0.5]
    assert run.instructions == 2 and run.projection_layers == [2]
    summary = run.summary()
    assert summary["criterion"] == criterion and summary["min_kept_fraction"] == 0.5
    assert summary["cells"] == 4 and summary["reason"] == run.reason
    assert summary["apply"] == apply_command(run.pick)
    assert summary["selected"] == (None if run.pick is None else run.pick.to_json())
    assert summary["settings"]["high:0.3:-0.1"]["kept"] == 1
    records = [m.record() for m in run.meters]
    assert [(r.stage, r.method) for r in records] == [("selection", "icon2 selection")] * 2
    assert records[0].tokens_generated == 3 * 2 * 3 * 2  # 3 tokens x rows x γs x ranges
    assert records[1].tokens_read > 0  # the kept answers re-read for their projections
