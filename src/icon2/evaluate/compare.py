"""Trained vs starting model on held-out prompts: the judge, the records and the plot rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.evaluate.judge import Judge, LMJudge, RewardModelJudge
from icon2.model.loading import ModelSource, check_weight_files, load_source, resolve


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
    "strict_win_rate",
    "tie_rate",
    "loss_rate",
    "lc_win_rate",
    "mean_len_first",
    "mean_len_second",
)


def headline_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers compared across experiments; the rest (per criterion, the judge, the
    provenance) goes to the details file."""
    return {k: summary[k] for k in HEADLINE}
