"""Trained vs starting model on held-out prompts: the answers, the judge, the records and
the plot rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.params import Params
from icon2.engines import open_backend
from icon2.engines.base import Generation, Sampling
from icon2.evaluate.winrate import summarize
from icon2.model.chat import render_prompt
from icon2.model.loading import ModelSource, check_weight_files, load_source, resolve
from icon2.steps.judge import Judge, LMJudge, RewardModelJudge


def check_judge(judge: str | None, reward_model: str | None) -> ModelSource | None:
    """Resolve and check the configured judge before any answer is generated: a missing or
    broken directory is reported at once, under its own key."""
    for key, name in (("evaluate.reward_model", reward_model), ("evaluate.judge", judge)):
        if name:
            source = resolve(name, key)
            if source.kind == "local":
                check_weight_files(Path(source.location))
            return source
    return None


def make_judge(
    judge: str | None,
    reward_model: str | None,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dtype: str,
) -> tuple[Judge, str | None]:
    """The configured judge: a reward model, another local LLM, or the starting model.

    Returns the judge and its name (None = the starting model).
    """
    if reward_model:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        src = resolve(reward_model, "evaluate.reward_model")
        rm = AutoModelForSequenceClassification.from_pretrained(src.location).eval()
        return RewardModelJudge(rm, AutoTokenizer.from_pretrained(src.location)), reward_model
    if judge:
        model, jtok = load_source(resolve(judge, "evaluate.judge"), dtype=dtype)
        model.eval()  # type: ignore[no-untyped-call]
        return LMJudge(model, jtok), judge
    return LMJudge(base, tokenizer), None


def answer(
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    name: str,
    resident: Sequence[PreTrainedModel] = (),
) -> list[Generation]:
    """One answer per instruction (under ``base.system_prompt``) with the ``evaluate``
    section's decoding settings, on the engine ``base.engine`` names (a vLLM engine is
    stopped before this returns; ``model`` and ``resident``, the stage's other HF models,
    leave the GPU while it runs); ``name`` labels the progress bar."""
    cfg = p.evaluate
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        repetition_penalty=cfg.repetition_penalty,
        seed=p.base.seed,
    )
    rendered = [render_prompt(tokenizer, q, p.base.system_prompt) for q in instructions]
    engine = open_backend(
        p, model_dir, model, tokenizer, batch_size=cfg.batch_size, resident=resident
    )
    with engine as backend:
        return backend.generate(rendered, sampling, desc=f"answers {name}")


@dataclass(frozen=True)
class Verdicts:
    """The judge's verdicts on the trained vs the starting model's answers."""

    trained: list[str]  # the trained model's answers, stripped
    base: list[str]  # the starting model's answers, stripped
    pref: np.ndarray  # [n] P(the trained answer is better)
    summary: dict[str, Any]  # :func:`~icon2.evaluate.winrate.summarize`'s rates


def judge_answers(
    judge: Judge,
    instructions: Sequence[str],
    trained: Sequence[Generation],
    base: Sequence[Generation],
    *,
    tie_margin: float,
    groups: Sequence[str] | None,
) -> Verdicts:
    """Ask ``judge`` which answer is better (trained first) and summarise the preferences:
    win / tie / loss rates and the length-controlled win rate on the answers' token counts,
    also per group (criterion) when ``groups`` is given."""
    first = [g.text.strip() for g in trained]
    second = [g.text.strip() for g in base]
    pref = judge.prefer_first(instructions, first, second)
    lengths = [np.array([g.token_count for g in gens], float) for gens in (trained, base)]
    summary = summarize(pref, *lengths, tie_margin=tie_margin, groups=groups)
    return Verdicts(first, second, pref, summary)


def sample_rows(
    instructions: Sequence[str],
    trained: Sequence[str],
    base: Sequence[str],
    pref: np.ndarray,
    limit: int,
) -> list[dict[str, Any]]:
    """The first ``limit`` comparisons, for a person to read."""
    return [
        {
            "instruction": instructions[i],
            "trained": trained[i],
            "base": base[i],
            "p_trained_better": round(float(pref[i]), 4),
        }
        for i in range(min(limit, len(instructions)))
    ]


def alpaca_eval_rows(
    instructions: Sequence[str], outputs: Sequence[str], generator: str
) -> list[dict[str, str]]:
    """Answers in AlpacaEval's ``model_outputs.json`` format (instruction, output,
    generator), so AlpacaEval's or Arena-Hard's judge can compare the two models."""
    return [
        {"instruction": q, "output": a, "generator": generator}
        for q, a in zip(instructions, outputs, strict=True)
    ]


def outcome_frame(summary: dict[str, Any]) -> pl.DataFrame:
    """Win / tie / loss rates as plot rows."""
    return pl.DataFrame(
        {
            "outcome": ["win", "tie", "loss"],
            "rate": [summary["strict_win_rate"], summary["tie_rate"], summary["loss_rate"]],
        }
    )


HEADLINE = (
    "n",
    "win_rate",
    "win_rate_low",
    "win_rate_high",
    "strict_win_rate",
    "tie_rate",
    "loss_rate",
    "lc_win_rate",
)


def headline_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers compared across experiments; the rest (per criterion, the judge, the
    provenance) goes to the details file."""
    return {k: summary[k] for k in HEADLINE}
