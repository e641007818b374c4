"""Evaluation signals that need no judge, and one that shows whether the judge can see.

* **Held-out reward accuracy** — DPO's implicit reward r(x, y) = β[log π_θ(y|x) −
  log π_ref(y|x)] of the trained model (π_ref = the starting model) on held-out pairs; the
  share of pairs with r(chosen) > r(rejected). 0.5 is chance; the starting model itself
  has r ≡ 0 and scores 0 (ties are not wins).
* **Direction shift** — the trained and the starting model answer the same prompts; both
  answers are re-read by the *starting* model without steering (the directions live in
  its residual stream) and projected on u^l_c at the controlled layers. The projection at
  layer l is divided by the layer's mean contrastive-vector norm, so 1.0 is "one positive-
  vs-negative system prompt's worth", the unit γ is measured in (A4); the shift is the
  mean over prompts of (trained − starting), averaged over layers, per criterion. A
  positive shift means training moved the answers towards the positive prompt.
* **Judge discrimination** — the share of judgements that are not ties; a blind judge
  (every P ≈ 0.5) scores 0 and its win rates mean nothing.

:func:`judge_free_signals` assembles the ``signals@<method>`` metrics from loaded models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import InputError
from icon2.model.chat import render
from icon2.model.logprobs import response_logps
from icon2.model.states import last_token_states
from icon2.steps.direction_file import DirectionFile


def reward_accuracy(
    policy_chosen: np.ndarray,
    policy_rejected: np.ndarray,
    ref_chosen: np.ndarray,
    ref_rejected: np.ndarray,
    *,
    beta: float,
) -> dict[str, float]:
    """Reward accuracy, tie share and mean margin from summed log-probabilities [n]."""
    arrays = [
        np.asarray(a, dtype=np.float64)
        for a in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    ]
    n = arrays[0].size
    if n == 0 or any(a.shape != (n,) for a in arrays):
        raise ValueError(f"expected four [n] arrays with n >= 1, got {[a.shape for a in arrays]}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    pc, pr, rc, rr = arrays
    margin = beta * ((pc - rc) - (pr - rr))
    return {
        "n": float(n),
        "reward_accuracy": float(np.mean(margin > 0)),
        "reward_ties": float(np.mean(margin == 0)),
        "reward_margin": float(np.mean(margin)),
    }


def projections(
    states: torch.Tensor, directions: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over layers of h^l · u^l / s_l → float64 [n].

    Args:
        states: [n, L, d] last-token states at the controlled layers.
        directions: [L, d] unit directions of one criterion at the same layers.
        scale: [L] per-layer unit (e.g. the mean contrastive norm); None = 1.
    """
    if states.dim() != 3 or directions.shape != states.shape[1:]:
        raise ValueError(
            f"states {tuple(states.shape)} and directions {tuple(directions.shape)} do not match"
        )
    proj = torch.einsum("nld,ld->nl", states.double(), directions.double())
    if scale is not None:
        if scale.shape != (states.shape[1],) or bool((scale <= 0).any()):
            raise ValueError("scale must be [L] positive numbers")
        proj = proj / scale.double()
    return proj.mean(dim=1)


def direction_shift(
    trained: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Per criterion: mean projection of trained and starting answers, their paired mean
    difference, its standard error and the share of prompts where trained > starting."""
    out: dict[str, dict[str, float]] = {}
    for c in trained:
        t, b = trained[c].double(), base[c].double()
        if t.shape != b.shape or t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"{c}: expected two [n] projections of one length")
        d = t - b
        se = float(d.std(unbiased=True) / d.numel() ** 0.5) if d.numel() > 1 else float("nan")
        out[c] = {
            "trained": float(t.mean()),
            "base": float(b.mean()),
            "shift": float(d.mean()),
            "shift_se": se,
            "share_up": float((d > 0).double().mean()),
        }
    return out


def judge_discrimination(p_first: np.ndarray, *, tie_margin: float) -> float:
    """Share of judgements with |P − 0.5| > tie_margin (the evaluate stage's tie rule)."""
    p = np.asarray(p_first, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("no judgements")
    return float(np.mean(np.abs(p - 0.5) > tie_margin))


def summarize_shift(shift: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Headline: the mean shift over criteria, plus each criterion's shift."""
    values = [v["shift"] for v in shift.values()]
    return {
        "direction_shift": float(np.mean(values)) if values else 0.0,
        **{f"direction_shift_{c}": v["shift"] for c, v in shift.items()},
    }


@dataclass(frozen=True)
class HeldOut:
    """The validation split of a pair table as texts, aligned by row."""

    user: list[str]
    chosen: list[str]
    rejected: list[str]
    system: str | None  # the one system turn of every prompt (None = none)


def held_out(pairs: pl.DataFrame) -> HeldOut:
    """The validation rows' user turns, chosen and rejected texts and their system turn.

    Args:
        pairs: a pair table; uses columns split, prompt, chosen, rejected (chat-message
            lists, as in ``PAIR_SCHEMA``).

    Raises:
        InputError: the validation rows use more than one system turn.
    """
    rows = pairs.filter(pl.col("split") == "validation").to_dicts()
    systems = {
        next((m["content"] for m in r["prompt"] if m["role"] == "system"), None) for r in rows
    }
    if len(systems) > 1:
        raise InputError("held-out pairs use several system prompts; expected one")
    return HeldOut(
        user=[next(m["content"] for m in r["prompt"] if m["role"] == "user") for r in rows],
        chosen=["".join(m["content"] for m in r["chosen"]) for r in rows],
        rejected=["".join(m["content"] for m in r["rejected"]) for r in rows],
        system=next(iter(systems), None),
    )


def read_answers(samples: Path) -> list[dict[str, Any]]:
    """The evaluate stage's sample rows (JSONL with instruction, trained, base, ...).

    Raises:
        InputError: the file holds no row.
    """
    answers = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    if not answers:
        raise InputError(f"{samples}: no answers to read; raise evaluate.samples")
    return answers


def held_out_reward(
    trained: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held: HeldOut,
    *,
    beta: float,
    batch_size: int,
) -> dict[str, float]:
    """Reward accuracy and mean margin of ``trained`` on ``held``, reference = ``base``
    (DPO's implicit reward); empty when there is no held-out pair."""
    if not held.user:
        return {}
    sums = [  # trained on chosen, rejected; then the reference on the same
        response_logps(m, tokenizer, held.user, y, system=held.system, batch_size=batch_size)[0]
        for m in (trained, base)
        for y in (held.chosen, held.rejected)
    ]
    acc = reward_accuracy(*(s.numpy() for s in sums), beta=beta)
    return {"reward_accuracy": acc["reward_accuracy"], "reward_margin": acc["reward_margin"]}


def answer_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    answers: Sequence[Mapping[str, Any]],
    key: str,
    *,
    layers: list[int],
    system: str | None,
    batch_size: int,
) -> torch.Tensor:
    """[n, L, d] last-token states of ``model`` reading each row's ``instruction`` and its
    answer ``row[key]`` as a finished conversation (``system`` turn first, if any)."""
    head = [] if system is None else [{"role": "system", "content": system}]
    texts = [
        render(
            tokenizer,
            [
                *head,
                {"role": "user", "content": a["instruction"]},
                {"role": "assistant", "content": a[key]},
            ],
            add_generation_prompt=False,
        )
        for a in answers
    ]
    return last_token_states(model, tokenizer, texts, layers=layers, batch_size=batch_size)


def judge_free_signals(
    base: PreTrainedModel,
    trained: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    held: HeldOut,
    answers: Sequence[Mapping[str, Any]],
    dfile: DirectionFile,
    layers: list[int],
    tie_rate: float,
    beta: float,
    system: str | None,
    batch_size: int,
) -> dict[str, Any]:
    """The ``signals@<method>`` metrics: held-out pairs, reward accuracy and margin (when
    there are held-out pairs), answers, the mean and per-criterion direction shift at
    ``layers`` (both answers re-read by ``base``, unsteered) and the judge's discrimination
    (1 − ``tie_rate`` of the evaluate stage)."""
    result: dict[str, Any] = {"held_out_pairs": len(held.user)}
    result.update(held_out_reward(trained, base, tokenizer, held, beta=beta, batch_size=batch_size))
    read = {
        k: answer_states(
            base, tokenizer, answers, k, layers=layers, system=system, batch_size=batch_size
        )
        for k in ("trained", "base")
    }
    rows = [dfile.layers.index(x) for x in layers]
    dirs = {c: (d.direction[rows], d.contrastive_norm[rows]) for c, d in dfile.criteria.items()}
    shift = direction_shift(
        {c: projections(read["trained"], u, s) for c, (u, s) in dirs.items()},
        {c: projections(read["base"], u, s) for c, (u, s) in dirs.items()},
    )
    result.update(answers=len(answers), **summarize_shift(shift))
    result["judge_discrimination"] = 1.0 - float(tie_rate)
    return result


def signals_line(result: Mapping[str, Any]) -> str:
    """The stage's one-line report of :func:`judge_free_signals`' result."""
    ra = result.get("reward_accuracy")
    return (
        f"signals: held-out reward accuracy {'n/a' if ra is None else f'{ra:.3f}'}, "
        f"direction shift {result['direction_shift']:+.4f}, "
        f"judge discrimination {result['judge_discrimination']:.3f}"
    )
