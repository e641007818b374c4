"""The comparison pipeline's stages (comparison/dvc.yaml) on the tiny random model:
the four baselines, the App. J grid, the cost table, and their bad inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from icon2.core.tables import PAIR_SCHEMA, kept_schema, read_pairs, write_table
from icon2.steps.baselines.pairs import BASELINE_PAIR_SCHEMA
from tests.conftest import REPO, deep_update, run_stage
from tests.stages.test_directions import FEATURES

CRITERIA = ["honesty", "harmlessness", "helpfulness", "general"]


def _kept(path: Path, n: int = 8) -> Path:
    texts = FEATURES[:n]
    data: dict[str, Any] = {
        "id": [f"k{i}" for i in range(n)],
        "instruction": texts,
        **{f"raw_{c}": [0.0] * n for c in CRITERIA},
        **{f"std_{c}": [0.0] * n for c in CRITERIA},
        "criterion": [CRITERIA[i % 4] for i in range(n)],
        "consistency": [1.0] * n,
        "margin": [0.5] * n,
        "standardised": [True] * n,
        "split": ["validation" if i % 4 == 3 else "train" for i in range(n)],
    }
    schema = kept_schema(CRITERIA)
    write_table(path, pl.DataFrame(data, schema=schema), schema, {})
    return path


@pytest.fixture(scope="module")
def comp(tiny_stage_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("comparison")
    feats = root / "features.jsonl"
    feats.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in FEATURES))
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["directions"]["batch_size"] = 4
    # Sampling makes the random tiny model end its turn often enough to keep some pairs.
    data["pairs"].update(max_new_tokens=24, batch_size=16, temperature=1.0)
    data["baselines"].update(batch_size=16)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    r = run_stage(
        "directions",
        "--model-dir",
        tiny_stage_model,
        "--features",
        feats,
        "--params",
        params,
        "--out",
        root / "dir.safetensors",
        "--metrics",
        root / "dir.json",
        "--plots",
        root / "evr",
        "--cost",
        root / "dir_cost.json",
    )
    assert r.exit_code == 0, r.output
    # The ICON² stages record their cost too: directions is preference annotation (A8).
    (rec,) = json.loads((root / "dir_cost.json").read_text())["cost"]
    assert (rec["stage"], rec["method"], rec["category"]) == (
        "directions",
        "icon2",
        "preference annotation",
    )
    assert rec["wall_seconds"] > 0 and rec["tokens_read"] > 0 and rec["tokens_generated"] == 0
    return {
        "root": root,
        "data": data,
        "model": tiny_stage_model,
        "directions": root / "dir.safetensors",
        "kept": _kept(root / "kept.parquet"),
    }


def _params(comp: dict[str, Any], tmp_path: Path, over: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_update(comp["data"], over or {})))
    return path


def _baseline(comp: dict[str, Any], out: Path, method: str, params: Path) -> Any:
    return run_stage(
        "baselines",
        "--method",
        method,
        "--model-dir",
        comp["model"],
        "--kept",
        comp["kept"],
        "--out",
        out / "pairs.parquet",
        "--metrics",
        out / "metrics.json",
        "--cost",
        out / "cost.json",
        "--params",
        params,
    )


@pytest.mark.parametrize(
    "method", ["sampling_ranking", "self_rewarding", "self_refine", "direct_prompting"]
)
def test_baseline_writes_trainable_pairs_and_cost(
    comp: dict[str, Any], tmp_path: Path, method: str
) -> None:
    # Refined answers must end their turn too: give the random model room to stop.
    over = {"pairs": {"max_new_tokens": 64}} if method == "self_refine" else {}
    r = _baseline(comp, tmp_path, method, _params(comp, tmp_path, over))
    assert r.exit_code == 0, r.output
    pairs = pl.read_parquet(tmp_path / "pairs.parquet")
    assert pairs.schema == pl.Schema(BASELINE_PAIR_SCHEMA)
    assert {k: pairs.schema[k] for k in PAIR_SCHEMA} == PAIR_SCHEMA  # `train` takes it
    assert read_pairs(tmp_path / "pairs.parquet").height == pairs.height
    assert pairs["method"].unique().to_list() == [method]
    assert pairs["scorer"].n_unique() == 1
    if method == "sampling_ranking":  # no reward model configured: the judge's 1-9 rating
        assert pairs["scorer"][0].startswith("judge:")
        assert (pairs["chosen_score"] > pairs["rejected_score"]).all()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pairs"] == pairs.height and metrics["instructions"] == 8
    assert metrics["pairs"] + sum(metrics["dropped"].values()) == 8
    records = json.loads((tmp_path / "cost.json").read_text())["cost"]
    assert [x["category"] for x in records] == ["response generation", "preference annotation"]
    assert all(x["method"] == method and x["device_kind"] == "cpu" for x in records)
    assert records[0]["tokens_generated"] > 0 and records[0]["wall_seconds"] > 0
    if method in ("sampling_ranking", "self_rewarding"):
        assert records[1]["tokens_read"] > 0 and records[1]["wall_seconds"] > 0


def test_baseline_bad_method_and_reward_model(comp: dict[str, Any], tmp_path: Path) -> None:
    r = _baseline(comp, tmp_path, "best_of_n", _params(comp, tmp_path))
    assert r.exit_code == 2 and "unknown method 'best_of_n'" in r.output, r.output
    r = _baseline(comp, tmp_path, "icon2", _params(comp, tmp_path))
    assert r.exit_code == 2 and "`pairs` stage" in r.output, r.output
    # The causal LM's own directory is not a sequence classifier: refused, not scored.
    bad = _params(comp, tmp_path, {"baselines": {"reward_model": str(comp["model"])}})
    r = _baseline(comp, tmp_path, "sampling_ranking", bad)
    assert r.exit_code == 2 and "not a sequence classifier" in r.output, r.output
    assert not (tmp_path / "pairs.parquet").exists()


def _select(comp: dict[str, Any], out: Path, params: Path) -> Any:
    return run_stage(
        "selection",
        "--model-dir",
        comp["model"],
        "--directions",
        comp["directions"],
        "--kept",
        comp["kept"],
        "--scored",
        out / "scored.parquet",
        "--grid",
        out / "grid.csv",
        "--out",
        out / "selected.json",
        "--cost",
        out / "cost.json",
        "--params",
        params,
    )


GRID = {
    "instructions": 4,
    "gamma_pos": [0.5, 2.0],
    "gamma_neg": [-0.5, -2.0],
    "layer_ranges": {"early": [1], "late": [2, 3]},
}


def test_select_scores_the_grid_and_applies_the_rule(comp: dict[str, Any], tmp_path: Path) -> None:
    over = {"select": {**GRID, "criterion": "reward", "min_share": 0.0, "min_kept_fraction": 0.0}}
    r = _select(comp, tmp_path, _params(comp, tmp_path, over))
    assert r.exit_code == 0, r.output
    grid = pl.read_csv(tmp_path / "grid.csv")
    assert grid.height == 2 * 2 * 2 and (grid["n"] == 4).all()  # 4 of the 6 train rows
    drops = grid["dropped_empty"] + grid["dropped_truncated"] + grid["dropped_identical"]
    assert (grid["kept"] + drops == grid["n"]).all()
    scored = pl.read_parquet(tmp_path / "scored.parquet")
    assert scored.height == 8 * 4
    kept = scored.filter(pl.col("drop_reason").is_null())
    assert kept["chosen_projection"].null_count() == 0  # every kept pair's answers were read
    out = json.loads((tmp_path / "selected.json").read_text())
    assert out["criterion"] == "reward" and out["instructions"] == 4
    assert out["scorer"].startswith("judge:") and out["projection_layers"] == [1, 2]
    assert len(out["settings"]) == 8 and out["settings"]["early:0.5:-0.5"]["n"] == 4
    if out["selected"] is not None:  # min_share 0: picked unless every share is exactly 0
        assert out["apply"].startswith("dvc exp run --set-param pairs.gamma_pos=")
        assert "apply with: dvc exp run" in r.output
    cost = json.loads((tmp_path / "cost.json").read_text())["cost"]
    assert cost[0]["tokens_generated"] > 0 and cost[1]["wall_seconds"] > 0


def test_select_with_no_setting_above_the_share_picks_none(
    comp: dict[str, Any], tmp_path: Path
) -> None:
    # A share above 0.999 on 4 instructions needs every kept pair to separate: a random
    # model's answers do not read that consistently along a direction (no judge asked).
    select = {**GRID, "min_share": 0.999, "gamma_pos": [0.5], "gamma_neg": [-0.5]}
    over = {"select": {**select, "criterion": "projection_gap"}}
    r = _select(comp, tmp_path, _params(comp, tmp_path, over))
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "selected.json").read_text())
    assert out["criterion"] == "projection_gap" and out["scorer"] is None
    grid = pl.read_csv(tmp_path / "grid.csv")
    assert grid["chosen_reward"].null_count() == grid.height
    if grid["eligible"].any():
        pytest.skip("this random model separated every kept pair")
    assert out["selected"] is None and out["apply"] is None
    assert "no setting picked" in out["reason"] and "no setting picked" in r.output


def test_select_unknown_criterion_is_one_error_line(
    write_params: Callable[..., Path], tmp_path: Path
) -> None:
    # Refused when the params are read, before any input is opened.
    params = write_params({"select": {"criterion": "judge"}})
    r = _select({"model": "m", "directions": "d", "kept": "k"}, tmp_path, params)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "select.criterion" in lines[0], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_cost_table_sums_the_stage_records(comp: dict[str, Any], tmp_path: Path) -> None:
    def rec(stage: str, method: str, category: str, seconds: float) -> dict[str, Any]:
        return {
            "stage": stage,
            "method": method,
            "category": category,
            "wall_seconds": seconds,
            "device_kind": "cpu",
            "device_count": 1,
            "tokens_generated": 10,
            "tokens_read": 5,
        }

    files = {
        "icon2.json": [
            rec("pairs", "icon2", "response generation", 360.0),
            rec("score", "icon2", "preference annotation", 36.0),
        ],
        "sr.json": [
            rec("baselines@sampling_ranking", "sampling_ranking", "response generation", 720.0),
            rec("baselines@sampling_ranking", "sampling_ranking", "preference annotation", 72.0),
        ],
        "shared.json": [rec("synthesize", "shared", "response generation", 100.0)],
    }
    args: list[Any] = []
    for name, records in files.items():
        (tmp_path / name).write_text(json.dumps({"cost": records}))
        args += ["--records", tmp_path / name]
    params = _params(comp, tmp_path, {"cost": {"price_per_device_hour": 3.0}})
    r = run_stage(
        "cost",
        *args,
        "--table",
        tmp_path / "table.csv",
        "--out",
        tmp_path / "m.json",
        "--params",
        params,
    )
    assert r.exit_code == 0, r.output
    table = pl.read_csv(tmp_path / "table.csv")
    icon2 = table.filter(pl.col("method") == "icon2").row(0, named=True)
    assert icon2["generation_hours"] == pytest.approx(0.1)
    assert icon2["total_money"] == pytest.approx(0.11 * 3.0)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["ratio_total"] == pytest.approx(0.5)
    assert metrics["ratio_tokens_total"] == pytest.approx(1.0)  # 30 tokens each
    assert "icon2 / sampling_ranking:" in r.output and "total 0.500 (device-hours)" in r.output
    assert "(tokens generated + read)" in r.output
    # No records for the denominator: one clear error.
    r = run_stage(
        "cost",
        "--records",
        tmp_path / "icon2.json",
        "--table",
        tmp_path / "t2.csv",
        "--out",
        tmp_path / "m2.json",
        "--params",
        params,
    )
    assert r.exit_code == 2 and "sampling_ranking" in r.output, r.output
    # --baselines reads <method>/cost.json for each of baselines.methods, none by hand.
    (tmp_path / "b" / "sampling_ranking").mkdir(parents=True)
    (tmp_path / "b" / "sampling_ranking" / "cost.json").write_text(
        json.dumps({"cost": files["sr.json"]})
    )
    only_sr = _params(
        comp,
        tmp_path,
        {"cost": {"price_per_device_hour": 3.0}, "baselines": {"methods": ["sampling_ranking"]}},
    )
    args = ["--records", tmp_path / "icon2.json", "--records", tmp_path / "shared.json"]
    r = run_stage(
        "cost",
        *args,
        "--baselines",
        tmp_path / "b",
        "--table",
        tmp_path / "t3.csv",
        "--out",
        tmp_path / "m3.json",
        "--params",
        only_sr,
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m3.json").read_text()) == metrics
    # A method in baselines.methods without its cost file: one error naming the file.
    both = _params(
        comp,
        tmp_path,
        {"baselines": {"methods": ["sampling_ranking", "self_refine"]}},
    )
    r = run_stage(
        "cost",
        *args,
        "--baselines",
        tmp_path / "b",
        "--table",
        tmp_path / "t4.csv",
        "--out",
        tmp_path / "m4.json",
        "--params",
        both,
    )
    assert r.exit_code == 2 and "self_refine/cost.json" in r.output, r.output
    assert not (tmp_path / "t4.csv").exists()
