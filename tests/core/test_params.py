from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from icon2.core.errors import ParamsError
from icon2.core.params import load_params

REPO = Path(__file__).resolve().parents[2]


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


def test_gpu_params_file_is_valid_and_paper_scale() -> None:
    p = load_params(REPO / "params.gpu.yaml")
    assert p.pairs.layers == list(range(10, 21))
    assert (p.pairs.gamma_pos, p.pairs.gamma_neg) == (0.1, -0.05)
    assert p.train.learning_rate == 5e-7
    assert p.train.per_device_train_batch_size * p.train.gradient_accumulation_steps == 128
    assert p.synthesize.count == 1_000_000 and p.filter.value == 100_000


def test_spa_iteration_keys_are_numbers(write_params: Callable[..., Path]) -> None:
    bad = {"spa": {"iterations": {"first": {"previous": "data/train/model"}}}}
    with pytest.raises(ParamsError, match=r"spa\.iterations: key 'first' must be"):
        load_params(write_params(bad))
