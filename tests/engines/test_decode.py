"""Tests for icon2.engines.decode: finished rows leave the batch, the tokens do not change."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tqdm.auto import tqdm

from icon2.engines.base import Sampling
from icon2.engines.hf import HFBackend
from icon2.model.chat import render_prompt
from icon2.model.hooks import decoder_layers, tokenize_left

QUESTIONS = [
    "Hi!",
    "Write a poem about the sea and the wind.",
    "What is 12 * 7?",
    "A story.",
    "Name three colours.",
    "Why is the sky blue? Explain it to a child in simple words.",
]


def _stops_ending_rows_early(
    tiny_model: Any, prompts: list[str], s: Sampling, vectors: Any = None
) -> list[int]:
    """Stop ids that end rows at different steps: tokens the rows themselves generate (a
    random tiny model rarely emits its end-of-turn token)."""
    model, tok = tiny_model
    free = HFBackend(model, tok, stop_ids=[], batch_size=len(prompts), drop_finished=False)
    batch = tokenize_left(tok, prompts, torch.device("cpu"))
    batch.pop("position_ids")
    rows = free._new_tokens(batch, s, dict(vectors or {}), tqdm(disable=True))
    return sorted({rows[0][2], rows[2][6]})


def _row_steps(model: Any) -> tuple[list[int], Any]:
    """Batch size of every forward through the first decoder layer (a hook)."""
    seen: list[int] = []
    handle = decoder_layers(model)[0].register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).shape[0])
    )
    return seen, handle


@pytest.mark.parametrize("sign", [0.0, 1.0, -1.0])
def test_greedy_tokens_equal_generate_while_finished_rows_leave(
    tiny_model: Any, sign: float
) -> None:
    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    s = Sampling(max_new_tokens=20, repetition_penalty=1.1)
    g = torch.Generator().manual_seed(0)
    vectors = {2: sign * 4 * torch.randn(len(prompts), 64, generator=g)} if sign else None
    stops = _stops_ending_rows_early(tiny_model, prompts, s, vectors)
    n = len(prompts)
    dropping = HFBackend(model, tok, stop_ids=stops, batch_size=n)
    plain = HFBackend(model, tok, stop_ids=stops, batch_size=n, drop_finished=False)
    seen, handle = _row_steps(model)
    try:
        ours = dropping.generate(prompts, s, vectors=vectors)
        ours_steps = list(seen)
        seen.clear()
        theirs = plain.generate(prompts, s, vectors=vectors)
    finally:
        handle.remove()
    assert ours == theirs
    # Rows really ended, at different steps.
    assert "stop" in {x.finish_reason for x in ours} and len({x.token_count for x in ours}) > 1
    # generate runs every row until the last one ends; the loop drops finished rows, so the
    # batch shrinks and it computes fewer row-steps for the same tokens.
    assert seen[1:] == [n] * (len(seen) - 1)
    assert min(ours_steps) < n and sum(ours_steps) < sum(seen)


def test_steering_rows_follow_their_rows_after_a_drop(tiny_model: Any) -> None:
    """Each row keeps its own vector once others have left: equal to one row at a time."""
    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    s = Sampling(max_new_tokens=16)
    g = torch.Generator().manual_seed(2)
    vectors = {1: 3 * torch.randn(len(prompts), 64, generator=g)}
    stops = _stops_ending_rows_early(tiny_model, prompts, s, vectors)
    batched = HFBackend(model, tok, stop_ids=stops, batch_size=len(prompts)).generate(
        prompts, s, vectors=vectors
    )
    alone = [
        HFBackend(model, tok, stop_ids=stops, batch_size=1).generate(
            [p], s, vectors={k: v[i : i + 1] for k, v in vectors.items()}
        )[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == alone
    # Reversing the rows' vectors changes the rows' answers: the vectors are per row.
    flipped = {k: v.flip(0) for k, v in vectors.items()}
    assert (
        HFBackend(model, tok, stop_ids=stops, batch_size=len(prompts)).generate(
            prompts, s, vectors=flipped
        )
        != batched
    )


def test_ignore_eos_generates_the_whole_budget_like_generate(tiny_model: Any) -> None:
    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS[:3]]
    s = Sampling(max_new_tokens=9, ignore_eos=True, repetition_penalty=1.05)
    stops = _stops_ending_rows_early(tiny_model, prompts, Sampling(max_new_tokens=9))
    ours = HFBackend(model, tok, stop_ids=stops, batch_size=3).generate(prompts, s)
    theirs = HFBackend(model, tok, stop_ids=stops, batch_size=3, drop_finished=False)
    assert ours == theirs.generate(prompts, s)
    assert all(x.token_count == 9 and x.finish_reason == "length" for x in ours)


def test_sampling_is_seeded_and_the_cache_kind_does_not_matter(tiny_model: Any) -> None:
    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    s = Sampling(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=4)
    stops = _stops_ending_rows_early(tiny_model, prompts, Sampling(max_new_tokens=12))
    one = HFBackend(model, tok, stop_ids=stops, batch_size=3).generate(prompts, s)
    again = HFBackend(model, tok, stop_ids=stops, batch_size=3).generate(prompts, s)
    dynamic = HFBackend(model, tok, stop_ids=stops, batch_size=3, kv_cache="dynamic")
    assert one == again == dynamic.generate(prompts, s)
    other_seed = Sampling(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5)
    assert HFBackend(model, tok, stop_ids=stops, batch_size=3).generate(prompts, other_seed) != one


def test_a_model_generate_must_cache_itself_falls_back_to_generate(
    tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icon2.engines import hf as hf_engine

    model, tok = tiny_model
    monkeypatch.setattr(hf_engine, "cache_argument", lambda m: None)
    called: list[int] = []
    monkeypatch.setattr(
        hf_engine, "decode_dropping_finished", lambda *a, **k: called.append(1) or []
    )
    backend = HFBackend(model, tok, stop_ids=[], batch_size=2)
    got = backend.generate([render_prompt(tok, "Hi!")], Sampling(max_new_tokens=3))
    assert not called and got[0].token_count == 3


def test_sampled_tokens_equal_generate_while_no_row_leaves(tiny_model: Any) -> None:
    """With every row running to the budget the random stream is consumed as in generate:
    the same samples, so temperature, top-p and their order match generate's."""
    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS[:4]]
    stops = _stops_ending_rows_early(tiny_model, prompts, Sampling(max_new_tokens=10))
    for s in (
        Sampling(max_new_tokens=10, temperature=0.7, top_p=0.8, seed=1, ignore_eos=True),
        Sampling(max_new_tokens=10, temperature=1.3, seed=2, ignore_eos=True),
    ):
        ours = HFBackend(model, tok, stop_ids=stops, batch_size=4).generate(prompts, s)
        theirs = HFBackend(model, tok, stop_ids=stops, batch_size=4, drop_finished=False)
        assert ours == theirs.generate(prompts, s)


def test_a_config_processor_the_loop_lacks_sends_decoding_to_generate(tiny_model: Any) -> None:
    import copy

    from icon2.engines.decode import loop_fits

    model, tok = tiny_model
    assert loop_fits(model)
    banned = copy.deepcopy(model)
    banned.generation_config.no_repeat_ngram_size = 2
    assert not loop_fits(banned)
    assert HFBackend(banned, tok, stop_ids=[], batch_size=2)._loop_argument is None
    assert HFBackend(model, tok, stop_ids=[], batch_size=2)._loop_argument is not None


def test_progress_counts_rows_as_they_end(tiny_model: Any) -> None:
    from icon2.engines.decode import decode_dropping_finished
    from icon2.engines.kv_cache import cache_argument, reserved_cache

    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    s = Sampling(max_new_tokens=20)
    stops = _stops_ending_rows_early(tiny_model, prompts, s)
    batch = tokenize_left(tok, prompts, torch.device("cpu"))
    batch.pop("position_ids")
    calls: list[int] = []
    rows = decode_dropping_finished(
        model,
        batch,
        s,
        stop_ids=stops,
        cache=reserved_cache(model, s.max_new_tokens),
        cache_argument=str(cache_argument(model)),
        on_finished=calls.append,
    )
    ended = sum(1 for r in rows if r and r[-1] in stops)
    assert sum(calls) == ended > 0 and len(calls) > 1  # reported step by step, each row once
