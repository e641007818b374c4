"""Part B: one SPA iteration's inputs and self-annotation as the `spa@t` stage runs it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from icon2.core.errors import InputError, ParamsError
from icon2.core.params import load_params
from icon2.core.tables import SPA_PAIR_SCHEMA
from icon2.engines.base import Generation, Sampling
from icon2.steps.self_annotation import (
    HEADLINE,
    Annotation,
    annotate_iteration,
    check_previous,
    prompt_slice,
)


class TwoAnswers:
    """First pass: a long answer; second pass: a short one (the pairs are never identical)."""

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
        self.calls.append((list(prompts), sampling, desc))
        n = len(prompts) // 2
        return [
            Generation("A long and careful answer." if i < n else "Short.", 5, "stop")
            for i in range(len(prompts))
        ]


def test_check_previous_names_the_iteration_key(tmp_path: Path) -> None:
    check_previous(tmp_path, "1")
    with pytest.raises(ParamsError) as err:
        check_previous(tmp_path / "missing", "2")
    assert str(err.value) == (
        f"spa.iterations.2.previous: {tmp_path / 'missing'} does not exist; run the stage "
        f"that writes it first (`dvc repro spa/dvc.yaml` runs them in order)"
    )


def test_prompt_slice_is_disjoint_per_iteration() -> None:
    texts = [f"q{i}" for i in range(5)]
    assert prompt_slice(texts, 1, 2, "p") == ["q0", "q1"]
    assert prompt_slice(texts, 3, 2, "p") == ["q4"]
    with pytest.raises(InputError, match="no prompts left for spa iteration 4"):
        prompt_slice(texts, 4, 2, "p")


def test_headline_keeps_the_reported_counts() -> None:
    counts: dict[str, int | float] = {k: 1 for k in HEADLINE} | {"prompts": 3, "dropped": 2}
    annotation = Annotation(pl.DataFrame(schema=SPA_PAIR_SCHEMA), counts)
    assert annotation.headline() == dict.fromkeys(HEADLINE, 1)


def test_annotate_iteration_on_one_process(
    tiny_model: Any,
    write_params: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    model, tok = tiny_model
    over = {"spa": {"max_new_tokens": 12, "temperature": 0.9, "batch_size": 3}}
    p = load_params(write_params(over))
    backend, made = TwoAnswers(), {}

    def make_backend(*args: Any, **kwargs: Any) -> TwoAnswers:
        made.update(kwargs)
        return backend

    monkeypatch.setattr("icon2.engines.make_backend", make_backend)
    out = annotate_iteration(p, "2", tmp_path, model, model, tok, ["q0", "q1"], seed=11)
    assert made == {"batch_size": 3, "steering": False}
    ((prompts, sampling, desc),) = backend.calls
    assert len(prompts) == 4 and desc == "spa@2 sample"
    assert sampling == Sampling(max_new_tokens=12, temperature=0.9, seed=11)
    # π_{t−1} = π_init: every implicit reward is 0, so the pairs tie.
    assert out.counts["pairs"] == 2 and out.counts["tied_rewards"] == 2
    assert out.table["prompt"][0].to_list()[0] == {
        "role": "system",
        "content": p.base.system_prompt,
    }
