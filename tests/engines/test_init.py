"""Tests for icon2.engines.make_backend's HF engine: the bf16 generating copy (hf.dtype)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from icon2.core.params import load_params
from icon2.engines import generating_copy, make_backend
from icon2.engines.base import Sampling
from icon2.engines.hf import HFBackend
from icon2.model.chat import end_of_turn_ids, render_prompt

ROOT = Path(__file__).resolve().parents[2]


def test_default_params_decode_with_a_bf16_copy_and_leave_the_model_alone(
    tiny_model: Any, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model
    p = load_params(ROOT / "params.yaml")  # the default run: base.dtype float32, hf.dtype bf16
    assert p.base.dtype == "float32" and p.hf.dtype == "bfloat16"
    backend = make_backend(p, ROOT, model, tok, batch_size=2)
    assert isinstance(backend, HFBackend)
    assert backend.model.dtype == torch.bfloat16 and backend.model is not model
    assert model.dtype == torch.float32  # states, log-probs and training keep base.dtype
    prompt = [render_prompt(tok, "What is 12 * 7?")]
    s = Sampling(max_new_tokens=8)
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    independent = HFBackend(bf16, tok, stop_ids=end_of_turn_ids(tok), batch_size=2)
    assert backend.generate(prompt, s) == independent.generate(prompt, s)


def test_null_or_equal_dtype_decodes_with_the_model_itself(tiny_model: Any) -> None:
    model, _ = tiny_model
    p = load_params(ROOT / "params.yaml")
    assert (
        generating_copy(model, p.model_copy(update={"hf": p.hf.model_copy(update={"dtype": None})}))
        is model
    )
    assert (
        generating_copy(
            model, p.model_copy(update={"hf": p.hf.model_copy(update={"dtype": "float32"})})
        )
        is model
    )
