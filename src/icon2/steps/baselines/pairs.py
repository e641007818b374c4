"""A7: run one baseline end to end — generate through a :class:`Backend`, select, build rows.

Every baseline answers the same kept instructions as the ``pairs`` stage, with the same
model and the same decoding settings except where the method needs sampling (Sampling-
Ranking, Self-Rewarding and Self-Refine draw several answers, so they sample at
``temperature``; direct prompting is greedy like the steered pairs). Time and tokens go
into two meters, "response generation" and "preference annotation" (cost, A8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.cost import Meter
from icon2.core.tables import PAIR_SCHEMA
from icon2.engines.base import Backend, Generation, Sampling
from icon2.engines.metered import count_tokens
from icon2.model.chat import render_prompt, system_turn
from icon2.steps.baselines.rules import (
    DROP_REASONS,
    Choice,
    direct_prompt_systems,
    pairwise_choice,
    rank_samples,
    refine_message,
    refine_rejected_index,
    score_samples,
)
from icon2.steps.drops import drop_reason, pair_drop_reason
from icon2.steps.judge import LMJudge
from icon2.steps.scorers import Scorer

BASELINE_PAIR_SCHEMA: dict[str, pl.DataType] = {
    **PAIR_SCHEMA,
    "method": pl.String(),
    "scorer": pl.String(),  # what decided chosen vs rejected
    "chosen_score": pl.Float64(),
    "rejected_score": pl.Float64(),
}


@dataclass(frozen=True)
class BaselineInputs:
    """What every baseline shares with the ``pairs`` stage."""

    backend: Backend
    tokenizer: PreTrainedTokenizerBase
    kept: pl.DataFrame  # id, instruction, criterion, split
    greedy: Sampling  # the pairs stage's decoding settings
    sampled: Sampling  # the same with the baselines' temperature
    system: str | None  # base.system_prompt: the training prompt's system turn
    generation: Meter
    annotation: Meter


def _generate(
    inp: BaselineInputs, prompts: list[str], sampling: Sampling, desc: str
) -> list[Generation]:
    with inp.generation as meter:
        gens = inp.backend.generate(prompts, sampling, desc=desc)
    meter.tokens_generated += sum(g.token_count for g in gens)
    meter.tokens_read += count_tokens(inp.tokenizer, prompts)
    return gens


def _samples(inp: BaselineInputs, k: int, desc: str) -> tuple[list[list[Generation]], list[str]]:
    """k sampled answers per instruction (one batched call, rows differ by their RNG draw)."""
    instructions = inp.kept["instruction"].to_list()
    prompts = [render_prompt(inp.tokenizer, x, inp.system) for x in instructions]
    gens = _generate(inp, prompts * k, inp.sampled, desc)
    n = len(prompts)
    return [[gens[j * n + i] for j in range(k)] for i in range(n)], instructions


def sampling_ranking(
    inp: BaselineInputs, scorer: Scorer, k: int
) -> tuple[list[Choice | None], dict[str, int]]:
    samples, instructions = _samples(inp, k, "sampling-ranking")
    texts = [[g.text.strip() for g in row] for row in samples]
    before = int(getattr(scorer, "tokens_read", 0))
    with inp.annotation as meter:
        scores = score_samples(scorer, instructions, texts)
    meter.tokens_read += int(getattr(scorer, "tokens_read", 0)) - before
    finished = np.array([[g.finish_reason == "stop" for g in row] for row in samples])
    return rank_samples(texts, scores, finished)


def self_rewarding(
    inp: BaselineInputs, judge: LMJudge, *, tie_margin: float
) -> tuple[list[Choice | None], dict[str, int]]:
    samples, instructions = _samples(inp, 2, "self-rewarding")
    first = [row[0].text.strip() for row in samples]
    second = [row[1].text.strip() for row in samples]
    finished = np.array([[g.finish_reason == "stop" for g in row] for row in samples])
    with inp.annotation as meter:
        p_ab = judge.order_probability(instructions, first, second)
        p_ba = judge.order_probability(instructions, second, first)
    meter.tokens_read += count_tokens(
        inp.tokenizer,
        [judge.prompt(i, a, b) for i, a, b in zip(instructions, first, second, strict=True)]
        + [judge.prompt(i, b, a) for i, a, b in zip(instructions, first, second, strict=True)],
    )
    return pairwise_choice(first, second, p_ab, p_ba, finished=finished, tie_margin=tie_margin)


def self_refine(
    inp: BaselineInputs, k: int, seed: int
) -> tuple[list[Choice | None], dict[str, int]]:
    """k samples; the first usable one (non-empty, ended its turn) is refined → chosen; the
    rejected answer is a seeded-random usable original (which may be the draft itself)."""
    samples, instructions = _samples(inp, k, "self-refine samples")
    ids = inp.kept["id"].to_list()
    usable = [
        [j for j, g in enumerate(row) if g.text.strip() and g.finish_reason == "stop"]
        for row in samples
    ]
    todo = [i for i, u in enumerate(usable) if u]
    # The refinement is generation work (the model writes a new answer), greedy like A4.
    prompts = [
        render_prompt(
            inp.tokenizer,
            refine_message(instructions[i], samples[i][usable[i][0]].text.strip()),
            inp.system,
        )
        for i in todo
    ]
    refined = dict(zip(todo, _generate(inp, prompts, inp.greedy, "self-refine"), strict=True))
    counts = dict.fromkeys(DROP_REASONS, 0)
    out: list[Choice | None] = []
    for i, row in enumerate(samples):
        if not usable[i]:  # nothing to refine: blame emptiness first, as A4 does
            reason: str | None = "empty" if not any(g.text.strip() for g in row) else "truncated"
        else:
            pick = int(refine_rejected_index([ids[i]], len(usable[i]), seed)[0])
            original, r = row[usable[i][pick]], refined[i]
            reason = drop_reason(r.text, original.text, r.finish_reason == "stop", True)
        if reason:
            counts[reason] += 1
            out.append(None)
            continue
        out.append(Choice(r.text.strip(), original.text.strip()))
    return out, counts


def direct_prompting(
    inp: BaselineInputs, prompts: dict[str, tuple[str, str]]
) -> tuple[list[Choice | None], dict[str, int]]:
    instructions = inp.kept["instruction"].to_list()
    pos, neg = direct_prompt_systems(inp.kept["criterion"].to_list(), prompts)
    rendered = [render_prompt(inp.tokenizer, x, s) for x, s in zip(instructions, pos, strict=True)]
    rendered += [render_prompt(inp.tokenizer, x, s) for x, s in zip(instructions, neg, strict=True)]
    gens = _generate(inp, rendered, inp.greedy, "direct prompting")
    n = len(instructions)
    counts = dict.fromkeys(DROP_REASONS, 0)
    out: list[Choice | None] = []
    for c, r in zip(gens[:n], gens[n:], strict=True):
        reason = pair_drop_reason(c, r)
        if reason:
            counts[reason] += 1
            out.append(None)
            continue
        out.append(Choice(c.text.strip(), r.text.strip()))
    return out, counts


def pair_table(
    inp: BaselineInputs, choices: Sequence[Choice | None], *, method: str, scorer: str
) -> pl.DataFrame:
    """Kept choices as rows of ``BASELINE_PAIR_SCHEMA`` (γ and layer columns empty)."""
    head = system_turn(inp.system)
    rows: list[dict[str, Any]] = []
    for r, ch in zip(inp.kept.iter_rows(named=True), choices, strict=True):
        if ch is None:
            continue
        rows.append(
            {
                "id": r["id"],
                "split": r["split"],
                "criterion": r["criterion"],
                "prompt": [*head, {"role": "user", "content": r["instruction"]}],
                "chosen": [{"role": "assistant", "content": ch.chosen}],
                "rejected": [{"role": "assistant", "content": ch.rejected}],
                "gamma_pos": None,
                "gamma_neg": None,
                "gamma_scale": None,
                "layers": None,
                "chosen_tokens": count_tokens(inp.tokenizer, [ch.chosen]),
                "rejected_tokens": count_tokens(inp.tokenizer, [ch.rejected]),
                "chosen_finish": "stop",
                "rejected_finish": "stop",
                "method": method,
                "scorer": scorer,
                "chosen_score": ch.chosen_score,
                "rejected_score": ch.rejected_score,
            }
        )
    return pl.DataFrame(rows, schema=BASELINE_PAIR_SCHEMA)
