from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache, MistralConfig, MistralForCausalLM
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from icon2.engines import hf as hf_engine
from icon2.engines.base import Sampling
from icon2.engines.hf import HFBackend
from icon2.engines.kv_cache import ReservedLayer, cache_argument, reserved_cache
from icon2.model.chat import end_of_turn_ids, render_prompt

QUESTIONS = ["Hi!", "Write a poem about the sea and the wind.", "What is 12 * 7?", "A story."]


def _states(g: torch.Generator, batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch, 2, tokens, 4)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _same(a: DynamicLayer, b: DynamicLayer) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_reserved_layer_holds_what_a_dynamic_layer_holds() -> None:
    g = torch.Generator().manual_seed(0)
    reserved, dynamic = ReservedLayer(reserve=3), DynamicLayer()
    writes: list[tuple[int, int]] = [(3, 5)] + [(3, 1)] * 300  # prefill, then decode steps
    for batch, tokens in writes:
        k, v = _states(g, batch, tokens)
        out_r, out_d = reserved.update(k, v), dynamic.update(k, v)
        assert torch.equal(out_r[0], out_d[0]) and torch.equal(out_r[1], out_d[1])
    _same(reserved, dynamic)
    assert reserved._key_buffer is not None
    assert reserved.keys.data_ptr() == reserved._key_buffer.data_ptr()  # a view, not a copy
    # Every layer operation generate may use, each followed by a write.
    for op in (
        lambda layer: layer.crop(-7),
        lambda layer: layer.batch_select_indices(torch.tensor([2, 0])),
        lambda layer: layer.batch_repeat_interleave(2),
        lambda layer: layer.reorder_cache(torch.tensor([3, 1, 0, 2])),
    ):
        op(reserved)
        op(dynamic)
        _same(reserved, dynamic)
        k, v = _states(g, reserved.keys.shape[0], 2)
        reserved.update(k, v)
        dynamic.update(k, v)
        _same(reserved, dynamic)
    reserved.reset()
    dynamic.reset()
    k, v = _states(g, 5, 4)  # a new batch size after a reset
    reserved.update(k, v)
    dynamic.update(k, v)
    _same(reserved, dynamic)


def test_reserved_cache_keeps_sliding_window_layers() -> None:
    config = MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, sliding_window=8,
    )  # fmt: skip
    model = MistralForCausalLM(config)
    plain = DynamicCache(config=config)
    assert all(type(layer) is DynamicSlidingWindowLayer for layer in plain.layers)
    cache = reserved_cache(model, reserve=16)
    assert [type(layer) for layer in cache.layers] == [type(x) for x in plain.layers]


def _generate_plain(model: Any, tok: Any, prompts: list[str], s: Sampling) -> list[list[int]]:
    """transformers' own generate, default cache, one prompt at a time (no padding)."""
    out = []
    for p in prompts:
        ids = tok(p, add_special_tokens=False, return_tensors="pt")
        torch.manual_seed(0)
        seq = model.generate(
            **ids, max_new_tokens=s.max_new_tokens, do_sample=False, temperature=None,
            top_p=None, top_k=None, eos_token_id=end_of_turn_ids(tok),
            pad_token_id=tok.pad_token_id, repetition_penalty=s.repetition_penalty,
        )  # fmt: skip
        out.append(tok(tok.decode(seq[0, ids["input_ids"].shape[1] :], skip_special_tokens=True),
                       add_special_tokens=False)["input_ids"])  # fmt: skip
    return out


def test_backend_generates_what_the_dynamic_cache_generates(
    tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny_model
    prompts = [render_prompt(tok, q) for q in QUESTIONS]  # different lengths: left padding
    made: list[DynamicCache] = []

    def spy(m: Any, reserve: int) -> DynamicCache:
        made.append(reserved_cache(m, reserve))
        return made[-1]

    monkeypatch.setattr(hf_engine, "reserved_cache", spy)
    stop = end_of_turn_ids(tok)
    g = torch.Generator().manual_seed(1)
    vectors = {2: 4 * torch.randn(4, 64, generator=g)}
    for s in (Sampling(max_new_tokens=24, repetition_penalty=1.1),
              Sampling(max_new_tokens=24, temperature=1.0, seed=5)):  # fmt: skip
        for vecs in (None, vectors, {k: -v for k, v in vectors.items()}):
            made.clear()
            reserved = HFBackend(model, tok, stop_ids=stop, batch_size=4).generate(
                prompts, s, vectors=vecs
            )
            dynamic = HFBackend(model, tok, stop_ids=stop, batch_size=4, kv_cache="dynamic")
            assert reserved == dynamic.generate(prompts, s, vectors=vecs)
            # The reserved cache was the one generate filled: one per batch, every layer a
            # view of a buffer sized prompt + budget at the prefill.
            assert len(made) == 1
            layers = made[0].layers
            assert all(isinstance(layer, ReservedLayer) for layer in layers)
            longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            longest_answer = max(gen.token_count for gen in reserved)
            assert layers[0].get_seq_length() == longest + longest_answer - 1
            buffer = layers[0]._key_buffer
            assert buffer is not None and buffer.shape[-2] == longest + s.max_new_tokens
            assert layers[0].keys.data_ptr() == buffer.data_ptr()
    # And, unsteered and greedy, what transformers' generate gives each prompt on its own.
    s = Sampling(max_new_tokens=24, repetition_penalty=1.1)
    ours = HFBackend(model, tok, stop_ids=stop, batch_size=4).generate(prompts, s)
    plain = _generate_plain(model, tok, prompts, s)
    assert [tok(g.text, add_special_tokens=False)["input_ids"] for g in ours] == plain


def test_a_checkpoint_naming_its_own_cache_keeps_it(
    tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate refuses a cache object beside a configured cache_implementation: the engine
    then lets generate build the configured cache, and generates the same tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    s = Sampling(max_new_tokens=12)
    stop = end_of_turn_ids(tok)
    reserved = HFBackend(model, tok, stop_ids=stop, batch_size=4).generate(prompts, s)
    model.generation_config.cache_implementation = "dynamic"
    made: list[Any] = []
    monkeypatch.setattr(hf_engine, "reserved_cache", lambda *a: made.append(a))
    assert cache_argument(model) is None
    assert HFBackend(model, tok, stop_ids=stop, batch_size=4).generate(prompts, s) == reserved
    assert made == []
