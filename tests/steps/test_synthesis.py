"""A2: sampling user turns from the pre-query template, and the stage's assembly."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from icon2.core.errors import InputError
from icon2.core.params import load_params
from icon2.engines.base import Generation, Sampling
from icon2.model.chat import pre_query_template
from icon2.steps.synthesis import from_file, make_instructions, synthesize

TEXTS = ["Write a haiku about rain.", "Explain recursion simply.\nThen stop.", "Hi", "Explain"]


class ScriptBackend:
    """Returns TEXTS in turn (the last one cut by the token budget)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Sampling]] = []

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: Mapping[int, torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        self.calls.append((list(prompts), sampling))
        return [
            Generation(TEXTS[i % 4], 5, "length" if i % 4 == 3 else "stop")
            for i in range(len(prompts))
        ]


def test_synthesize_and_from_file_share_the_raw_shape() -> None:
    raw = synthesize(ScriptBackend(), "PRE", 4, Sampling(seed=3), stop_at_newline=True)
    assert raw["text"][1] == "Explain recursion simply." and raw["finish_reason"][1] == "stop"
    assert raw["seed"].to_list() == [3] * 4
    assert from_file(["a b c"]).row(0) == ("a b c", "stop", 3, 0)


def test_make_instructions_samples_cleans_and_meters(
    tiny_model: Any,
    write_params: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    model, tok = tiny_model
    over = {"count": 4, "min_chars": 5, "max_new_tokens": 11, "near_dup_threshold": None}
    p = load_params(write_params({"synthesize": over}))
    backend = ScriptBackend()
    monkeypatch.setattr("icon2.engines.make_backend", lambda *a, **k: backend)
    out = make_instructions(
        p, tmp_path, model, tok, None, embed=None, seed=5, target=tmp_path / "i.parquet"
    )
    ((prompts, sampling),) = backend.calls
    assert out.template == pre_query_template(tok) and prompts == [out.template] * 4
    assert sampling.seed == 5 and sampling.max_new_tokens == 11
    assert out.kept["instruction"].to_list() == TEXTS[:2]  # "Hi" too short, the last truncated
    assert out.metrics["raw"] == 4 and out.metrics["kept"] == 2
    assert out.dropped == {"too_short": 1} and out.metrics["truncated"] == 1
    assert set(out.metrics) == {"raw", "kept", "truncated", "distinct_2", "mean_words"}
    assert 0.0 < out.metrics["distinct_2"] <= 1.0 and out.metrics["mean_words"] == 5.0
    rec = out.meter.record()
    assert (rec.stage, rec.method, rec.category) == ("synthesize", "shared", "response generation")
    assert rec.tokens_generated == 20


def test_make_instructions_from_a_file_generates_nothing(
    tiny_model: Any, write_params: Callable[..., Path], tmp_path: Path
) -> None:
    model, tok = tiny_model
    p = load_params(write_params({"synthesize": {"near_dup_threshold": None}}))
    out = make_instructions(
        p,
        tmp_path,
        model,
        tok,
        ["Name three rivers.", "name three rivers"],
        embed=None,
        seed=0,
        target=tmp_path / "i.parquet",
    )
    assert out.template is None and out.kept["instruction"].to_list() == ["Name three rivers."]
    assert out.dropped == {"duplicate": 1} and out.meter.record().tokens_generated == 0


def test_make_instructions_that_drop_everything_name_the_rules(
    tiny_model: Any, write_params: Callable[..., Path], tmp_path: Path
) -> None:
    model, tok = tiny_model
    over = {"min_chars": 300, "max_chars": 400, "near_dup_threshold": None}
    p = load_params(write_params({"synthesize": over}))
    target = tmp_path / "instructions.parquet"
    with pytest.raises(InputError) as err:
        make_instructions(
            p, tmp_path, model, tok, ["Too short."], embed=None, seed=0, target=target
        )
    assert str(err.value) == (
        "synthesize: all 1 samples were dropped by the cleaning rules {'too_short': 1} "
        f"(synthesize.min_chars=300, max_chars=400, max_new_tokens="
        f"{p.synthesize.max_new_tokens}); nothing written to {target}"
    )
