"""A failed `dvc repro` loses nothing (issue 22): in a real git + DVC project with the real
dvc.yaml on a tiny model, bad params stop the `check` stage before DVC deletes any output,
with one `error:` line, and a passing check reruns nothing downstream by itself."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_pipeline import _dvc, _ran_and_skipped, copy_pipeline, run_dvc, tiny_params

pytestmark = pytest.mark.slow
MAIN = {"model", "directions", "synthesize", "score", "filter", "pairs", "train", "evaluate"}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)


def _digest(root: Path) -> dict[str, str]:
    """Every file of the workspace's outputs and the lock, by content."""
    files = [*sorted((root / "data").rglob("*")), root / "dvc.lock"]
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The whole ICON² job, run and committed: the last good results."""
    root = tmp_path_factory.mktemp("check")
    copy_pipeline(root, "data/features.jsonl")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model_dir), sort_keys=False))
    _git(root, "init", "-q")
    _git(root, "config", "user.name", "icon2 test")
    _git(root, "config", "user.email", "icon2@example.invalid")
    _dvc(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "the pipeline")  # dvclive needs a commit
    ran, _ = _ran_and_skipped(_dvc(root, "repro"))
    assert ran == {"check", *MAIN}
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "the last good run")
    return root


# The three, then the settings that cannot produce output.
BAD = [
    (("filter", "rule"), "median", "filter.rule"),
    (("evaluate", "max_prompts"), 0, "evaluate.max_prompts"),
    (("directions", "features"), "bad/missing.jsonl", "directions.features"),
    (("pairs", "max_new_tokens"), 1, "pairs.max_new_tokens"),
    (("pairs", "layers"), [2, 9], "pairs.layers"),  # the tiny model has 3 layers
]


@pytest.mark.parametrize(("where", "value", "key"), BAD, ids=[b[2] for b in BAD])
@pytest.mark.parametrize("command", [("repro",), ("repro", "evaluate"), ("exp", "run")])
def test_bad_params_stop_repro_before_any_output_is_deleted(
    project: Path, where: tuple[str, str], value: object, key: str, command: tuple[str, ...]
) -> None:
    path = project / "params.yaml"
    good = path.read_text()
    before = _digest(project)
    params = yaml.safe_load(good)
    params[where[0]][where[1]] = value
    try:
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        done = run_dvc(project, *command)
        assert done.returncode != 0
        lines = (done.stdout + done.stderr).splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and f"params.yaml: {key}: " in errors[0], errors
        ran, _ = _ran_and_skipped(done.stdout)
        assert ran == {"check"}
        assert _digest(project) == before
    finally:
        path.write_text(good)
    # The check's marker survived too: nothing is left to rerun.
    assert json.loads(_dvc(project, "status", "--json")) == {}


def test_a_good_change_reruns_only_what_is_downstream(project: Path) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["evaluate"]["samples"] = 3
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    marker = (project / "data/check/ok.txt").read_bytes()
    assert set(json.loads(_dvc(project, "status", "--json"))) == {"check", "evaluate"}
    ran, skipped = _ran_and_skipped(_dvc(project, "repro"))
    assert ran == {"check", "evaluate"}
    assert MAIN - {"evaluate"} <= skipped
    assert (project / "data/check/ok.txt").read_bytes() == marker
    ran, _ = _ran_and_skipped(_dvc(project, "repro"))
    assert not ran
