"""Faults (issue 9): kill -9 in the middle of the `model` stage, then a clean rerun; the
model stage's bytes do not depend on the HF offline variables; a failed `dvc repro` leaves
the user one documented command from the last good state."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.kill import kill_when_marked

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# Run the stage as `python stages/model.py`, but stop for good once everything is written to
# the temporary directory and before it is swapped into place: the worst moment to be killed.
_STALL = """
import runpy, sys, time
from pathlib import Path
import icon2.model.loading as loading
original = loading.materialise
marker = Path(sys.argv.pop())
def stalled(*args, **kwargs):
    card = original(*args, **kwargs)
    marker.write_text("written")
    time.sleep(600)
    return card
loading.materialise = stalled
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _params(tmp_path: Path, model: Path) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["base"]["model"] = str(model)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    if offline:
        env.update(dict.fromkeys(OFFLINE_VARS, "1"))
    return env


def _model_stage(out: Path, params: Path, *, offline: bool = True) -> None:
    cmd = [sys.executable, str(REPO / "stages" / "model.py"), "--out", str(out)]
    done = subprocess.run(
        [*cmd, "--params", str(params)],
        env=_env(offline),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_kill_9_in_model_stage_then_clean_rerun(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_model_dir)
    data = tmp_path / "data"
    out = data / "model"
    # The last good output, which the killed run must not damage.
    out.mkdir(parents=True)
    (out / "good.txt").write_text("last good model\n")
    marker = tmp_path / "written"
    cmd = [sys.executable, "-c", _STALL, str(REPO / "stages" / "model.py"), "--out", str(out)]
    kill_when_marked(
        [*cmd, "--params", str(params), str(marker)],
        marker,
        env=_env(True),
        what="the stage never finished writing",
    )
    stale = [p for p in data.iterdir() if p.name != "model"]
    assert stale and all(p.name.startswith(".model.tmp-") for p in stale), stale
    assert any(f.name == "model.safetensors" for p in stale for f in p.iterdir())
    assert _digest(out) == {"good.txt": hashlib.sha256(b"last good model\n").hexdigest()}

    _model_stage(out, params)
    assert sorted(p.name for p in data.iterdir()) == ["model"]  # the stale copy is gone
    assert (out / "model.safetensors").is_file() and not (out / "good.txt").exists()
    card = json.loads((out / "icon2_model.json").read_text())
    assert card["num_layers"] == 3


def test_model_stage_bytes_do_not_depend_on_offline_vars(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    params = _params(tmp_path, tiny_model_dir)
    _model_stage(tmp_path / "online" / "model", params, offline=False)
    _model_stage(tmp_path / "offline" / "model", params, offline=True)
    online, offline = _digest(tmp_path / "online"), _digest(tmp_path / "offline")
    assert online == offline
    config = json.loads((tmp_path / "offline" / "model" / "tokenizer_config.json").read_text())
    assert not {"local_files_only", "is_local", "revision", "_commit_hash"} & set(config)


def test_loader_arguments_never_reach_the_saved_tokenizer(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the issue saw with the GGUF source: the loader's local_files_only/revision flags
    stored in tokenizer_config.json. Whatever from_pretrained remembers, none is saved."""
    from transformers import AutoTokenizer

    from icon2.model import loading

    real = AutoTokenizer.from_pretrained

    def remembering(*args: object, **kwargs: object) -> object:
        tok = real(*args, **kwargs)
        tok.init_kwargs.update(local_files_only=True, revision="main", _commit_hash="abc")
        return tok

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", remembering)
    source = loading.resolve(str(tiny_model_dir))
    loading.materialise(source, tmp_path, revision=None, dtype="float32", trust_remote_code=False)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert not set(loading.LOAD_ONLY_KWARGS) & set(config)


def test_failed_repro_is_one_documented_command_from_the_last_good_state() -> None:
    """`dvc repro` deletes a stage's outputs before running it. Every artifact a later stage
    or a reader needs is cached, so `dvc checkout` (documented in the README) restores the
    last good run; only summaries (metrics, plots, cost records) are `cache: false`, which
    git restores with the same checkout of the commit."""
    stages = {
        name: stage
        for pipeline in ("dvc.yaml", "spa/dvc.yaml")
        for name, stage in yaml.safe_load((REPO / pipeline).read_text())["stages"].items()
    }
    assert "spa" in stages
    uncached: list[str] = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("outs", []):
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            if opts.get("cache", True) is False:
                uncached.append(f"{name}: {path}")
    # Nothing a stage reads, nor evaluate's samples/details, is an uncached out; the check's
    # marker (constant text, kept when the check fails) is the one a stage reads.
    assert all("cost" in u or u == "check: ${paths.check}" for u in uncached), uncached
    evaluate_outs = [
        next(iter(e)) if isinstance(e, dict) else e for e in stages["evaluate"]["outs"]
    ]
    assert {"${paths.eval_details}", "${paths.eval_samples}"} <= set(evaluate_outs)
    readme = (REPO / "README.md").read_text()
    assert "dvc checkout" in readme and "### When a run fails" in readme


def test_no_stage_file_shadows_a_standard_module() -> None:
    """`python stages/x.py` puts stages/ first on sys.path: a stage named like a standard
    module (select.py, signal.py, ...) breaks the imports of every stage, under DVC too."""
    shadowing = sorted(
        p.name for p in (REPO / "stages").glob("*.py") if p.stem in sys.stdlib_module_names
    )
    assert not shadowing, f"rename {shadowing}: they shadow the standard library"
