from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from icon2.core.errors import InputError, ModelError
from icon2.steps.baselines.rules import (
    Choice,
    check_method,
    direct_prompt_systems,
    pairwise_choice,
    rank_samples,
    refine_message,
    refine_rejected_index,
    score_samples,
)
from icon2.steps.drops import drop_reason
from icon2.steps.scorers import Scorer, check_reward_model_dir


class StubScorer:
    """Known scores: the number written at the end of each answer."""

    name = "stub"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        self.calls += 1
        assert len(instructions) == len(answers)
        return np.array([float(a.rsplit(" ", 1)[-1]) for a in answers])


def test_stub_is_a_scorer() -> None:
    scorer: Scorer = StubScorer()  # mypy checks the Protocol here
    assert scorer.name == "stub"


def test_sampling_ranking_picks_exactly_best_and_worst() -> None:
    samples = [
        ["a 0.3", "b 0.9", "c -1.5", "d 0.2", "e 0.0"],
        ["f 2", "g 2", "h 1", "i 1", "j 3"],  # ties: first max / last min
    ]
    scorer = StubScorer()
    scores = score_samples(scorer, ["q1", "q2"], samples)
    assert scorer.calls == 1 and scores.shape == (2, 5)
    choices, counts = rank_samples(samples, scores)
    assert choices[0] == Choice("b 0.9", "c -1.5", 0.9, -1.5)
    assert choices[1] == Choice("j 3", "i 1", 3.0, 1.0)
    assert sum(counts.values()) == 0


def test_sampling_ranking_tie_breaking_is_deterministic() -> None:
    samples = [["x 1", "y 1", "z 0", "w 0"]]
    choices, _ = rank_samples(samples, np.array([[1.0, 1.0, 0.0, 0.0]]))
    assert choices[0] == Choice("x 1", "w 0", 1.0, 0.0)


def test_sampling_ranking_drops_pairs_without_signal() -> None:
    samples = [
        ["same 1", "same 1", "other 1"],  # all tied
        ["good 5", "", "bad 0"],  # the empty one is not eligible; still a pair
        ["", "", "only 1"],  # fewer than two usable samples
        ["best 9", "mid 5", "worst 0"],  # the best sample is truncated
        ["best 9", "mid 5", "worst 0"],  # two samples truncated
        ["dup", "dup ", "dup"],  # different scores, same text
    ]
    scores = np.array(
        [[1, 1, 1], [5, 7, 0], [0, 0, 1], [9, 5, 0], [9, 5, 0], [3, 2, 1]], dtype=float
    )
    finished = np.ones((6, 3), dtype=bool)
    finished[3, 0] = False
    finished[4, [0, 1]] = False
    choices, counts = rank_samples(samples, scores, finished)
    assert choices[1] == Choice("good 5", "bad 0", 5.0, 0.0)
    assert choices[3] == Choice("mid 5", "worst 0", 5.0, 0.0)
    assert [c is None for c in choices] == [True, False, True, False, True, True]
    assert counts == {"empty": 1, "truncated": 1, "identical": 1, "tied": 1}


def test_self_rewarding_reads_both_orders() -> None:
    first, second = ["a", "b", "c", "d", "e"], ["A", "B", "C", "D", "e "]
    p_ab = np.array([0.9, 0.6, 0.7, 0.52, 0.5])  # P("A") with first shown as A
    p_ba = np.array([0.3, 0.8, 0.7, 0.50, 0.5])  # P("A") with second shown as A
    choices, counts = pairwise_choice(first, second, p_ab, p_ba, tie_margin=0.02)
    c0, c1 = choices[0], choices[1]
    assert c0 is not None and c1 is not None
    assert (c0.chosen, c0.rejected) == ("a", "A")
    assert (c0.chosen_score, c0.rejected_score) == pytest.approx((0.8, 0.2))
    # first shown as A gets 0.6 but second shown as A gets 0.8: second wins (P = 0.4)
    assert (c1.chosen, c1.rejected) == ("B", "b")
    assert (c1.chosen_score, c1.rejected_score) == pytest.approx((0.6, 0.4))
    assert choices[2] is None and choices[3] is None  # pure position bias; within the margin
    assert choices[4] is None  # identical texts
    assert counts == {"empty": 0, "truncated": 0, "identical": 1, "tied": 2}
    finished = np.ones((5, 2), dtype=bool)
    finished[0, 1] = False
    choices, counts = pairwise_choice(first, second, p_ab, p_ba, finished=finished)
    assert choices[0] is None and counts["truncated"] == 1


def test_self_refine_rejected_is_seeded_and_order_free() -> None:
    ids = [f"id{i}" for i in range(200)]
    idx = refine_rejected_index(ids, 3, seed=0)
    assert set(idx.tolist()) == {0, 1, 2}
    assert np.array_equal(idx, refine_rejected_index(ids, 3, seed=0))
    assert not np.array_equal(idx, refine_rejected_index(ids, 3, seed=1))
    assert np.array_equal(refine_rejected_index(ids[::-1], 3, seed=0), idx[::-1])
    msg = refine_message("Sort a list.", "Use sorted().")
    assert "Sort a list." in msg and "Use sorted()." in msg
    # chosen = the refinement, rejected = the drawn original; A4's drop rules apply
    originals = ["first 1", "second 2", "third 3"]
    rejected = originals[int(idx[0])]
    assert drop_reason("refined answer", rejected, True, True) is None
    assert drop_reason("refined answer", "refined answer ", True, True) == "identical"
    assert drop_reason("refined answer", "x", False, True) == "truncated"
    assert drop_reason(" ", "x", True, True) == "empty"


def test_direct_prompting_systems() -> None:
    prompts = {"honesty": ("honest", "dishonest"), "general": ("good", "bad")}
    pos, neg = direct_prompt_systems(["general", "honesty"], prompts)
    assert pos == ["good", "honest"] and neg == ["bad", "dishonest"]
    with pytest.raises(InputError, match="'humour'"):
        direct_prompt_systems(["humour"], prompts)


def test_unknown_method() -> None:
    assert check_method("self_refine") == "self_refine"
    with pytest.raises(InputError, match="unknown method 'self_refining'"):
        check_method("self_refining")


def test_reward_model_dir_must_be_a_sequence_classifier(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelError, match="not a sequence classifier"):
        check_reward_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForSequenceClassification"], "num_labels": 2})
    )
    with pytest.raises(ModelError, match="2 outputs"):
        check_reward_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "x"}})
    )
    check_reward_model_dir(tmp_path)
    with pytest.raises(ModelError, match=r"no config\.json"):
        check_reward_model_dir(tmp_path / "missing")


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="do not match"):
        rank_samples([["a", "b"]], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one length"):
        pairwise_choice(["a"], ["b", "c"], np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="equal-length"):
        score_samples(StubScorer(), ["q"], [["a 1"], ["b 2"]])
