from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from icon2.core.layers import middle_third
from icon2.model.chat import render_prompt
from icon2.model.hooks import decoder_layers, steer, tokenize_left


@contextlib.contextmanager
def _record(model: Any, store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record every layer's full output (registered after steering, so it sees it)."""
    handles = []
    for i, block in enumerate(decoder_layers(model), start=1):

        def hook(_m: Any, _i: Any, out: Any, layer: int = i) -> None:
            store[layer] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        handles.append(block.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _batch(tok: Any) -> dict[str, torch.Tensor]:
    texts = [render_prompt(tok, q) for q in ("Hi there, how are you?", "Write a poem.")]
    return tokenize_left(tok, texts, torch.device("cpu"))


def test_adds_exactly_the_vector_at_the_chosen_layer_and_nowhere_else(tiny_model: Any) -> None:
    model, tok = tiny_model
    batch = _batch(tok)
    plain: dict[int, torch.Tensor] = {}
    steered: dict[int, torch.Tensor] = {}
    vec = torch.randn(2, 64)
    with torch.no_grad(), _record(model, plain):
        model(**batch)
    with torch.no_grad(), steer(model, {2: vec}), _record(model, steered):
        model(**batch)
    torch.testing.assert_close(steered[1], plain[1], rtol=0, atol=0)  # before: untouched
    # At layer 2 the input is unchanged, so the output differs by exactly the row's vector
    # at every position (prompt and padding alike).
    torch.testing.assert_close(
        steered[2] - plain[2], vec[:, None, :].expand_as(plain[2]), rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(steered[3], plain[3])  # after: the push propagates


def test_hooks_removed_even_when_generation_raises(tiny_model: Any) -> None:
    model, tok = tiny_model
    batch = _batch(tok)
    hooks_before = [len(b._forward_hooks) for b in decoder_layers(model)]
    with torch.no_grad():
        before = model(**batch).logits
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(model, {1: torch.ones(64), 3: torch.ones(64)}),
    ):
        assert [len(b._forward_hooks) for b in decoder_layers(model)] != hooks_before
        raise RuntimeError("boom")
    # Back to exactly the hooks the model had before (transformers may keep its own).
    assert [len(b._forward_hooks) for b in decoder_layers(model)] == hooks_before
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)


def test_row_count_mismatch_is_an_error(tiny_model: Any) -> None:
    model, tok = tiny_model
    with (
        pytest.raises(ValueError, match="for 3 rows, the batch has 2"),
        steer(model, {1: torch.zeros(3, 64)}),
        torch.no_grad(),
    ):
        model(**_batch(tok))


def test_middle_third() -> None:
    assert middle_third(30) == list(range(10, 21))
    assert middle_third(3) == [1, 2]
