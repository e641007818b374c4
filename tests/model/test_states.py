from __future__ import annotations

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


ANSWERS = [
    "Paris.",
    "Roses are red, violets are blue.",
    "Use sorted(xs, key=len).",
    "84",
    "Once upon a time a dragon made soup.",
]


def _hand_mean(model: Any, tok: Any, question: str, answer: str, system: str | None) -> Any:
    """Layers 1 and 2 at the answer's positions, by output_hidden_states; also the means
    one position too early (the prompt's last token) and one too late (end of turn)."""
    prompt = tok(render_prompt(tok, question, system), add_special_tokens=False)["input_ids"]
    ans = tok(answer, add_special_tokens=False)["input_ids"]
    eot = end_of_turn_ids(tok)[0]
    ids = torch.tensor([prompt + ans + [eot]])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    p, a = len(prompt), len(ans)

    def mean(lo: int, hi: int) -> torch.Tensor:
        return torch.stack([hs[layer][0, lo:hi].mean(0) for layer in (1, 2)])

    return mean(p, p + a), mean(p - 1, p + a), mean(p, p + a + 1)


def test_answer_token_means_is_the_mean_over_exactly_the_answer_tokens(tiny_model: Any) -> None:
    model, tok = tiny_model
    system = "You are an honest assistant."
    ours = answer_token_means(
        model, tok, QUESTIONS, ANSWERS, layers=[1, 2], system=system, batch_size=2
    )
    assert ours.shape == (5, 2, 64) and ours.dtype == torch.float32
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True)):
        exact, with_prompt, with_eot = _hand_mean(model, tok, q, a, system)
        torch.testing.assert_close(ours[i], exact, rtol=1e-4, atol=1e-5)
        # Not the mean with the prompt's last token, nor with the end-of-turn token.
        assert not torch.allclose(ours[i], with_prompt, rtol=1e-3, atol=1e-4)
        assert not torch.allclose(ours[i], with_eot, rtol=1e-3, atol=1e-4)


def test_answer_token_means_batched_equals_one_at_a_time(tiny_model: Any) -> None:
    model, tok = tiny_model
    batched = answer_token_means(
        model, tok, QUESTIONS, ANSWERS, layers=[3, 1], system=None, batch_size=3
    )
    single = torch.cat(
        [
            answer_token_means(model, tok, [q], [a], layers=[3, 1], system=None, batch_size=1)
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    # The system turn is part of the context the answer is read in.
    other = answer_token_means(
        model, tok, QUESTIONS[:1], ANSWERS[:1], layers=[1], system="Be brief.", batch_size=1
    )
    assert not torch.allclose(other[0, 0], batched[0, 1])


def test_answer_token_means_refuses_empty_answers_and_bad_layers(tiny_model: Any) -> None:
    model, tok = tiny_model
    with pytest.raises(ValueError, match="answer 1 has no tokens"):
        answer_token_means(model, tok, ["a", "b"], ["x", ""], layers=[1], system=None, batch_size=2)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        answer_token_means(model, tok, ["a", "b"], ["x"], layers=[1], system=None, batch_size=2)
    with pytest.raises(ModelError, match="outside the model"):
        answer_token_means(model, tok, ["a"], ["x"], layers=[4], system=None, batch_size=1)
