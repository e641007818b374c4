from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from icon2.core.errors import ModelError
from icon2.model.chat import end_of_turn_ids, pre_query_template, render_prompt
from icon2.model.states import answer_token_means, last_token_states

QUESTIONS = [
    "What is the capital of France?",
    "Write a poem.",
    "How do I sort a list in Python using the sorted function and a key?",
    "Solve 12 * 7.",
    "Tell me a story about a dragon who learned to cook soup.",
]


def test_batched_equals_one_at_a_time(tiny_model: Any) -> None:
    model, tok = tiny_model
    texts = [render_prompt(tok, q, "You are an honest assistant.") for q in QUESTIONS]
    batched = last_token_states(model, tok, texts, batch_size=4)
    single = torch.cat([last_token_states(model, tok, [t], batch_size=1) for t in texts])
    assert batched.shape == (5, 3, 64)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_matches_output_hidden_states(tiny_model: Any) -> None:
    model, tok = tiny_model
    text = render_prompt(tok, QUESTIONS[0])
    ours = last_token_states(model, tok, [text], layers=[1, 2])
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    torch.testing.assert_close(ours[0, 0], hs[1][0, -1])
    torch.testing.assert_close(ours[0, 1], hs[2][0, -1])


def test_shared_prefix_cache_equals_plain_read(tiny_model: Any) -> None:
    model, tok = tiny_model
    system = "You are a helpful assistant. Be harmless."
    texts = [render_prompt(tok, q, system) for q in QUESTIONS]
    plain = last_token_states(model, tok, texts, batch_size=3)
    with warnings.catch_warnings():
        # The cache goes by the name this transformers uses: no renamed-argument warning
        # (it printed in every `directions` run).
        warnings.simplefilter("error", FutureWarning)
        shared = last_token_states(
            model, tok, texts, batch_size=3, shared_prefix=pre_query_template(tok, system)
        )
    torch.testing.assert_close(plain, shared, rtol=1e-4, atol=1e-5)


def test_layer_subset_and_order(tiny_model: Any) -> None:
    model, tok = tiny_model
    texts = [render_prompt(tok, q) for q in QUESTIONS[:2]]
    full = last_token_states(model, tok, texts)
    sub = last_token_states(model, tok, texts, layers=[3, 1])
    torch.testing.assert_close(sub[:, 0], full[:, 2])
    torch.testing.assert_close(sub[:, 1], full[:, 0])


def test_layer_outside_model_is_an_error(tiny_model: Any) -> None:
    model, tok = tiny_model
    with pytest.raises(ModelError, match=r"layer\(s\) \[4\] are outside the model.*1\.\.3"):
        last_token_states(model, tok, ["x"], layers=[1, 4])


ANSWERS = ["Paris.", "Roses are red, violets are blue.", "sorted(xs, key=len)", "84", ""]


def test_answer_token_means_average_exactly_the_answer_tokens(tiny_model: Any) -> None:
    model, tok = tiny_model
    system = "You are an honest assistant."
    got = answer_token_means(
        model, tok, QUESTIONS, ANSWERS, layers=[1, 3], system=system, batch_size=3
    )
    assert got.shape == (5, 2, 64)
    for i in range(4):
        p = tok(render_prompt(tok, QUESTIONS[i], system), add_special_tokens=False)["input_ids"]
        a = tok(ANSWERS[i], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hs = model(torch.tensor([p + a]), output_hidden_states=True).hidden_states
        # Layer 3 is the last: HF's hidden_states[-1] is after the final norm, so compare
        # layer 1 with hidden_states and check layer 3 by its own one-row read.
        want = hs[1][0, len(p) :].mean(dim=0)
        torch.testing.assert_close(got[i, 0], want, rtol=1e-4, atol=1e-5)
        # Not the prompt's tokens, not an end-of-turn token appended to the answer.
        with_prompt = hs[1][0].mean(dim=0)
        assert not torch.allclose(got[i, 0], with_prompt, atol=1e-3)
        eot = end_of_turn_ids(tok)[0]
        with torch.no_grad():
            hs2 = model(torch.tensor([p + a + [eot]]), output_hidden_states=True).hidden_states
        assert not torch.allclose(got[i, 0], hs2[1][0, len(p) :].mean(dim=0), atol=1e-3)
        one = answer_token_means(
            model, tok, [QUESTIONS[i]], [ANSWERS[i]], layers=[3], system=system, batch_size=1
        )
        torch.testing.assert_close(got[i, 1], one[0, 0], rtol=1e-4, atol=1e-5)
    assert torch.isnan(got[4]).all()  # an empty answer has no token to average
    with pytest.raises(ValueError, match="5 prompts but 4 answers"):
        answer_token_means(
            model, tok, QUESTIONS, ANSWERS[:4], layers=[1], system=None, batch_size=2
        )


def test_answer_token_means_batched_equals_one_at_a_time(tiny_model: Any) -> None:
    model, tok = tiny_model
    answers = [*ANSWERS[:4], "Once upon a time a dragon made soup."]
    batched = answer_token_means(
        model, tok, QUESTIONS, answers, layers=[3, 1], system=None, batch_size=3
    )
    single = torch.cat(
        [
            answer_token_means(model, tok, [q], [a], layers=[3, 1], system=None, batch_size=1)
            for q, a in zip(QUESTIONS, answers, strict=True)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    # The system turn is part of the context the answer is read in.
    other = answer_token_means(
        model, tok, QUESTIONS[:1], answers[:1], layers=[1], system="Be brief.", batch_size=1
    )
    assert not torch.allclose(other[0, 0], batched[0, 1])
    with pytest.raises(ModelError, match="outside the model"):
        answer_token_means(model, tok, ["a"], ["x"], layers=[4], system=None, batch_size=1)
