"""synthesize → score → filter → pairs end to end on a tiny model, and their bad inputs."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from icon2.core.io import read_provenance
from icon2.core.tables import PAIR_SCHEMA
from tests.conftest import run_stage
from tests.stages.test_directions import FEATURES


@pytest.fixture(scope="module")
def chain(tiny_stage_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run directions once for the module; stages after it run per test."""
    import yaml

    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("chain")
    feats = root / "features.jsonl"
    feats.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in FEATURES * 3))
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["directions"]["batch_size"] = 4
    data["synthesize"].update(
        count=24, max_new_tokens=24, batch_size=8, min_chars=1, near_dup_threshold=None
    )
    # Sampling makes the random tiny model end its turn often enough to keep some pairs; at
    # 40 tokens that held for one random stream only (generate's), at 96 for both engines'.
    data["pairs"].update(max_new_tokens=96, batch_size=8, layers=[2], temperature=1.0)
    data["filter"].update(value=1.0, validation_fraction=0.25)
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
    )
    assert r.exit_code == 0, r.output
    return {
        "root": root,
        "params": params,
        "model": tiny_stage_model,
        "features": feats,
        "directions": root / "dir.safetensors",
        "data": data,
    }


def _params(chain: dict[str, Any], tmp_path: Path, **over: dict[str, Any]) -> Path:
    import yaml

    data = json.loads(json.dumps(chain["data"]))
    for section, values in over.items():
        data[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _synth(chain: dict[str, Any], params: Path, out: Path, file: Path | None = None) -> Any:
    return run_stage(
        "synthesize",
        "--model-dir",
        chain["model"],
        "--file",
        file or chain["features"],
        "--out",
        out / "instr.parquet",
        "--metrics",
        out / "synth.json",
        "--params",
        params,
    )


def _score(chain: dict[str, Any], params: Path, out: Path, directions: Path | None = None) -> Any:
    return run_stage(
        "score",
        "--model-dir",
        chain["model"],
        "--directions",
        directions or chain["directions"],
        "--instructions",
        out / "instr.parquet",
        "--out",
        out / "scores.parquet",
        "--plots",
        out / "scores.csv",
        "--params",
        params,
    )


def _filter(params: Path, out: Path) -> Any:
    return run_stage(
        "filter",
        "--scores",
        out / "scores.parquet",
        "--out",
        out / "kept.parquet",
        "--metrics",
        out / "filter.json",
        "--params",
        params,
    )


def _pairs(chain: dict[str, Any], params: Path, out: Path) -> Any:
    return run_stage(
        "pairs",
        "--model-dir",
        chain["model"],
        "--directions",
        chain["directions"],
        "--kept",
        out / "kept.parquet",
        "--out",
        out / "pairs.parquet",
        "--metrics",
        out / "pairs.json",
        "--params",
        params,
    )


def test_chain_from_model_synthesis(chain: dict[str, Any], tmp_path: Path) -> None:
    params = _params(chain, tmp_path, synthesize={"min_chars": 1, "max_chars": 400})
    r = _synth(chain, params, tmp_path)
    assert r.exit_code == 0, r.output
    counts = json.loads((tmp_path / "synth.json").read_text())
    assert counts["raw"] == 24
    # The metrics keep raw/kept/truncated; the other rules' drops are printed.
    other = re.search(r"other drops (\{.*\})\)", r.output)
    dropped = ast.literal_eval(other.group(1)) if other else {}
    assert counts["kept"] + counts["truncated"] + sum(dropped.values()) == 24, r.output
    meta = read_provenance(tmp_path / "instr.parquet")
    assert meta["pre_query_template"] == "<|bos|><|user|>"


def test_chain_from_file_to_pairs(chain: dict[str, Any], tmp_path: Path) -> None:
    params = _params(chain, tmp_path, synthesize={"source": "file"})
    for step in (
        lambda: _synth(chain, params, tmp_path),
        lambda: _score(chain, params, tmp_path),
        lambda: _filter(params, tmp_path),
        lambda: _pairs(chain, params, tmp_path),
    ):
        r = step()
        assert r.exit_code == 0, r.output
    instr = pl.read_parquet(tmp_path / "instr.parquet")
    assert instr.height == len(FEATURES)  # the tripled file is deduplicated
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert {"raw_honesty", "std_general", "criterion", "margin"} <= set(scores.columns)
    kept = pl.read_parquet(tmp_path / "kept.parquet")
    assert set(kept["split"]) <= {"train", "validation"}
    pairs = pl.read_parquet(tmp_path / "pairs.parquet")
    assert pairs.schema == pl.Schema(PAIR_SCHEMA)
    counts = json.loads((tmp_path / "pairs.json").read_text())
    assert counts["instructions"] == kept.height
    assert counts["pairs"] == pairs.height
    assert (
        counts["pairs"] + counts["empty"] + counts["truncated"] + counts["identical"] == kept.height
    )
    meta = read_provenance(tmp_path / "pairs.parquet")
    assert meta["params"]["pairs"]["gamma_pos"] == 0.1 and meta["weights_sha256"]


def _fails(result: Any, message: str, out: Path, name: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert not (out / name).exists()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"gamma_pos": -0.1}, "pairs.gamma_pos: must be > 0 (got -0.1)"),
        ({"gamma_neg": 0.05}, "pairs.gamma_neg: must be < 0 (got 0.05)"),
        ({"layers": [2, 9]}, "layer(s) [9] are outside the model"),
    ],
)
def test_pairs_bad_params(
    chain: dict[str, Any], tmp_path: Path, over: dict[str, Any], message: str
) -> None:
    params = _params(chain, tmp_path, synthesize={"source": "file"})
    for step in (_synth, _score):
        assert step(chain, params, tmp_path).exit_code == 0
    assert _filter(params, tmp_path).exit_code == 0
    _fails(
        _pairs(chain, _params(chain, tmp_path, pairs=over), tmp_path),
        message,
        tmp_path,
        "pairs.parquet",
    )


def test_filter_that_empties_names_the_rule(chain: dict[str, Any], tmp_path: Path) -> None:
    params = _params(
        chain, tmp_path, synthesize={"source": "file"}, filter={"rule": "threshold", "value": 1e9}
    )
    assert _synth(chain, params, tmp_path).exit_code == 0
    assert _score(chain, params, tmp_path).exit_code == 0
    _fails(_filter(params, tmp_path), "filter.rule=threshold", tmp_path, "kept.parquet")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "holds no instructions"), (b'{"q": "x"}\n', "no 'instruction' field")],
)
def test_bad_external_instruction_file(
    chain: dict[str, Any], tmp_path: Path, content: bytes, message: str
) -> None:
    f = tmp_path / "ext.jsonl"
    f.write_bytes(content)
    params = _params(chain, tmp_path, synthesize={"source": "file"})
    _fails(_synth(chain, params, tmp_path, file=f), message, tmp_path, "instr.parquet")


def test_directions_from_another_model_are_refused(
    chain: dict[str, Any], tmp_path: Path, write_params: Callable[..., Path]
) -> None:
    from icon2.steps import direction_file

    params = _params(chain, tmp_path, synthesize={"source": "file"})
    assert _synth(chain, params, tmp_path).exit_code == 0
    d = direction_file.load_directions(chain["directions"])
    other = tmp_path / "other.safetensors"
    direction_file.save_directions(
        other, d.criteria, {**d.meta, "weights_sha256": "0" * 64, "model": "x"}
    )
    _fails(
        _score(chain, params, tmp_path, directions=other),
        "directions were computed on model 'x'",
        tmp_path,
        "scores.parquet",
    )


# `python stages/pairs.py ...`, stopped for good right after its second shard is saved:
# the kill then lands between shards, with finished work on disk and the outputs unwritten.
_STALL_AFTER_SHARD_1 = """
import runpy, sys, time
from pathlib import Path
import icon2.steps.shards as shards
original = shards.ShardStore.save
marker = Path(sys.argv.pop())
def stalled(self, shard, gens, cost):
    original(self, shard, gens, cost)
    if shard.index == 1:
        marker.write_text("saved")
        time.sleep(600)
shards.ShardStore.save = stalled
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_kill_9_mid_pairs_then_rerun_gives_the_uninterrupted_bytes(
    chain: dict[str, Any], tmp_path: Path
) -> None:
    import os
    import sys

    from tests.conftest import REPO
    from tests.kill import kill_when_marked

    params = _params(chain, tmp_path, synthesize={"source": "file"}, pairs={"shard_size": 2})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    for step in (_synth, _score):
        assert step(chain, params, whole).exit_code == 0
    assert _filter(params, whole).exit_code == 0
    assert pl.read_parquet(whole / "kept.parquet").height >= 6  # at least 3 shards of 2
    r = _pairs(chain, params, whole)
    assert r.exit_code == 0, r.output
    assert not (whole / ".shards").exists()  # removed once the outputs are written

    killed.mkdir()
    (killed / "kept.parquet").write_bytes((whole / "kept.parquet").read_bytes())
    marker = tmp_path / "saved"
    args = [
        "--model-dir", chain["model"], "--directions", chain["directions"],
        "--kept", killed / "kept.parquet", "--out", killed / "pairs.parquet",
        "--metrics", killed / "pairs.json", "--params", params,
    ]  # fmt: skip
    cmd = [sys.executable, "-c", _STALL_AFTER_SHARD_1, str(REPO / "stages" / "pairs.py")]
    kill_when_marked(
        [*cmd, *map(str, args), str(marker)],
        marker,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        what="the stage never finished its second shard",
    )
    shards = killed / ".shards" / "pairs"
    assert sorted(p.name for p in shards.iterdir()) == [
        "manifest.json",
        "shard-000000.json",
        "shard-000001.json",
    ]
    assert not (killed / "pairs.parquet").exists()

    # Other params: refused in one line, nothing written, the finished shards kept.
    (tmp_path / "other").mkdir()
    other = _params(chain, tmp_path / "other", pairs={"shard_size": 2, "gamma_pos": 0.2})
    r = _pairs(chain, other, killed)
    _fails(r, "shards of another run", killed, "pairs.parquet")
    assert r.output.count("error:") == 1 and "never mixed in" in r.output
    assert len(list(shards.glob("shard-*.json"))) == 2

    r = _pairs(chain, params, killed)
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.output and "2 of" in r.output
    for name in ("pairs.parquet", "pairs.json"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert not (killed / ".shards").exists()


def _ddp_config(path: Path, **changes: Any) -> Path:
    import yaml

    from tests.conftest import REPO

    config = yaml.safe_load((REPO / "configs/accelerate/ddp.yaml").read_text())
    changed = {**config, "mixed_precision": "no", "num_processes": 2, **changes}
    path.write_text(yaml.safe_dump(changed))
    return path


def test_pairs_on_two_processes_write_one_process_bytes(
    chain: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """base.generation_accelerate_config: two processes (gloo) split the shards, the main one
    writes; the table and counts are the bytes one process writes."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    params = _params(chain, one, synthesize={"source": "file"}, pairs={"shard_size": 2})
    for step in (_synth, _score):
        assert step(chain, params, one).exit_code == 0
    assert _filter(params, one).exit_code == 0
    assert _pairs(chain, params, one).exit_code == 0
    two.mkdir()
    (two / "kept.parquet").write_bytes((one / "kept.parquet").read_bytes())
    config = _ddp_config(tmp_path / "ddp2.yaml")
    spread = _params(
        chain,
        two,
        base={"generation_accelerate_config": str(config)},
        synthesize={"source": "file"},
        pairs={"shard_size": 2},
    )
    capfd.readouterr()
    r = _pairs(chain, spread, two)
    assert r.exit_code == 0, r.output
    ranks = capfd.readouterr().err  # the launched processes write to the real stderr
    assert "(process 0 of 2)" in ranks and "(process 1 of 2)" in ranks, ranks[-2000:]
    # The same bytes: no stage depends on how many processes generated.
    for name in ("pairs.parquet", "pairs.json"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    assert not (two / ".shards").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"distributed_type": "FSDP"}, "selects FSDP; generation is spread as data parallel"),
        (
            {"num_machines": 2, "main_process_ip": "gone.invalid", "main_process_port": 29500},
            "main_process_ip 'gone.invalid' cannot be reached",
        ),
    ],
)
def test_a_bad_generation_config_is_one_line_before_a_launch(
    chain: dict[str, Any], tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    plain = _params(chain, tmp_path, synthesize={"source": "file"})
    for step in (_synth, _score):
        assert step(chain, plain, tmp_path).exit_code == 0
    assert _filter(plain, tmp_path).exit_code == 0
    config = _ddp_config(tmp_path / "bad.yaml", **changes)
    params = _params(chain, tmp_path, base={"generation_accelerate_config": str(config)})
    r = _pairs(chain, params, tmp_path)
    assert r.exit_code == 2, r.output
    [line] = [x for x in r.output.splitlines() if x.strip()]
    assert line.startswith("error: ") and message in line, line
    assert not (tmp_path / "pairs.parquet").exists()
