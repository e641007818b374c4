from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

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
        (
            {"select": {"criterion": "judge"}},
            r"select\.criterion: .*'reward' or 'projection_gap'.*'judge'",
        ),
        (
            {"compare": {"methods": {"self_refining": "data/x.parquet"}}},
            r"compare\.methods\.self_refining.*'icon2'.*'self_refine'",
        ),
        (
            {"baselines": {"methods": ["sampling_ranking", "best_of_n"]}},
            r"baselines\.methods\.1: .*'best_of_n'",
        ),
        (
            {"select": {"min_kept_fraction": 1.5}},
            r"select\.min_kept_fraction: .*less than or equal to 1",
        ),
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
    # Global batch 128 = per-device batch × accumulation × processes (8 GPUs under ZeRO-3).
    assert p.train.accelerate_config == "configs/accelerate/zero3.yaml"
    launch = yaml.safe_load((REPO / p.train.accelerate_config).read_text())
    tp = p.train
    assert tp.per_device_train_batch_size * tp.gradient_accumulation_steps * 8 == 128
    assert launch["num_processes"] == 8 and launch["deepspeed_config"]["zero_stage"] == 3
    assert p.synthesize.count == 1_000_000 and p.filter.value == 100_000


def test_spa_iteration_keys_are_numbers(write_params: Callable[..., Path]) -> None:
    bad = {"spa": {"iterations": {"first": {"previous": "data/train/model"}}}}
    with pytest.raises(ParamsError, match=r"spa\.iterations: key 'first' must be"):
        load_params(write_params(bad))


def test_yaml_reading_is_strict_but_reads_exponents(tmp_path: Path) -> None:
    """A key written twice anywhere is an error naming both lines; `1e-5` (a string in
    YAML 1.1) is read as the float it looks like, so strict floats do not refuse it."""
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("learning_rate: 2.0e-5", "learning_rate: 1e-5"))
    assert load_params(path).train.learning_rate == 1e-5
    path.write_text(text.replace("  beta: 0.1\n", "  beta: 0.1\n  beta: 0.2\n", 1))
    with pytest.raises(ParamsError, match=r"key 'beta' is written twice \(first on line \d+\)"):
        load_params(path)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("pairs", "gamma_neg", float("-inf"), "finite number"),
        ("train", "beta", float("nan"), "finite number"),
        ("directions", "batch_size", False, "valid integer"),
        ("train", "max_steps", 3.0, "valid integer"),
        ("base", "seed", 2**32, "32 bits"),
        ("base", "model", "", "must name a model"),
    ],
)
def test_strict_values(
    write_params: Callable[..., Path], section: str, key: str, value: object, message: str
) -> None:
    with pytest.raises(ParamsError, match=rf"{section}\.{key}: .*{message}"):
        load_params(write_params({section: {key: value}}))
