"""Running the baselines through a stub Backend: which answers each rule keeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from icon2.core.cost import Meter
from icon2.core.tables import PAIR_SCHEMA
from icon2.engines.base import Generation, Sampling
from icon2.steps.baselines import pairs as run
from tests.tiny import build_tokenizer

KEPT = pl.DataFrame(
    {
        "id": ["a", "b", "c"],
        "instruction": ["q0", "q1", "q2"],
        "criterion": ["honesty", "general", "honesty"],
        "split": ["train", "train", "validation"],
    }
)


class StubBackend:
    """Answers "<prompt tail> #<call>.<row>"; rows listed in ``truncate`` end by length."""

    def __init__(self, truncate: Sequence[int] = ()) -> None:
        self.calls: list[tuple[list[str], Sampling]] = []
        self.truncate = set(truncate)

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: Mapping[int, torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        self.calls.append((list(prompts), sampling))
        k = len(self.calls)
        return [
            Generation(f"answer {k}.{i}", 3, "length" if i in self.truncate else "stop")
            for i in range(len(prompts))
        ]


class StubScorer:
    name = "stub"
    tokens_read = 0

    def score(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        # answer "1.i": higher i scores higher, except row 2 of each prompt scores lowest
        return np.array([float(a.split(".")[1]) for a in answers])


def _inputs(backend: StubBackend) -> run.BaselineInputs:
    return run.BaselineInputs(
        backend=backend,
        tokenizer=build_tokenizer(),
        kept=KEPT,
        greedy=Sampling(max_new_tokens=8),
        sampled=Sampling(max_new_tokens=8, temperature=0.7),
        system="sys",
        generation=Meter("s", "m", "response generation", device_kind="cpu"),
        annotation=Meter("s", "m", "preference annotation", device_kind="cpu"),
    )


def test_sampling_ranking_samples_k_and_keeps_best_and_worst() -> None:
    backend = StubBackend()
    inp = _inputs(backend)
    choices, counts = run.sampling_ranking(inp, StubScorer(), 5)
    prompts, sampling = backend.calls[0]
    assert len(prompts) == 15 and sampling.temperature == 0.7
    # row i's samples are generations j·3 + i; the scorer ranks by generation index
    assert [(c.chosen, c.rejected) for c in choices if c] == [
        (f"answer 1.{12 + i}", f"answer 1.{i}") for i in range(3)
    ]
    assert sum(counts.values()) == 0
    assert inp.generation.tokens_generated == 15 * 3 and inp.generation.tokens_read > 0


def test_direct_prompting_uses_each_criterions_prompts_and_greedy() -> None:
    backend = StubBackend(truncate=[4])  # row 1's rejected answer runs out of tokens
    inp = _inputs(backend)
    prompts = {"honesty": ("HONEST", "DISHONEST"), "general": ("GOOD", "BAD")}
    choices, counts = run.direct_prompting(inp, prompts)
    sent, sampling = backend.calls[0]
    assert sampling.temperature == 0.0
    assert ["HONEST" in sent[0], "GOOD" in sent[1], "DISHONEST" in sent[3]] == [True] * 3
    assert choices[1] is None and counts["truncated"] == 1
    table = run.pair_table(inp, choices, method="direct_prompting", scorer="none")
    assert table.height == 2 and table["method"].unique().to_list() == ["direct_prompting"]
    # the training prompt carries the base system turn, never the criterion's prompt
    assert table["prompt"][0].to_list() == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q0"},
    ]
    assert {k: table.schema[k] for k in PAIR_SCHEMA} == PAIR_SCHEMA


def test_self_refine_refines_the_first_draft_greedily() -> None:
    backend = StubBackend()
    inp = _inputs(backend)
    choices, _ = run.self_refine(inp, 3, seed=0)
    refine_prompts, sampling = backend.calls[1]
    assert sampling.temperature == 0.0 and "answer 1.0" in refine_prompts[0]
    assert [c.chosen for c in choices if c] == ["answer 2.0", "answer 2.1", "answer 2.2"]
    assert all(c.rejected.startswith("answer 1.") for c in choices if c)


def test_self_refine_skips_an_unfinished_first_draft() -> None:
    backend = StubBackend(truncate=[0])  # instruction 0's first sample runs out of tokens
    inp = _inputs(backend)
    choices, counts = run.self_refine(inp, 3, seed=0)
    refine_prompts, _ = backend.calls[1]
    # instruction 0's samples are generations 0, 3, 6: the draft is its second sample
    assert "answer 1.3" in refine_prompts[0] and "answer 1.1" in refine_prompts[1]
    # the stub also truncates row 0 of the refinement call: that pair is dropped as truncated
    assert choices[0] is None and counts["truncated"] == 1 and sum(counts.values()) == 1
    assert choices[1] is not None and choices[1].rejected in {
        "answer 1.1",
        "answer 1.4",
        "answer 1.7",
    }
