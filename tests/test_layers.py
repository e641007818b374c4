"""The package is a one-way house: every import runs down the parts

    evaluate → steps → train | engines → model → core

(``icon2/stage.py``, the stage scripts' helper, sits above them all), train and engines do
not import each other, and no two modules import each other, directly or round a loop.
Every import counts, including those inside functions and under ``TYPE_CHECKING``."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from icon2.core.lineage import module_imports
from tests.conftest import REPO

RANK = {"core": 0, "model": 1, "engines": 2, "train": 2, "steps": 3, "evaluate": 4, "stage": 5}


def _part(file: Path, package: Path) -> str:
    first = file.relative_to(package).parts[0]
    return first.removesuffix(".py")


def import_graph(src: Path) -> nx.DiGraph:
    """Files of ``src``/icon2 and their direct imports (the package face excluded)."""
    package = src / "icon2"
    graph = nx.DiGraph()
    for file in sorted(package.rglob("*.py")):
        if file == package / "__init__.py":
            continue
        graph.add_node(file)
        for target in module_imports(file, src):
            if target != package / "__init__.py":
                graph.add_edge(file, target)
    return graph


def upward_imports(src: Path) -> list[str]:
    """``a -> b`` for each import from a lower part, or across train and engines."""
    package = src / "icon2"
    bad = []
    for a, b in import_graph(src).edges:
        pa, pb = _part(a, package), _part(b, package)
        if pa != pb and RANK[pb] >= RANK[pa]:
            bad.append(f"{a.relative_to(src)} -> {b.relative_to(src)}")
    return sorted(bad)


def import_cycles(src: Path) -> list[list[str]]:
    """Each group of files that import one another (a strongly connected component)."""
    graph = import_graph(src)
    return sorted(
        sorted(str(f.relative_to(src)) for f in group)
        for group in nx.strongly_connected_components(graph)
        if len(group) > 1
    )


def test_every_file_belongs_to_a_part() -> None:
    package = REPO / "src" / "icon2"
    parts = {_part(f, package) for f in package.rglob("*.py") if f != package / "__init__.py"}
    assert parts <= set(RANK), sorted(parts - set(RANK))


def test_no_import_runs_up_or_across() -> None:
    assert upward_imports(REPO / "src") == []


def test_no_import_cycle() -> None:
    assert import_cycles(REPO / "src") == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "icon2" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "upward"),
    [
        # steps -> evaluate runs up; the reverse is the house's direction
        ({"steps/a.py": "from icon2.evaluate.b import x\n", "evaluate/b.py": ""}, True),
        ({"evaluate/b.py": "from icon2.steps.a import x\n", "steps/a.py": ""}, False),
        # a lazy import inside a function counts
        ({"core/a.py": "def f():\n    import icon2.model.b\n", "model/b.py": ""}, True),
        # train and engines are side by side: neither imports the other
        ({"train/a.py": "from icon2.engines.b import x\n", "engines/b.py": ""}, True),
    ],
)
def test_a_planted_import_is_judged_by_its_direction(
    tmp_path: Path, files: dict[str, str], upward: bool
) -> None:
    assert bool(upward_imports(_write(tmp_path, files))) is upward


def test_a_planted_cycle_is_found_even_behind_a_lazy_import(tmp_path: Path) -> None:
    src = _write(
        tmp_path,
        {
            "steps/a.py": "from icon2.steps.b import y\n",
            "steps/b.py": "def f():\n    from icon2.steps.a import x\n",
            "steps/c.py": "from icon2.steps.a import x\n",
        },
    )
    assert import_cycles(src) == [["icon2/steps/a.py", "icon2/steps/b.py"]]
