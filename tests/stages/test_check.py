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
    assert ran >= MAIN, ran  # (and check, which the code before issue 22 does not have)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "the last good run")
    return root


# The issue's three, by each way of running the pipeline; then settings that cannot produce
# output, by `dvc repro` only (the check is the same stage whatever runs it).
ISSUE = [
    (("filter", "rule"), "median", "filter.rule"),
    (("evaluate", "max_prompts"), 0, "evaluate.max_prompts"),
    (("directions", "features"), "bad/missing.jsonl", "directions.features"),
]
MORE = [
    (("pairs", "max_new_tokens"), 1, "pairs.max_new_tokens"),
    (("pairs", "layers"), [2, 9], "pairs.layers"),  # the tiny model has 3 layers
]
COMMANDS = [("repro",), ("repro", "evaluate"), ("exp", "run")]
CASES = [(c, *bad) for c in COMMANDS for bad in ISSUE] + [(("repro",), *bad) for bad in MORE]


def _status(root: Path) -> dict[str, object]:
    """`dvc status` of the ICON² job (spa/dvc.yaml's stages never ran here)."""
    return json.loads(_dvc(root, "status", "dvc.yaml", "--json"))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("command", "where", "value", "key"), CASES, ids=[f"{' '.join(c[0])}-{c[3]}" for c in CASES]
)
def test_bad_params_stop_repro_before_any_output_is_deleted(
    project: Path, command: tuple[str, ...], where: tuple[str, str], value: object, key: str
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
    assert _status(project) == {}


def test_a_good_change_reruns_only_what_is_downstream(project: Path) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["evaluate"]["samples"] = 3
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    before = _digest(project)
    assert set(_status(project)) == {"check", "evaluate"}
    ran, skipped = _ran_and_skipped(_dvc(project, "repro"))
    assert ran == {"check", "evaluate"}
    assert MAIN - {"evaluate"} <= skipped
    # Only evaluate's outputs and the lock changed; the check's marker is the same text.
    after = _digest(project)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    evaluated = {name for name in after if name.startswith("data/evaluate/")}
    assert "dvc.lock" in changed and changed <= {"dvc.lock", *evaluated}
    ran, _ = _ran_and_skipped(_dvc(project, "repro"))
    assert not ran
    assert _status(project) == {}
