"""The params package: one public surface re-exported from small modules, no ML imports."""

from __future__ import annotations

import subprocess
import sys

import icon2.core.params as params


def test_all_names_are_exported_and_unique() -> None:
    assert len(set(params.__all__)) == len(params.__all__)
    missing = [name for name in params.__all__ if not hasattr(params, name)]
    assert not missing


def test_classes_live_in_the_submodules() -> None:
    where = {
        "BaseParams": "pipeline",
        "VLLMParams": "pipeline",
        "TrainSection": "training",
        "SPALoopParams": "training",
        "CompareParams": "comparison",
        "Params": "root",
    }
    for name, module in where.items():
        assert getattr(params, name).__module__ == f"icon2.core.params.{module}"


def test_loading_params_imports_no_ml_library() -> None:
    code = (
        "import sys; import icon2.core.params; "
        "print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
