"""Local judges: swap symmetry, batching invariance, reward-model Bradley–Terry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.special import expit

from icon2.core.errors import ModelError
from icon2.model.chat import messages, render
from icon2.steps.judge import JUDGE_TEMPLATE, LMJudge, RewardModelJudge
from tests.tiny import build_tiny_model

INSTRUCTIONS = [
    "What is the capital of France?",
    "How do I sort a list in Python?",
    "Is it safe to mix bleach and ammonia?",
    "Write a short poem about the sea.",
]
FIRST = [
    "Paris is the capital of France.",
    "Use the sorted function.",
    "No, it makes toxic gas; never do it.",
    "The wind and the light of the morning.",
]
SECOND = [
    "Lyon.",
    "You can call list.sort() on the list, or sorted(list) for a new one, in Python.",
    "Yes.",
    "Sea sea sea.",
]


def test_template_has_placeholders() -> None:
    text = JUDGE_TEMPLATE.format(instruction="I", answer_a="X", answer_b="Y")
    assert "X" in text and "Y" in text and "A or B" in text


def test_lm_judge_symmetry_and_ties(tiny_model: Any) -> None:
    model, tokenizer = tiny_model
    judge = LMJudge(model, tokenizer, batch_size=4)
    assert judge.token_a != judge.token_b
    p = judge.prefer_first(INSTRUCTIONS, FIRST, SECOND)
    q = judge.prefer_first(INSTRUCTIONS, SECOND, FIRST)
    assert p.dtype == np.float64 and p.shape == (4,)
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, 1.0 - q, atol=1e-6)
    same = judge.prefer_first(INSTRUCTIONS, FIRST, FIRST)
    assert np.all(same == 0.5)


def test_order_probability_batching(tiny_model: Any) -> None:
    model, tokenizer = tiny_model
    batched = LMJudge(model, tokenizer, batch_size=4).order_probability(INSTRUCTIONS, FIRST, SECOND)
    single = LMJudge(model, tokenizer, batch_size=1).order_probability(INSTRUCTIONS, FIRST, SECOND)
    assert np.all((batched > 0) & (batched < 1))
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_answers_are_truncated(tiny_model: Any) -> None:
    model, tokenizer = tiny_model
    judge = LMJudge(model, tokenizer, max_answer_chars=10)
    short = judge.order_probability(INSTRUCTIONS[:1], ["x" * 10], ["y"])
    long = judge.order_probability(INSTRUCTIONS[:1], ["x" * 500], ["y"])
    assert short[0] == long[0]


def test_no_chat_template_raises(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path / "plain", chat_template=None)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with pytest.raises(ModelError, match="chat template"):
        LMJudge(model, tokenizer)
    with pytest.raises(ModelError, match="chat template"):
        RewardModelJudge(model, tokenizer)


@pytest.fixture
def reward_model(tiny_model: Any, tmp_path: Path) -> Any:
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    model, tokenizer = tiny_model
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    return AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()


def test_reward_model_judge(tiny_model: Any, reward_model: Any) -> None:
    _, tokenizer = tiny_model
    judge = RewardModelJudge(reward_model, tokenizer, batch_size=3)
    p = judge.prefer_first(INSTRUCTIONS, FIRST, SECOND)
    q = judge.prefer_first(INSTRUCTIONS, SECOND, FIRST)
    np.testing.assert_allclose(p, 1.0 - q, atol=1e-6)
    assert np.all(judge.prefer_first(INSTRUCTIONS, FIRST, FIRST) == 0.5)

    def score(instruction: str, answer: str) -> float:
        # One unpadded conversation at a time, independently of the judge's batching.
        conv = [*messages(instruction), {"role": "assistant", "content": answer}]
        text = render(tokenizer, conv, add_generation_prompt=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return float(reward_model(input_ids=ids).logits[0, 0])

    want = [
        expit(score(i, a) - score(i, b))
        for i, a, b in zip(INSTRUCTIONS, FIRST, SECOND, strict=True)
    ]
    np.testing.assert_allclose(p, want, atol=1e-5)
    assert not np.allclose(p, 0.5)  # the random head does discriminate


def test_reward_model_needs_one_label(tiny_model: Any, tmp_path: Path) -> None:
    from transformers import LlamaForSequenceClassification

    model, tokenizer = tiny_model
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_labels = 2
    with pytest.raises(ModelError, match="num_labels"):
        RewardModelJudge(LlamaForSequenceClassification(config).eval(), tokenizer)
