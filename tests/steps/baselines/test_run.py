"""A7 as the stage runs it: the params decide the engine, decoding, scorer and counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from icon2.core.errors import InputError
from icon2.core.params import Params, load_params
from icon2.steps.baselines.pairs import BASELINE_PAIR_SCHEMA
from icon2.steps.baselines.run import run_baseline
from tests.steps.baselines.test_pairs import KEPT, StubBackend, StubScorer


@pytest.fixture
def params(write_params: Callable[..., Path]) -> Params:
    over = {
        "pairs": {"max_new_tokens": 9, "temperature": 0.0, "batch_size": 4},
        "baselines": {"temperature": 0.7, "top_p": 0.9, "samples_ranking": 3, "batch_size": 2},
    }
    return load_params(write_params(over))


def _stub_engine(monkeypatch: pytest.MonkeyPatch, backend: StubBackend) -> dict[str, Any]:
    made: dict[str, Any] = {}

    def make_backend(*args: Any, **kwargs: Any) -> StubBackend:
        made.update(kwargs)
        return backend

    monkeypatch.setattr("icon2.engines.make_backend", make_backend)
    return made


def test_direct_prompting_run(
    params: Params, tiny_model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, tok = tiny_model
    backend = StubBackend(truncate=[4])  # row 1's rejected answer runs out of tokens
    made = _stub_engine(monkeypatch, backend)
    run = run_baseline("direct_prompting", params, tmp_path, model, tok, "tiny", KEPT)
    assert made == {"batch_size": 4, "steering": False}
    sent, sampling = backend.calls[0]
    assert sampling.temperature == 0.0 and sampling.max_new_tokens == 9
    assert params.directions.prompts["honesty"].positive in sent[0]
    assert run.decided_by.startswith("none: chosen/rejected under the criterion's")
    assert run.pairs.schema == pl.Schema(BASELINE_PAIR_SCHEMA)
    assert run.metrics == {
        "instructions": 3,
        "pairs": 2,
        "train": 1,
        "validation": 1,
        "dropped": {"empty": 0, "truncated": 1, "identical": 0, "tied": 0},
    }
    records = [m.record() for m in run.meters]
    assert [r.category for r in records] == ["response generation", "preference annotation"]
    assert {(r.stage, r.method) for r in records} == {
        ("baselines@direct_prompting", "direct_prompting")
    }
    assert records[0].tokens_generated == 3 * 6


def test_sampling_ranking_run_samples_with_the_baselines_settings(
    params: Params, tiny_model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, tok = tiny_model
    backend = StubBackend()
    _stub_engine(monkeypatch, backend)
    asked: dict[str, Any] = {}

    def make_scorer(*args: Any, **kwargs: Any) -> StubScorer:
        asked.update(args=args, kwargs=kwargs)
        return StubScorer()

    monkeypatch.setattr("icon2.steps.baselines.run.make_scorer", make_scorer)
    limited = params.model_copy(
        update={"pairs": params.pairs.model_copy(update={"max_instructions": 2})}
    )
    run = run_baseline("sampling_ranking", limited, tmp_path, model, tok, "tiny", KEPT)
    assert asked["args"] == (None, None, (model, tok, "tiny"))
    assert asked["kwargs"] == {"dtype": params.base.dtype, "batch_size": 2}
    sent, sampling = backend.calls[0]
    assert len(sent) == 2 * 3  # two instructions, three samples each
    assert (sampling.temperature, sampling.top_p, sampling.max_new_tokens) == (0.7, 0.9, 9)
    assert run.decided_by == "stub" and run.metrics["instructions"] == 2
    assert run.pairs["scorer"].unique().to_list() == ["stub"]


def test_a_run_that_drops_every_pair_says_so(
    params: Params, tiny_model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, tok = tiny_model
    _stub_engine(monkeypatch, StubBackend(truncate=range(100)))
    with pytest.raises(InputError) as err:
        run_baseline("direct_prompting", params, tmp_path, model, tok, "tiny", KEPT)
    assert str(err.value) == (
        "baselines@direct_prompting: every pair was dropped ({'empty': 0, 'truncated': 3, "
        "'identical': 0, 'tied': 0}); raise pairs.max_new_tokens or check the scorer"
    )
