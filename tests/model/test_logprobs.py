"""Summed answer log-probabilities (icon2.model.logprobs): conversations as prompts, and the
pair scorer that reads each prompt once."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from icon2.model.chat import render
from icon2.model.logprobs import pair_logps, prompt_text, response_logps

CONV = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And a story?"},
]
PROMPTS: list[Any] = [CONV, "Hi", CONV[1:2], "Tell me a story about a dragon who cooks soup."]
CHOSEN = ["Once upon a time.", "Hello there", "Paris is the capital of France.", "No."]
REJECTED = ["No.", "Go away now, please, I am busy", "Lyon", "The dragon cooked soup for all."]


def test_a_conversation_prompt_is_the_template_with_the_assistant_header(
    tiny_model: tuple[Any, Any],
) -> None:
    _, tok = tiny_model
    assert prompt_text(tok, CONV, None) == render(tok, CONV, add_generation_prompt=True)
    assert prompt_text(tok, CONV[1:], "Be kind.") == prompt_text(tok, CONV, None)
    assert prompt_text(tok, "Hi", "S") == render(
        tok, [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    )


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_pair_logps_equals_scoring_each_answer_alone(
    tiny_model: tuple[Any, Any], batch_size: int
) -> None:
    model, tok = tiny_model
    want_c, n_c = response_logps(model, tok, PROMPTS, CHOSEN, batch_size=1)
    want_r, n_r = response_logps(model, tok, PROMPTS, REJECTED, batch_size=1)
    lc, lr, nc, nr = pair_logps(model, tok, PROMPTS, CHOSEN, REJECTED, batch_size=batch_size)
    torch.testing.assert_close(lc, want_c, atol=1e-4, rtol=0)
    torch.testing.assert_close(lr, want_r, atol=1e-4, rtol=0)
    assert nc.tolist() == n_c.tolist() and nr.tolist() == n_r.tolist()
    assert (lc < 0).all() and (lr < 0).all()
