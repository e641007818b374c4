"""Which package files a stage script can run: the static closure of its ``icon2`` imports.

Every ``import icon2.x`` / ``from icon2.x import y`` anywhere in a file counts, including
imports inside functions (lazy imports run too), so the closure is what DVC must list as
the stage's code ``deps`` for an edit to rerun exactly the stages it can affect.

    python -m icon2.core.lineage stages/pairs.py   # prints the files, one per line
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "icon2"


def _module_file(root: Path, module: str) -> Path | None:
    """``root`` is the directory holding the package; returns the module's file, if any."""
    parts = module.split(".")
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Dotted names of the package's modules (and ``from`` targets) that ``path`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == PACKAGE
        ):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def module_imports(path: Path, root: Path) -> set[Path]:
    """The package files ``path`` imports directly: each imported module's file (a ``from``
    target that is itself a module counts as that module)."""
    found: set[Path] = set()
    for name in _imports(path):
        file = _module_file(root, name)
        if file is not None:
            found.add(file)
    return found


def import_closure(script: Path, root: Path) -> list[Path]:
    """Package files reachable from ``script`` through imports (parents' ``__init__`` too)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        current = todo.pop()
        for name in _imports(current):
            parts = name.split(".")
            # A module and every package above it are executed on import.
            for i in range(1, len(parts) + 1):
                found = _module_file(root, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return sorted(seen)


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[2]
    for arg in sys.argv[1:]:
        for f in import_closure(Path(arg), here):
            print(f.relative_to(here.parent))
