"""The `benchmark` stage on the tiny model: what it writes, and what a bad file does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from icon2.core.io import read_provenance
from icon2.core.tables import BENCHMARK_SCHEMA
from icon2.evaluate.benchmark import METRICS
from tests.conftest import run_stage


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


GOOD: list[dict[str, Any]] = [
    {"prompt": [msg("user", "What is the capital of France?")],
     "chosen": [msg("assistant", "Paris is the capital.")],
     "rejected": [msg("assistant", "I do not know.")], "id": "one"},
    {"prompt": [msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Sort a list?")],
     "chosen": [msg("assistant", "Use sorted().")], "rejected": [msg("assistant", "No.")]},
    {"prompt": "Is it safe to mix bleach and ammonia?", "chosen": "No, never.",
     "rejected": "Yes, go ahead."},
]  # fmt: skip


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(model: Path, file: Path, out: Path, params: Path) -> Any:
    return run_stage(
        "benchmark",
        "--base-dir", model,
        "--trained-dir", model,
        "--file", file,
        "--out", out / "metrics.json",
        "--details", out / "pairs.parquet",
        "--params", params,
    )  # fmt: skip


def test_the_stage_writes_metrics_and_pairs(
    tiny_stage_model: Path, tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    params = write_params({"benchmark": {"resamples": 200, "max_pairs": 3}})
    file = _write(tmp_path / "bench.jsonl", [*GOOD, {**GOOD[0], "id": "four"}])
    r = _run(tiny_stage_model, file, tmp_path / "out", params)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert m["n"] == 3 and m["ci_level"] == 0.95  # max_pairs: the first 3
    for k in METRICS:
        assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"]
    # The starting model against itself: no margin, and ties are not wins.
    assert m["reward_accuracy"] == 0.0 and m["reward_margin"] == 0.0
    assert m["likelihood_accuracy"] == m["ref_likelihood_accuracy"]
    table = pl.read_parquet(tmp_path / "out/pairs.parquet")
    assert dict(table.schema) == BENCHMARK_SCHEMA and table["id"][0] == "one"
    meta = read_provenance(tmp_path / "out/pairs.parquet")
    assert meta["stage"] == "benchmark" and meta["params"]["train.beta"] == 0.1
    assert meta["reference"]["weights_sha256"] == meta["weights_sha256"]
    assert "benchmark: 3 pairs; likelihood accuracy" in r.output


@pytest.mark.parametrize(
    ("rows", "expect"),
    [
        ([], "holds no pairs"),
        ([GOOD[0], {**GOOD[1], "rejected": GOOD[1]["chosen"]}], "row 2: chosen and rejected"),
        ([GOOD[0], GOOD[1], {**GOOD[0], "prompt": [{"content": "Hi"}]}], "row 3: 'prompt'"),
        ([{**GOOD[1], "prompt": GOOD[1]["prompt"][:2]}], "row 1: 'prompt': the last message"),
        ([{**GOOD[0], "chosen": [msg("user", "Paris")]}], "row 1: 'chosen': expected one assi"),
    ],
    ids=["empty", "identical", "no-role", "last-not-user", "chosen-not-assistant"],
)
def test_a_bad_file_is_one_error_line_and_nothing_written(
    tiny_stage_model: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
    rows: list[Any],
    expect: str,
) -> None:
    file = _write(tmp_path / "bench.jsonl", rows)
    r = _run(tiny_stage_model, file, tmp_path / "out", write_params())
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    assert lines[0].startswith(f"error: {file}: ") and expect in lines[0]
    assert not (tmp_path / "out").exists()
