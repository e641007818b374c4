"""The human-preference benchmark (icon2.evaluate.benchmark) on the tiny model: known answers
that a swapped or mis-aligned implementation fails."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from icon2.core.preferences import PreferencePair
from icon2.evaluate.benchmark import (
    METRICS,
    benchmark_metrics,
    conversations,
    pair_table,
    per_pair_outcomes,
    score_pairs,
)
from icon2.model.chat import render

BETA = 0.1


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# Chosen answers use tokens the "trained" model below was nudged towards; rejected ones
# use none of them.
PAIRS = [
    PreferencePair("a", [msg("user", "What is the capital of France?")], "Paris capital France",
                   "dragon soup village"),
    PreferencePair("b", [msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Capital?")],
                   "ParisFrance", "Sorted lists in Python"),
    PreferencePair("c", [msg("system", "Be brief."), msg("user", "Tell me a story.")],
                   "honest helpful", "sleeping better"),
]  # fmt: skip


def swapped(pairs: list[PreferencePair]) -> list[PreferencePair]:
    return [PreferencePair(p.id, p.prompt, p.rejected, p.chosen) for p in pairs]


def ids(tokenizer: Any, texts: list[str]) -> set[int]:
    return {i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]}


@pytest.fixture(scope="module")
def nudged(tiny_model: tuple[Any, Any]) -> Any:
    """The tiny model with +8 on the logits of the chosen answers' tokens (an LM-head bias):
    every chosen answer gains probability and every rejected one loses it."""
    model, tok = tiny_model
    good, bad = ids(tok, [p.chosen for p in PAIRS]), ids(tok, [p.rejected for p in PAIRS])
    assert not good & bad and tok.eos_token_id not in good
    out = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[sorted(good)] = 8.0
    out.lm_head = head
    return out.eval()


def test_a_model_nudged_towards_the_chosen_answers_wins_every_pair(
    tiny_model: tuple[Any, Any], nudged: Any
) -> None:
    model, tok = tiny_model
    for pairs, want in ((PAIRS, 1.0), (swapped(PAIRS), 0.0)):
        s = score_pairs(nudged, model, tok, pairs, system=None, batch_size=2)
        m = per_pair_outcomes(pair_table(pairs, s, beta=BETA))
        assert m["likelihood_accuracy"].tolist() == [want] * 3
        assert m["reward_accuracy"].tolist() == [want] * 3
        assert (m["reward_margin"] > 0).all() == (want == 1.0)
        assert (m["reward_margin"] < 0).all() == (want == 0.0)


def test_the_same_model_twice_has_no_margin_and_no_reward_wins(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tok = tiny_model
    table = pair_table(PAIRS, score_pairs(model, model, tok, PAIRS, system=None, batch_size=4),
                       beta=BETA)  # fmt: skip
    m = benchmark_metrics(table, seed=0, resamples=200)
    assert (table["reward_margin"] == 0).all()
    assert m["reward_accuracy"] == 0.0 and m["reward_margin"] == 0.0  # ties are not wins
    assert m["reward_margin_ci_low"] == m["reward_margin_ci_high"] == 0.0
    assert m["likelihood_accuracy"] == m["ref_likelihood_accuracy"]


def test_a_multi_turn_log_prob_equals_the_hand_computed_one(tiny_model: tuple[Any, Any]) -> None:
    """log π(answer + end of turn | conversation), summed by hand from one unpadded forward
    pass; the module scores it in a batch with longer rows (left padding) and sorts them."""
    model, tok = tiny_model
    pair = PAIRS[1]
    conv = [msg("system", "Be kind."), *pair.prompt]
    full = render(tok, [*conv, msg("assistant", pair.chosen)], add_generation_prompt=False)
    prompt = render(tok, conv, add_generation_prompt=True)
    assert full.startswith(prompt)
    ids_ = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
    start = len(tok(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids_).logits[0].double(), dim=-1)
    want = sum(float(logp[t - 1, ids_[0, t]]) for t in range(start, ids_.shape[1]))
    assert int(ids_[0, -1]) == tok.eos_token_id  # the end-of-turn token is counted
    longer = PreferencePair("z", [msg("user", "Tell me a story about a dragon " * 4)], "Soup.",
                            "No story today, sorry, none at all.")  # fmt: skip
    s = score_pairs(model, model, tok, [longer, pair], system="Be kind.", batch_size=4)
    assert float(s.chosen[1]) == pytest.approx(want, abs=1e-4)
    assert int(s.chosen_tokens[1]) == ids_.shape[1] - start - 1
    # Row by row, unbatched, gives the same numbers in the same order.
    one = score_pairs(model, model, tok, [longer, pair], system="Be kind.", batch_size=1)
    np.testing.assert_allclose(one.rejected, s.rejected, atol=1e-4)
    np.testing.assert_allclose(one.chosen, s.chosen, atol=1e-4)


def test_a_system_turn_is_added_only_where_there_is_none() -> None:
    convs = conversations(PAIRS, "Sys")
    assert convs[0][0] == msg("system", "Sys") and convs[0][1:] == PAIRS[0].prompt
    assert convs[2] == PAIRS[2].prompt  # its own system turn stays
    assert conversations(PAIRS, None)[0] == PAIRS[0].prompt


def test_metrics_of_a_known_table() -> None:
    table = pl.DataFrame(
        {
            "id": ["1", "2", "3", "4"],
            "logp_chosen": [-1.0, -5.0, -2.0, -3.0],
            "logp_rejected": [-2.0, -4.0, -3.0, -3.0],  # wins: 1, 3 (a tie is no win)
            "ref_logp_chosen": [-1.0, -4.0, -3.0, -3.0],
            "ref_logp_rejected": [-1.0, -5.0, -2.0, -3.0],  # wins: 2
            "chosen_tokens": [1, 2, 3, 4],
            "rejected_tokens": [1, 2, 3, 4],
            "reward_margin": [0.1, -0.2, 0.2, 0.0],
        }
    )
    m = benchmark_metrics(table, seed=0, resamples=500)
    assert (m["n"], m["likelihood_accuracy"], m["ref_likelihood_accuracy"]) == (4, 0.5, 0.25)
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx(0.025)
    for k in METRICS:
        assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"]
    assert m == benchmark_metrics(table, seed=0, resamples=500)


def test_pair_table_computes_the_dpo_margin() -> None:
    from icon2.evaluate.benchmark import Scores

    s = Scores(*(np.array([v]) for v in (-1.0, -3.0, -2.0, -2.5, 2, 4)))
    table = pair_table(PAIRS[:1], s, beta=0.5)
    # β[(π_c − ref_c) − (π_r − ref_r)] = 0.5 [(−1 + 2) − (−3 + 2.5)] = 0.75
    assert table["reward_margin"].to_list() == [0.75] and table["id"].to_list() == ["a"]
