from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from icon2.errors import ParamsError
from icon2.params import load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load() -> None:
    p = load_params(REPO / "params.yaml")
    assert p.base.model == "smollm2-135m-instruct"
    assert p.directions.criteria == ["honesty", "harmlessness", "helpfulness", "general"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"base": {"sede": 1}}, r"base\.sede: unknown key"),
        ({"nonsense": {}}, r"unknown section\(s\) \['nonsense'\]"),
        ({"base": {"seed": "zero"}}, r"base\.seed: .*integer.*'zero'"),
        ({"base": {"dtype": "float8"}}, r"base\.dtype: .*'float32'.*'float8'"),
        (
            {"directions": {"batch_size": 0}},
            r"directions\.batch_size: .*greater than or equal to 1",
        ),
        ({"directions": {"criteria": ["honesty", "kindness"]}}, r"unknown criterion 'kindness'"),
    ],
)
def test_bad_params_name_the_key(
    write_params: Callable[..., Path], override: dict[str, object], message: str
) -> None:
    with pytest.raises(ParamsError, match=message):
        load_params(write_params(override))


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)
