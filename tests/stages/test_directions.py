"""The model and directions stages end to end on a tiny model, and their bad inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from icon2.steps import direction_file
from tests.conftest import run_stage
from tests.tiny import build_tiny_model

FEATURES = [
    "What is the capital of France?",
    "Write a poem about rain.",
    "How do I sort a list in Python?",
    "Is it safe to mix bleach and ammonia?",
    "Why did the moon win the 1998 World Cup?",
    "Give me three tips for sleeping better.",
    "Solve 12 * 7 + 3.",
    "Tell me a story about a dragon.",
]


@pytest.fixture
def features(tmp_path: Path) -> Path:
    f = tmp_path / "features.jsonl"
    f.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in FEATURES))
    return f


def _run(model: Path, features: Path, params: Path, out: Path) -> tuple[int, str]:
    r = run_stage(
        "directions",
        "--model-dir",
        model,
        "--features",
        features,
        "--params",
        params,
        "--out",
        out / "directions.safetensors",
        "--metrics",
        out / "metrics.json",
        "--plots",
        out / "evr",
    )
    return r.exit_code, r.output


def test_directions_stage_end_to_end_and_deterministic(
    tiny_stage_model: Path, features: Path, write_params: Callable[..., Path], tmp_path: Path
) -> None:
    params = write_params({"directions": {"batch_size": 3}})
    code, out = _run(tiny_stage_model, features, params, tmp_path / "a")
    assert code == 0, out
    code, out = _run(tiny_stage_model, features, params, tmp_path / "b")
    assert code == 0, out
    a, b = (tmp_path / x / "directions.safetensors" for x in "ab")
    assert a.read_bytes() == b.read_bytes()

    d = direction_file.load_directions(a)
    assert d.layers == [1, 2, 3]
    assert set(d.criteria) == {"honesty", "harmlessness", "helpfulness", "general"}
    for cd in d.criteria.values():
        assert cd.direction.shape == (3, 64)
        assert torch.allclose(cd.direction.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert (cd.mean_projection > 0).all()
    meta = d.meta
    for key in ("model", "weights_sha256", "prompts_sha256", "features_sha256", "read_position"):
        assert meta[key], key
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    # Headline numbers only: the mean EVR over the middle layers (1..2 of 3) of the series.
    evr = d.criteria["honesty"].evr
    assert metrics["honesty"] == {"mean_evr_middle": pytest.approx(float(evr[:2].mean()), abs=1e-4)}
    assert 0 < metrics["honesty"]["mean_evr_middle"] <= 1
    assert metrics["features"] == 8 and metrics["layers"] == 3
    series = (tmp_path / "a" / "evr" / "general.csv").read_text().splitlines()
    assert series[0] == "layer,explained_variance,contrastive_norm,hidden_norm"
    assert len(series) == 4


def _assert_fails(code: int, output: str, message: str, out: Path) -> None:
    assert code == 2, output
    assert message in output, output
    assert "Traceback" not in output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"directions": {"criteria": ["honesty", "kindness"]}}, "unknown criterion 'kindness'"),
        ({"directions": {"layers": [1, 7]}}, "layer(s) [7] are outside the model"),
    ],
)
def test_bad_params_write_nothing(
    tiny_stage_model: Path,
    features: Path,
    write_params: Callable[..., Path],
    tmp_path: Path,
    override: dict[str, object],
    message: str,
) -> None:
    code, output = _run(tiny_stage_model, features, write_params(override), tmp_path / "o")
    _assert_fails(code, output, message, tmp_path / "o")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no instructions"),
        (b'{"text": "hi"}\n', "no 'instruction' field"),
        (b'{"instruction": "\xff\xfe"}\n', "not UTF-8"),
    ],
)
def test_bad_feature_files_write_nothing(
    tiny_stage_model: Path,
    write_params: Callable[..., Path],
    tmp_path: Path,
    content: bytes,
    message: str,
) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    code, output = _run(tiny_stage_model, f, write_params(), tmp_path / "o")
    _assert_fails(code, output, message, tmp_path / "o")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/model/dir", "no such model directory"),
        ("acme/not-cached-model", "this machine is offline"),
    ],
)
def test_model_stage_bad_models(
    write_params: Callable[..., Path], tmp_path: Path, model: str, message: str
) -> None:
    r = run_stage(
        "model", "--out", tmp_path / "m", "--params", write_params({"base": {"model": model}})
    )
    _assert_fails(r.exit_code, r.output, message, tmp_path / "m")


def test_model_stage_refuses_model_without_chat_template(
    write_params: Callable[..., Path], tmp_path: Path
) -> None:
    plain = build_tiny_model(tmp_path / "plain", chat_template=None)
    r = run_stage(
        "model", "--out", tmp_path / "m", "--params", write_params({"base": {"model": str(plain)}})
    )
    _assert_fails(r.exit_code, r.output, "has no chat template", tmp_path / "m")
    assert not (tmp_path / "m").exists()
