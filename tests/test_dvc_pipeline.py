"""The real dvc.yaml and spa/dvc.yaml, run by DVC on a tiny model: wiring, outputs, and what
a γ change reruns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run_dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Stage commands call `python`: put this interpreter's environment first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def _dvc(cwd: Path, *args: str) -> str:
    done = run_dvc(cwd, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# How `dvc status` names a stage of spa/dvc.yaml.
SPA1 = "spa/dvc.yaml:spa@1"

# What a pipeline run reads from the repository (besides params.yaml and the data files a
# test chooses): the code, and the human-preference set the `benchmark` stage scores.
PIPELINE = (
    "dvc.yaml",
    "spa/dvc.yaml",
    "stages",
    "src",
    "configs",
    "data/benchmarks/hh_rlhf_300.jsonl",
)


def copy_pipeline(root: Path, *extra: str) -> None:
    """Copy the pipeline's code and config, plus ``extra`` repository paths, into ``root``."""
    for name in (*PIPELINE, *extra):
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)


def tiny_params(model_dir: Path) -> dict[str, Any]:
    """The repository's params.yaml, sized for the tiny model: the whole job in minutes."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"]["model"] = str(model_dir)
    params["directions"].update(max_features=12, batch_size=6)
    params["synthesize"].update(
        count=16,
        max_new_tokens=24,
        batch_size=8,
        min_chars=1,
        near_dup_threshold=None,
        source="file",
    )
    params["filter"].update(value=1.0, validation_fraction=0.25)
    # Steered answers for 24 of the 300-odd kept instructions (about 7 pairs end in time),
    # not all of them: the same pipeline in a fraction of the time.
    params["pairs"].update(max_instructions=24, max_new_tokens=40, batch_size=8, temperature=1.0)
    params["train"].update(
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=128,
        learning_rate=1e-4,
    )
    params["evaluate"].update(max_new_tokens=8, batch_size=4, max_prompts=4)
    params["benchmark"].update(max_pairs=6, batch_size=4, resamples=200)
    params["spa"].update(
        iterations={"1": {"previous": "data/train/model", "lam": 0.5}},
        prompts_per_iteration=8,
        max_new_tokens=64,
        temperature=1.0,
    )
    return params  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("project")
    copy_pipeline(root, "data/features.jsonl")
    params = tiny_params(tiny_model_dir)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _dvc(root, "init", "--no-scm", "-q")
    ran, _ = _ran_and_skipped(_dvc(root, "repro"))
    # The default `dvc repro` is the ICON² job; SPA is its own pipeline on top of it.
    assert ran == {
        "check",
        "model",
        "directions",
        "synthesize",
        "score",
        "filter",
        "pairs",
        "train",
        "evaluate",
        "benchmark",
    }, ran
    assert not (root / "data/spa").exists()
    ran, _ = _ran_and_skipped(_dvc(root, "repro", "spa/dvc.yaml"))
    assert ran == {SPA1}, ran
    return root


def test_repro_produces_every_output(project: Path) -> None:
    for path in (
        "data/model/icon2_model.json",
        "data/directions/directions.safetensors",
        "data/synthesize/instructions.parquet",
        "data/score/scores.parquet",
        "data/filter/kept.parquet",
        "data/pairs/pairs.parquet",
        "data/train/model/model.safetensors",
        "data/evaluate/metrics.json",
        "data/benchmark/metrics.json",
        "data/benchmark/pairs.parquet",
        "data/spa/1/model/model.safetensors",
        "data/spa/1/pairs.parquet",
    ):
        assert (project / path).exists(), path
    metrics = json.loads((project / "data/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["win_rate"] <= 1.0
    assert "up to date" in _dvc(project, "status") or _dvc(project, "status").strip() == ""


def _ran_and_skipped(output: str) -> tuple[set[str], set[str]]:
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    skipped = {line.split("'")[1] for line in output.splitlines() if "didn't change" in line}
    return ran, skipped


def test_gamma_change_reruns_only_pairs_and_downstream(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pairs"]["gamma_pos"] = 0.2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Only `pairs` (and `check`, which reads the whole params file and reruns nothing by
    # itself) has a changed dependency; the stages after it rerun when its output changes.
    assert set(json.loads(_dvc(project, "status", "--json"))) == {"check", "pairs"}
    # SPA's pipeline first brings what it reads up to date (pairs -> train), not evaluate.
    ran, skipped = _ran_and_skipped(_dvc(project, "repro", "spa/dvc.yaml"))
    assert ran == {"check", "pairs", "train", SPA1}
    assert {"model", "directions", "synthesize", "score", "filter"} <= skipped
    # The main job then only has the stages after train left to rerun.
    assert set(json.loads(_dvc(project, "status", "--json"))) == {"evaluate", "benchmark"}
    ran, skipped = _ran_and_skipped(_dvc(project, "repro"))
    assert ran == {"evaluate", "benchmark"} and {"pairs", "train"} <= skipped


def test_synthesize_change_invalidates_from_synthesize(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthesize"]["min_chars"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(_dvc(project, "status", "--json"))) == {"check", "synthesize"}
    ran, skipped = _ran_and_skipped(_dvc(project, "repro", "--dry"))
    assert "synthesize" in ran and not ran & {"model", "directions"}
    assert {"model", "directions"} <= skipped


def test_spa_iteration_depends_only_on_its_own_keys(project: Path) -> None:
    """Changing or adding one SPA iteration leaves the other iterations up to date."""
    path = project / "params.yaml"
    before = path.read_text()
    try:
        params = yaml.safe_load(before)
        params["spa"]["iterations"]["2"] = {"previous": "data/spa/1/model", "lam": 0.25}
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        assert SPA1 not in set(json.loads(_dvc(project, "status", "--json")))
        params["spa"]["iterations"]["1"]["lam"] = 0.125
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        assert SPA1 in set(json.loads(_dvc(project, "status", "--json")))
    finally:
        path.write_text(before)


def test_editing_a_module_reruns_the_stages_that_import_it(project: Path) -> None:
    module = project / "src/icon2/steps/filtering.py"
    before = module.read_text()
    stale = set(json.loads(_dvc(project, "status", "--json")))
    try:
        module.write_text(before + "\n# an edit\n")
        changed = set(json.loads(_dvc(project, "status", "--json"))) - stale
        assert changed == {"filter"}
    finally:
        module.write_text(before)
