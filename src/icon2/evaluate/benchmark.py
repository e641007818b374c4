"""A human-preference benchmark: how the trained and the starting model rank pairs that
people labelled (any preference file in TRL's format, :mod:`icon2.core.preferences`).

Each answer is scored by its summed log-probability given the conversation so far (its
tokens plus the end-of-turn token), under the trained model π_θ and the starting model
π_ref. Per pair, with c = chosen and r = rejected:

* **likelihood accuracy** — log π_θ(c) > log π_θ(r): the trained model finds the human's
  choice more likely; **ref likelihood accuracy** is the same for π_ref, its baseline.
* **reward accuracy** — DPO's implicit reward margin
  m = β[(log π_θ(c) − log π_ref(c)) − (log π_θ(r) − log π_ref(r))] > 0: training moved
  probability towards the human's choice. Ties are not wins, so π_θ = π_ref scores 0.
* **reward margin** — the mean of m.

Each is a mean over pairs, with a seeded percentile-bootstrap interval (:func:`mean_ci`).
Likelihoods compare answers of different lengths, so longer answers tend to lose; the
reward compares each answer with itself under two models and does not have that bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.preferences import PreferencePair
from icon2.core.tables import BENCHMARK_SCHEMA
from icon2.evaluate.bootstrap import mean_ci
from icon2.model.chat import system_turn
from icon2.model.logprobs import pair_logps

# The headline metrics, each a mean over pairs (``per_pair_outcomes``).
METRICS = ("likelihood_accuracy", "ref_likelihood_accuracy", "reward_accuracy", "reward_margin")


@dataclass(frozen=True)
class Scores:
    """Summed log-probabilities [n] of each pair's two answers under both models."""

    chosen: np.ndarray
    rejected: np.ndarray
    ref_chosen: np.ndarray
    ref_rejected: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray


def conversations(
    pairs: Sequence[PreferencePair], system: str | None
) -> list[list[dict[str, str]]]:
    """Each pair's prompt, with ``system`` as its system turn when it has none."""
    head = system_turn(system)
    return [p.prompt if p.prompt[0]["role"] == "system" else [*head, *p.prompt] for p in pairs]


def score_pairs(
    trained: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    *,
    system: str | None,
    batch_size: int,
) -> Scores:
    """Both answers of every pair under both models (``system`` as in :func:`conversations`),
    each prompt read once per model (:func:`pair_logps`).

    Pairs are scored longest prompt first, so that a batch holds prompts of similar length
    and little padding; the results come back in the pairs' order.
    """
    prompts = conversations(pairs, system)
    order = sorted(range(len(pairs)), key=lambda i: -_chars(prompts[i]))
    xs = [prompts[i] for i in order]
    cs, rs = [pairs[i].chosen for i in order], [pairs[i].rejected for i in order]
    out: dict[str, np.ndarray] = {}
    for name, model in (("", trained), ("ref_", base)):
        lc, lr, nc, nr = pair_logps(model, tokenizer, xs, cs, rs, batch_size=batch_size)
        out[f"{name}chosen"], out[f"{name}rejected"] = _unsort(lc, order), _unsort(lr, order)
    out["chosen_tokens"], out["rejected_tokens"] = _unsort(nc, order), _unsort(nr, order)
    return Scores(**out)


def _chars(prompt: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) + 8 for m in prompt)  # + the template's few tokens a turn


def _unsort(values: torch.Tensor, order: list[int]) -> np.ndarray:
    out = np.empty_like(values.numpy())
    out[np.asarray(order)] = values.numpy()
    return out


def pair_table(pairs: Sequence[PreferencePair], s: Scores, *, beta: float) -> pl.DataFrame:
    """The per-pair table (``BENCHMARK_SCHEMA``), the reward margin with ``beta``."""
    margin = beta * ((s.chosen - s.ref_chosen) - (s.rejected - s.ref_rejected))
    data = {
        "id": [p.id for p in pairs],
        "logp_chosen": s.chosen,
        "logp_rejected": s.rejected,
        "ref_logp_chosen": s.ref_chosen,
        "ref_logp_rejected": s.ref_rejected,
        "chosen_tokens": s.chosen_tokens,
        "rejected_tokens": s.rejected_tokens,
        "reward_margin": margin,
    }
    return pl.DataFrame(data, schema=BENCHMARK_SCHEMA)


def per_pair_outcomes(table: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each headline metric's per-pair values [n] (1.0 / 0.0 for the accuracies).

    Args:
        table: the per-pair table; uses logp_chosen, logp_rejected, ref_logp_chosen,
            ref_logp_rejected, reward_margin.
    """

    def col(name: str) -> np.ndarray:
        return table[name].to_numpy().astype(np.float64)

    margin = col("reward_margin")
    return {
        "likelihood_accuracy": (col("logp_chosen") > col("logp_rejected")).astype(np.float64),
        "ref_likelihood_accuracy": (col("ref_logp_chosen") > col("ref_logp_rejected")).astype(
            np.float64
        ),
        "reward_accuracy": (margin > 0).astype(np.float64),
        "reward_margin": margin,
    }


def benchmark_metrics(
    table: pl.DataFrame, *, seed: int, resamples: int, level: float = 0.95
) -> dict[str, Any]:
    """Headline metrics of a per-pair table: n, the confidence level, and for each metric
    its mean with ``<metric>_ci_low`` / ``<metric>_ci_high`` (one seeded bootstrap each)."""
    out: dict[str, Any] = {"n": table.height, "ci_level": level}
    for name, values in per_pair_outcomes(table).items():
        mean, low, high = mean_ci(values, seed=seed, resamples=resamples, level=level)
        out.update({name: mean, f"{name}_ci_low": low, f"{name}_ci_high": high})
    return out


def benchmark_line(m: dict[str, Any]) -> str:
    """The stage's one-line report."""

    def show(k: str) -> str:
        return f"{m[k]:.3f} [{m[f'{k}_ci_low']:.3f}, {m[f'{k}_ci_high']:.3f}]"

    return (
        f"benchmark: {m['n']} pairs; likelihood accuracy {show('likelihood_accuracy')} "
        f"(starting model {show('ref_likelihood_accuracy')}), reward accuracy "
        f"{show('reward_accuracy')}, margin {show('reward_margin')}"
    )
