"""The scorers: the LLM judge's 1-9 rating and a reward-model directory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from icon2.core.errors import ModelError
from icon2.steps.scorers import JudgeScorer, Scorer, make_scorer
from tests.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any, Path]:
    folder = build_tiny_model(Path(tempfile.mkdtemp()) / "m", num_layers=2)
    return (
        AutoModelForCausalLM.from_pretrained(folder).eval(),
        AutoTokenizer.from_pretrained(folder),
        folder,
    )


def test_judge_scorer_rates_in_range_order_free(tiny: tuple[Any, Any, Path]) -> None:
    model, tok, _ = tiny
    scorer: Scorer = JudgeScorer(model, tok, name="tiny", batch_size=2)
    qs, answers = ["q1", "q2", "q1"], ["Paris.", "Use sorted().", "Paris."]
    s = scorer.score(qs, answers)
    assert s.shape == (3,) and np.all((s >= 1) & (s <= 9)) and s[0] == s[2]
    np.testing.assert_array_equal(scorer.score(qs[::-1], answers[::-1]), s[::-1])
    assert scorer.name == "judge:tiny" and scorer.tokens_read > 0  # type: ignore[attr-defined]


def test_reward_model_scorer_and_bad_directory(tiny: tuple[Any, Any, Path], tmp_path: Path) -> None:
    model, tok, folder = tiny
    with pytest.raises(ModelError, match="not a sequence classifier"):
        make_scorer(str(folder), None, (model, tok, "tiny"), dtype="float32", batch_size=2)
    cfg = LlamaConfig(**{**model.config.to_dict(), "num_labels": 1, "architectures": None})
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(cfg).eval()
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = make_scorer(
        str(tmp_path / "rm"), None, (model, tok, "tiny"), dtype="float32", batch_size=2
    )
    s = scorer.score(["q", "q"], ["a", "b"])
    assert scorer.name == "reward_model:rm" and s.shape == (2,) and s[0] != s[1]
    default = make_scorer(None, None, (model, tok, "tiny"), dtype="float32", batch_size=2)
    assert default.name == "judge:tiny"
