"""Tests for icon2.engines.make_backend's HF engine: the generating copy (hf.dtype)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from icon2.core.params import load_params
from icon2.engines import generating_copy, make_backend
from icon2.engines.base import Sampling
from icon2.engines.hf import HFBackend
from icon2.model.chat import end_of_turn_ids, render_prompt

ROOT = Path(__file__).resolve().parents[2]


def test_auto_decodes_with_a_bf16_copy_where_bf16_is_native_and_leaves_the_model_alone(
    tiny_model: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model
    p = load_params(ROOT / "params.yaml")  # the default run: base.dtype float32, hf.dtype auto
    assert p.base.dtype == "float32" and p.hf.dtype == "auto"
    monkeypatch.setenv("ICON2_BF16_NATIVE", "1")  # an AMX / AVX512-BF16 CPU
    backend = make_backend(p, ROOT, model, tok, batch_size=2)
    assert isinstance(backend, HFBackend)
    assert backend.model.dtype == torch.bfloat16 and backend.model is not model
    assert model.dtype == torch.float32  # states, log-probs and training keep base.dtype
    prompt = [render_prompt(tok, "What is 12 * 7?")]
    s = Sampling(max_new_tokens=8)
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    independent = HFBackend(bf16, tok, stop_ids=end_of_turn_ids(tok), batch_size=2)
    assert backend.generate(prompt, s) == independent.generate(prompt, s)


def test_auto_decodes_with_the_model_itself_where_bf16_is_emulated(
    tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny_model
    monkeypatch.setenv("ICON2_BF16_NATIVE", "0")  # an AVX2-only CPU
    backend = make_backend(load_params(ROOT / "params.yaml"), ROOT, model, tok, batch_size=2)
    assert isinstance(backend, HFBackend) and backend.model is model


def test_null_or_equal_dtype_decodes_with_the_model_itself(tiny_model: Any) -> None:
    model, _ = tiny_model
    assert generating_copy(model, "null") is model
    assert generating_copy(model, "float32") is model
    assert generating_copy(model, "bfloat16").dtype == torch.bfloat16
