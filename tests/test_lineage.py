"""dvc.yaml's declarations match the code: every stage depends on all the package code it
can import, and on exactly the params it reads (icon2.core.params.STAGE_PARAMS). The same
holds for the SPA and comparison pipelines (spa/dvc.yaml, comparison/dvc.yaml), whose stages
run from the root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from icon2.core.lineage import import_closure
from icon2.core.params import STAGE_PARAMS
from tests.conftest import REPO

PIPELINES = ("dvc.yaml", "spa/dvc.yaml", "comparison/dvc.yaml")
STAGES = {
    (f, name): spec
    for f in PIPELINES
    for name, spec in yaml.safe_load((REPO / f).read_text())["stages"].items()
}


def _spec(key: tuple[str, str]) -> dict[str, list[str]]:
    spec = STAGES[key]
    return spec["do"] if "foreach" in spec else spec  # type: ignore[no-any-return]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("key", sorted(STAGES), ids=lambda k: f"{k[0]}:{k[1]}")
def test_stage_deps_cover_its_import_closure(key: tuple[str, str]) -> None:
    name = key[1]
    deps = [d for d in _spec(key)["deps"] if isinstance(d, str)]
    script = REPO / "stages" / f"{name}.py"
    assert f"stages/{name}.py" in deps
    closure = import_closure(script, REPO / "src")
    missing = [f.relative_to(REPO).as_posix() for f in closure if not _covered(f, deps)]
    assert not missing, f"dvc.yaml stage {name!r} imports code it does not depend on: {missing}"


@pytest.mark.parametrize("key", sorted(STAGES), ids=lambda k: f"{k[0]}:{k[1]}")
def test_stage_params_match_the_provenance_list(key: tuple[str, str]) -> None:
    if key == ("dvc.yaml", "check"):
        # The check validates the whole file: it depends on params.yaml as a file.
        assert "params" not in _spec(key) and "params.yaml" in _spec(key)["deps"]
        return
    declared = [str(k).replace("${key}", "{t}") for k in _spec(key)["params"]]
    assert sorted(declared) == sorted(STAGE_PARAMS[key[1]])


@pytest.mark.parametrize("key", sorted(STAGES), ids=lambda k: f"{k[0]}:{k[1]}")
def test_every_stage_waits_for_the_check(key: tuple[str, str]) -> None:
    """DVC deletes a stage's outputs before running it: the check must run before any stage
    of any pipeline, so each depends on its marker (`dvc repro` runs upstream stages first)."""
    if key == ("dvc.yaml", "check"):
        outs = _spec(key)["outs"]
        assert outs == [{"${paths.check}": {"cache": False, "persist": True}}]
        return
    marker = "${paths.check}" if key[0] == "dvc.yaml" else "${root.check}"
    assert marker in _spec(key)["deps"]


@pytest.mark.parametrize("pipeline", PIPELINES[1:])
def test_sub_pipeline_paths_repeat_the_root_paths(pipeline: str) -> None:
    """spa/ and comparison/dvc.yaml cannot read ./dvc.yaml's vars: their copies must not
    drift, and their stages run from the repository root."""
    root = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"][0]["paths"]
    spec = yaml.safe_load((REPO / pipeline).read_text())
    assert spec["vars"][0] == "../params.yaml"
    copies = spec["vars"][1]["root"]
    assert {k: root.get(k) for k in copies} == copies
    for stage in spec["stages"].values():
        assert (stage["do"] if "foreach" in stage else stage)["wdir"] == ".."


def test_closure_follows_lazy_imports(tmp_path: Path) -> None:
    """An import inside a function body counts: it runs when the stage runs."""
    script = tmp_path / "s.py"
    script.write_text("def f():\n    from icon2.core.layers import middle_third\n")
    files = {f.relative_to(REPO / "src").as_posix() for f in import_closure(script, REPO / "src")}
    assert {"icon2/core/layers.py", "icon2/core/errors.py", "icon2/core/__init__.py"} <= files


def test_no_stage_script_shadows_the_standard_library() -> None:
    """`python stages/x.py` puts stages/ first on sys.path: a stages/select.py would be
    imported by `subprocess` in place of the standard library's `select`, in every stage."""
    clash = sorted(
        f.stem for f in (REPO / "stages").glob("*.py") if f.stem in sys.stdlib_module_names
    )
    assert not clash, f"stage scripts named like standard-library modules: {clash}"


def test_comparison_follows_the_method_lists_in_params(tmp_path: Path) -> None:
    """No method is named by hand in comparison/dvc.yaml's stages: with two baselines and
    two compared methods in params, DVC builds exactly their stages, and the aggregating
    stages (cost, signals, compare) wait for exactly those."""
    import subprocess

    (tmp_path / "comparison").mkdir()
    for name in ("dvc.yaml", "comparison/dvc.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["baselines"]["methods"] = ["sampling_ranking", "self_refine"]
    params["compare"]["methods"] = {
        "icon2": "data/pairs/pairs.parquet",
        "self_refine": "data/baselines/self_refine/pairs.parquet",
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(args, cwd=tmp_path, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--dot", "comparison/dvc.yaml:compare"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    edges = {
        tuple(
            part.strip().strip('";').removeprefix("comparison/dvc.yaml:")
            for part in line.split("->")
        )
        for line in done.stdout.splitlines()
        if "->" in line
    }
    into = {a for a, b in edges if b == "compare"}
    assert into == {
        "check",
        "cost",
        *(
            f"{s}@{m}"
            for s in ("train", "evaluate", "benchmark", "signals")
            for m in ("icon2", "self_refine")
        ),
    }
    assert {a for a, b in edges if b == "cost"} >= {
        "baselines@sampling_ranking",
        "baselines@self_refine",
    }
    stages = {a for a, _ in edges} | {b for _, b in edges}
    assert not {s for s in stages if s.endswith(("@self_rewarding", "@direct_prompting"))}
    assert {a for a, b in edges if b == "signals@icon2"} >= {"pairs", "baselines@self_refine"}


def test_comparison_stages_name_no_method() -> None:
    """Editing baselines.methods or compare.methods must not need an edit of the pipeline:
    no stage's command or dependencies names a method."""
    stages = yaml.safe_load((REPO / "comparison/dvc.yaml").read_text())["stages"]
    methods = ("icon2", "sampling_ranking", "self_rewarding", "self_refine", "direct_prompting")
    text = {stage: yaml.safe_dump(spec).replace("src/icon2", "") for stage, spec in stages.items()}
    named = {(stage, m) for stage in stages for m in methods if m in text[stage]}
    assert not named, f"comparison/dvc.yaml names methods by hand: {sorted(named)}"
