"""Tests for icon2.train.lm_head: TRL's fused head scores only answer positions on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import trl.kernels.chunked_logprob as trl_kernels
import trl.trainer.utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from icon2.train.lm_head import score_completions_only


def _scored_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    rows: list[int] = []
    original = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden: torch.Tensor, *args: Any) -> Any:
        rows.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    return rows


def test_only_answer_positions_are_scored_with_the_same_log_probs(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (2, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, -3:] = 0  # right padding on the second row
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[attention == 0] = -100
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    hand = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    hand = hand.masked_fill(labels[:, 1:] == -100, 0)
    add_fused_lm_head(model)
    rows = _scored_rows(monkeypatch)
    # TRL's own choice on the CPU: every position of the [2, 11] shifted batch.
    monkeypatch.setattr(trl_utils, "_use_triton", trl_kernels._use_triton)
    with torch.no_grad():
        every = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
    assert score_completions_only() and score_completions_only()  # idempotent
    with torch.no_grad():
        compact = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
    valid = int((labels[:, 1:] != -100).sum())
    assert rows == [2 * 11, valid] and valid < 2 * 11
    torch.testing.assert_close(compact.log_probs, hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every.log_probs, hand, atol=1e-5, rtol=1e-5)
    # The compact path gives the gradients of the full one.
    grads = []
    for use in (trl_kernels._use_triton, trl_utils._use_triton):
        model.zero_grad()
        monkeypatch.setattr(trl_utils, "_use_triton", use)
        out = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for full, compact_grad in zip(*grads, strict=True):
        torch.testing.assert_close(compact_grad, full, atol=1e-5, rtol=1e-4)
