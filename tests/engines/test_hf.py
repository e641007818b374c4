from __future__ import annotations

from typing import Any

import torch

from icon2.engines.base import Sampling, Steering
from icon2.engines.hf import HFBackend
from icon2.model.chat import end_of_turn_ids, render_prompt

QUESTIONS = ["Hi!", "Write a poem about the sea.", "What is 12 * 7?", "Tell me a story."]


def _backend(tiny_model: Any, batch_size: int) -> HFBackend:
    model, tok = tiny_model
    return HFBackend(model, tok, stop_ids=end_of_turn_ids(tok), batch_size=batch_size)


def test_batched_steered_generation_equals_row_by_row(tiny_model: Any) -> None:
    _, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    g = torch.Generator().manual_seed(0)
    vectors = {2: torch.randn(4, 64, generator=g), 3: torch.randn(4, 64, generator=g)}
    s = Sampling(max_new_tokens=12)
    batched = _backend(tiny_model, 4).generate(prompts, s, vectors=vectors)
    single = [
        _backend(tiny_model, 1).generate(
            [p], s, vectors={k: v[i : i + 1] for k, v in vectors.items()}
        )[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == single
    unsteered = _backend(tiny_model, 4).generate(prompts, s)
    assert unsteered != batched  # the vectors change what is generated


def test_steering_groups_equal_their_per_row_vectors(tiny_model: Any) -> None:
    """Groups are looked up per batch: the same tokens as the dense rows; swapped groups
    give other tokens."""
    _, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    g = torch.Generator().manual_seed(1)
    table = {2: 4 * torch.randn(2, 64, generator=g), 3: 4 * torch.randn(2, 64, generator=g)}
    groups = (0, 1, 1, 0)
    dense = {k: v[list(groups)] for k, v in table.items()}
    s = Sampling(max_new_tokens=12)
    backend = _backend(tiny_model, 3)  # a batch boundary inside the groups
    grouped = backend.generate(prompts, s, vectors=Steering(table, groups))
    assert grouped == backend.generate(prompts, s, vectors=dense)
    swapped = backend.generate(prompts, s, vectors=Steering(table, (1, 0, 0, 1)))
    assert swapped != grouped


def test_sampling_is_reproducible_and_finish_reasons(tiny_model: Any) -> None:
    _, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    s = Sampling(max_new_tokens=8, temperature=1.0, seed=3)
    a = _backend(tiny_model, 2).generate(prompts, s)
    b = _backend(tiny_model, 2).generate(prompts, s)
    assert a == b
    for gen in a:
        assert gen.finish_reason in {"stop", "length"}
        assert gen.token_count <= 8
        if gen.finish_reason == "length":
            assert gen.token_count == 8
