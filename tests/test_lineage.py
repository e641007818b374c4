"""dvc.yaml's declarations match the code: every stage depends on all the package code it
can import, and on exactly the params it reads (icon2.core.params.STAGE_PARAMS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from icon2.core.lineage import import_closure
from icon2.core.params import STAGE_PARAMS
from tests.conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _spec(name: str) -> dict[str, list[str]]:
    spec = STAGES[name]
    return spec["do"] if "foreach" in spec else spec  # type: ignore[no-any-return]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_its_import_closure(name: str) -> None:
    deps = [d for d in _spec(name)["deps"] if isinstance(d, str)]
    script = REPO / "stages" / f"{name}.py"
    assert f"stages/{name}.py" in deps
    closure = import_closure(script, REPO / "src")
    missing = [f.relative_to(REPO).as_posix() for f in closure if not _covered(f, deps)]
    assert not missing, f"dvc.yaml stage {name!r} imports code it does not depend on: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_match_the_provenance_list(name: str) -> None:
    declared = [str(k).replace("${key}", "{t}") for k in _spec(name)["params"]]
    assert sorted(declared) == sorted(STAGE_PARAMS[name])


def test_closure_follows_lazy_imports(tmp_path: Path) -> None:
    """An import inside a function body counts: it runs when the stage runs."""
    script = tmp_path / "s.py"
    script.write_text("def f():\n    from icon2.core.layers import middle_third\n")
    files = {f.relative_to(REPO / "src").as_posix() for f in import_closure(script, REPO / "src")}
    assert {"icon2/core/layers.py", "icon2/core/errors.py", "icon2/core/__init__.py"} <= files
