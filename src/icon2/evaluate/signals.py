"""Evaluation signals that need no judge, and one that shows whether the judge can see.

* **Held-out reward accuracy** — DPO's implicit reward r(x, y) = β[log π_θ(y|x) −
  log π_ref(y|x)] of the trained model (π_ref = the starting model) on held-out pairs; the
  share of pairs with r(chosen) > r(rejected), with a bootstrap 95 % CI. 0.5 is chance; the
  starting model itself has r ≡ 0 and scores 0 (ties are not wins). In the comparison
  every method is scored on one **common** held-out set — the validation pairs of every
  method's table, pooled (:func:`common_held_out`) — so that a method whose own pairs are
  easy does not look better for it: no method trained on any of them. ``by_source`` splits
  the accuracy by the method whose table each pooled pair came from (first seen), which
  shows a model that only wins on pairs of its own kind.
* **Judge discrimination** — the share of judgements that are not ties; a blind judge
  (every P ≈ 0.5) scores 0 and its win rates mean nothing.

The direction shift (the trained model's own answers along u) is in
:mod:`icon2.evaluate.shift`; the `evaluate` stage measures it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import InputError
from icon2.evaluate.bootstrap import mean_ci
from icon2.model.logprobs import response_logps


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


def judge_discrimination(p_first: np.ndarray, *, tie_margin: float) -> float:
    """Share of judgements with |P − 0.5| > tie_margin (the evaluate stage's tie rule)."""
    p = np.asarray(p_first, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("no judgements")
    return float(np.mean(np.abs(p - 0.5) > tie_margin))


@dataclass(frozen=True)
class HeldOut:
    """The validation split of a pair table as texts, aligned by row."""

    user: list[str]
    chosen: list[str]
    rejected: list[str]
    system: str | None  # the one system turn of every prompt (None = none)
    source: list[str] = field(default_factory=list)  # per row, when pooled from named tables


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


def pool_files(methods: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:
    """The pair files of every method, each checked to be or lie in one of ``roots``: the
    files and folders the stage's DVC deps declare, so that a method added in params is a
    dependency too.

    Raises:
        InputError: a file outside every root (named by its ``compare.methods`` key).
    """
    inside = [r.resolve() for r in roots]
    files = []
    for method, file in methods.items():
        path = Path(file)
        if not any(path.resolve().is_relative_to(r) for r in inside):
            raise InputError(
                f"compare.methods.{method}: {file} lies outside the folders the signals stage "
                f"depends on ({', '.join(str(r) for r in roots)}); move it there or add its "
                "folder as --pool-root and as a dep in comparison/dvc.yaml"
            )
        files.append(path)
    return files


def common_held_out(tables: Mapping[str, pl.DataFrame]) -> HeldOut:
    """The validation pairs of every table, pooled, each (prompt, chosen, rejected) once,
    in the order of ``tables`` and their rows; ``source`` names the table each came from
    (the first, for a pair in several).

    Args:
        tables: source name → pair table (columns split, prompt, chosen, rejected).

    Raises:
        InputError: no table has a validation pair, or they use several system turns.
    """
    seen: set[tuple[str, str, str]] = set()
    user: list[str] = []
    chosen: list[str] = []
    rejected: list[str] = []
    source: list[str] = []
    systems: set[str | None] = set()
    for name, frame in tables.items():
        h = held_out(frame)
        if h.user:
            systems.add(h.system)
        for row in zip(h.user, h.chosen, h.rejected, strict=True):
            if row not in seen:
                seen.add(row)
                user.append(row[0])
                chosen.append(row[1])
                rejected.append(row[2])
                source.append(name)
    if not user:
        raise InputError(
            f"no validation pairs in {', '.join(tables)}: the common held-out set is empty"
        )
    if len(systems) > 1:
        raise InputError("the held-out pairs of the methods use different system prompts")
    return HeldOut(user, chosen, rejected, next(iter(systems)), source)


def held_out_reward(
    trained: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held: HeldOut,
    *,
    beta: float,
    batch_size: int,
    seed: int,
    resamples: int,
) -> dict[str, Any]:
    """Reward accuracy and mean margin of ``trained`` on ``held``, reference = ``base``
    (DPO's implicit reward), each with its bootstrap 95 % CI over pairs, and, when ``held``
    names its rows' sources, ``by_source``: each source's pairs, reward accuracy and CI.
    Empty when there is no held-out pair."""
    if not held.user:
        return {}
    sums = [  # trained on chosen, rejected; then the reference on the same
        response_logps(m, tokenizer, held.user, y, system=held.system, batch_size=batch_size)[0]
        for m in (trained, base)
        for y in (held.chosen, held.rejected)
    ]
    pc, pr, rc, rr = (x.numpy() for x in sums)
    reward_accuracy(pc, pr, rc, rr, beta=beta)  # checks the shapes and β
    margin = beta * ((pc - rc) - (pr - rr))
    out: dict[str, Any] = {}
    won = (margin > 0).astype(float)
    for name, values in (("reward_accuracy", won), ("reward_margin", margin)):
        mean, low, high = mean_ci(values, seed=seed, resamples=resamples)
        out.update({name: mean, f"{name}_low": low, f"{name}_high": high})
    if held.source:
        labels = np.asarray(held.source, dtype=object)
        by_source: dict[str, dict[str, float]] = {}
        for name in dict.fromkeys(held.source):
            mean, low, high = mean_ci(won[labels == name], seed=seed, resamples=resamples)
            by_source[name] = {
                "pairs": int((labels == name).sum()),
                "reward_accuracy": mean,
                "reward_accuracy_low": low,
                "reward_accuracy_high": high,
            }
        out["by_source"] = by_source
    return out


def judge_free_signals(
    base: PreTrainedModel,
    trained: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    held: HeldOut,
    tie_rate: float,
    beta: float,
    batch_size: int,
    seed: int,
    resamples: int,
) -> dict[str, Any]:
    """The ``signals@<method>`` metrics: reward accuracy and margin with CIs on the
    held-out pairs ``held`` (the comparison's common set) and the judge's discrimination
    (1 − ``tie_rate`` of the evaluate stage)."""
    result: dict[str, Any] = {"held_out_pairs": len(held.user)}
    result.update(
        held_out_reward(
            trained,
            base,
            tokenizer,
            held,
            beta=beta,
            batch_size=batch_size,
            seed=seed,
            resamples=resamples,
        )
    )
    result["judge_discrimination"] = 1.0 - float(tie_rate)
    return result


def signals_line(result: Mapping[str, Any]) -> str:
    """The stage's one-line report of :func:`judge_free_signals`' result."""
    ra = result.get("reward_accuracy")
    acc = (
        "n/a"
        if ra is None
        else f"{ra:.3f} [{result['reward_accuracy_low']:.3f}, {result['reward_accuracy_high']:.3f}]"
    )
    split = "".join(
        f"; {name}'s {v['pairs']}: {v['reward_accuracy']:.3f}"
        for name, v in result.get("by_source", {}).items()
    )
    return (
        f"signals: held-out reward accuracy {acc} on {result['held_out_pairs']} pairs{split}, "
        f"judge discrimination {result['judge_discrimination']:.3f}"
    )
