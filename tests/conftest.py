"""Shared fixtures: tiny random chat models built offline, params files, stage runner."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from tests.tiny import build_tiny_model

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", num_layers=3)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


@pytest.fixture
def write_params(tmp_path: Path) -> Callable[..., Path]:
    """Write the repo's params.yaml with overrides into tmp_path; returns its path."""

    def write(overrides: dict[str, Any] | None = None, name: str = "params.yaml") -> Path:
        data = yaml.safe_load((REPO / "params.yaml").read_text())
        data = deep_update(data, overrides or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def load_stage(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage(name: str, *args: str | Path) -> Result:
    """Invoke a stage's Typer entry point in-process (exit code and output captured)."""
    app = typer.Typer()
    app.command()(load_stage(name).main)
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_stage_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The `model` stage's output for the tiny model (materialised once per session)."""
    root = tmp_path_factory.mktemp("stage_model")
    params = root / "params.yaml"
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["base"]["model"] = str(tiny_model_dir)
    params.write_text(yaml.safe_dump(data))
    out = root / "model"
    result = run_stage("model", "--out", out, "--params", params)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_stage_directions(tmp_path_factory: pytest.TempPathFactory, tiny_stage_model: Path) -> Path:
    """The `directions` stage's output for the tiny stage model (built once per session)."""
    root = tmp_path_factory.mktemp("stage_directions")
    features = root / "features.jsonl"
    questions = ["What is the capital of France?", "Write a poem.", "Sort a list.", "Why?"]
    features.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["directions"]["batch_size"] = 4
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    out = root / "directions.safetensors"
    args = ["--model-dir", tiny_stage_model, "--features", features, "--out", out]
    args += ["--metrics", root / "m.json", "--plots", root / "evr", "--params", params]
    result = run_stage("directions", *args)
    assert result.exit_code == 0, result.output
    return out
