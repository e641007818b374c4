"""The evaluate stage's pieces: answering with the evaluate settings, judging, the records."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from icon2.core.params import load_params
from icon2.engines.base import Generation, Sampling
from icon2.evaluate.compare import answer, headline_metrics, judge_answers, sample_rows
from icon2.model.chat import render_prompt


class EchoBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Sampling, str | None]] = []

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: Mapping[int, torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        assert vectors is None
        self.calls.append((list(prompts), sampling, desc))
        return [Generation(f" answer {i} ", i + 1, "stop") for i in range(len(prompts))]


class LengthJudge:
    """Prefers the longer answer: P(first better) = len(first) / (len(first) + len(second))."""

    def prefer_first(
        self, instructions: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> np.ndarray:
        return np.array([len(a) / (len(a) + len(b)) for a, b in zip(first, second, strict=True)])


def test_answer_uses_the_evaluate_settings_and_the_system_turn(
    tiny_model: Any,
    write_params: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    model, tok = tiny_model
    over = {"evaluate": {"max_new_tokens": 9, "temperature": 0.3, "batch_size": 5}}
    p = load_params(write_params({"base": {"seed": 7}, **over}))
    backend, made = EchoBackend(), {}

    def make_backend(*args: Any, **kwargs: Any) -> EchoBackend:
        made.update(kwargs)
        return backend

    monkeypatch.setattr("icon2.engines.make_backend", make_backend)
    gens = answer(p, tmp_path, model, tok, ["q0", "q1"], "trained")
    assert made == {"batch_size": 5, "steering": False} and [g.token_count for g in gens] == [1, 2]
    ((prompts, sampling, desc),) = backend.calls
    assert prompts == [render_prompt(tok, q, p.base.system_prompt) for q in ("q0", "q1")]
    assert sampling == Sampling(
        max_new_tokens=9,
        temperature=0.3,
        repetition_penalty=p.evaluate.repetition_penalty,
        seed=7,
    )
    assert desc == "answers trained"


def test_judge_answers_strips_judges_and_summarises() -> None:
    trained = [Generation(" a long answer ", 3, "stop"), Generation("x", 1, "stop")]
    base = [Generation("short", 1, "stop"), Generation(" x ", 1, "stop")]
    v = judge_answers(
        LengthJudge(), ["q0", "q1"], trained, base, tie_margin=0.05, groups=["g", "h"]
    )
    assert v.trained == ["a long answer", "x"] and v.base == ["short", "x"]
    np.testing.assert_allclose(v.pref, [13 / 18, 0.5])
    assert v.summary["n"] == 2 and v.summary["tie_rate"] == 0.5
    assert v.summary["strict_win_rate"] == 0.5 and v.summary["mean_len_first"] == 2.0
    assert set(v.summary["by_group"]) == {"g", "h"}
    assert set(headline_metrics(v.summary)) >= {"win_rate", "lc_win_rate", "tie_rate"}
    rows = sample_rows(["q0", "q1"], v.trained, v.base, v.pref, limit=1)
    assert rows == [
        {
            "instruction": "q0",
            "trained": "a long answer",
            "base": "short",
            "p_trained_better": 0.7222,
        }
    ]
