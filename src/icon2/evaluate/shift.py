"""Direction shift: did training move the model's own answers along the preference directions?

The trained and the starting model answer the same held-out prompts. Both answers are
re-read by the *starting* model without steering (the directions live in its residual
stream). At each controlled layer l the state is averaged over the answer's own tokens
(not the prompt, not an end-of-turn token) and projected on u^l_c, divided by the layer's
mean contrastive-vector norm s_l (so 1.0 is "one positive- vs negative-system-prompt's
worth", the unit γ is measured in, METHOD A4), then averaged over layers: one number per
answer and criterion.

Per criterion the shift is the mean over prompts of (trained − starting), with a
percentile-bootstrap 95 % CI over prompts, in two units: contrastive-norm units
(``shift``) and the spread (standard deviation over prompts) of the starting model's own
answers (``shift_sd``, an effect size that does not depend on how the directions were
scaled). A positive shift means training moved the answers towards the positive prompt;
a criterion "moved" when its CI lies above 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.evaluate.bootstrap import mean_ci
from icon2.model.states import answer_token_means
from icon2.steps.direction_file import DirectionFile


def projections(
    states: torch.Tensor, directions: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over layers of h^l · u^l / s_l → float64 [n] (NaN where a state is NaN).

    Args:
        states: [n, L, d] states at the controlled layers (e.g. answer-token means).
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


_VALUES = (
    "trained",
    "base",
    "shift",
    "shift_low",
    "shift_high",
    "shift_sd",
    "shift_sd_low",
    "shift_sd_high",
)


def direction_shift(
    trained: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    *,
    seed: int,
    resamples: int = 2000,
) -> dict[str, dict[str, float | None]]:
    """Per criterion: mean projection of trained and starting answers, the paired shift
    with its bootstrap 95 % CI (contrastive-norm units and starting-answer spread units),
    the share of prompts where trained > starting, and n.

    Prompts where either answer has no token (NaN) are left out; ``n`` counts the rest
    (with n = 0 every value is None). The spread-unit values are None when the starting
    answers have no spread (n = 1).
    """
    out: dict[str, dict[str, float | None]] = {}
    for c in trained:
        t, b = trained[c].double().numpy(), base[c].double().numpy()
        if t.shape != b.shape or t.ndim != 1:
            raise ValueError(f"{c}: expected two [n] projections of one length")
        keep = np.isfinite(t) & np.isfinite(b)
        t, b = t[keep], b[keep]
        if t.size == 0:  # e.g. a model that ends every answer at once: nothing to read
            out[c] = {"n": 0.0, "share_up": None, "spread": None}
            out[c].update({k: None for k in _VALUES})
            continue
        d = t - b
        shift, low, high = mean_ci(d, seed=seed, resamples=resamples)
        spread = float(b.std(ddof=1)) if b.size > 1 else 0.0
        # With one prompt, or identical starting answers, there is no spread to measure in.
        unit = spread if spread > 0 else None
        out[c] = {
            "n": float(t.size),
            "trained": float(t.mean()),
            "base": float(b.mean()),
            "shift": shift,
            "shift_low": low,
            "shift_high": high,
            "spread": spread,
            "shift_sd": None if unit is None else shift / unit,
            "shift_sd_low": None if unit is None else low / unit,
            "shift_sd_high": None if unit is None else high / unit,
            "share_up": float(np.mean(d > 0)),
        }
    return out


def answer_shift(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    trained_answers: Sequence[str],
    base_answers: Sequence[str],
    *,
    dfile: DirectionFile,
    layers: list[int],
    system: str | None,
    batch_size: int,
    seed: int,
    resamples: int,
) -> dict[str, dict[str, float | None]]:
    """:func:`direction_shift` of ``trained_answers`` against ``base_answers`` (one per
    instruction), both re-read by ``base`` unsteered at ``layers`` (1-based, a subset of
    the direction file's), every answer token averaged."""
    read = {
        name: answer_token_means(
            base,
            tokenizer,
            instructions,
            answers,
            layers=layers,
            system=system,
            batch_size=batch_size,
        )
        for name, answers in (("trained", trained_answers), ("base", base_answers))
    }
    rows = [dfile.layers.index(x) for x in layers]
    dirs = {c: (d.direction[rows], d.contrastive_norm[rows]) for c, d in dfile.criteria.items()}
    return direction_shift(
        {c: projections(read["trained"], u, s) for c, (u, s) in dirs.items()},
        {c: projections(read["base"], u, s) for c, (u, s) in dirs.items()},
        seed=seed,
        resamples=resamples,
    )


def summarize_shift(shift: Mapping[str, Mapping[str, float | None]]) -> dict[str, Any]:
    """Headline metrics: the mean shift over criteria, each criterion's shift and CI (in
    starting-answer spread units; None without a spread), and how many criteria moved (CI
    above 0)."""
    sd = [v["shift_sd"] for v in shift.values() if v["shift_sd"] is not None]
    out: dict[str, Any] = {
        "direction_shift": float(np.mean(sd)) if sd else None,
        "criteria_moved": sum((v["shift_sd_low"] or 0.0) > 0 for v in shift.values()),
    }
    for c, v in shift.items():
        out[f"direction_shift_{c}"] = v["shift_sd"]
        out[f"direction_shift_{c}_low"] = v["shift_sd_low"]
        out[f"direction_shift_{c}_high"] = v["shift_sd_high"]
    return out


def shift_line(shift: Mapping[str, Mapping[str, float | None]]) -> str:
    """One line a person reads: each criterion's shift [95 % CI] in spread units."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.2f}"

    parts = [
        f"{c} {fmt(v['shift_sd'])} [{fmt(v['shift_sd_low'])}, {fmt(v['shift_sd_high'])}]"
        for c, v in shift.items()
    ]
    n = int(next(iter(shift.values()))["n"] or 0) if shift else 0
    return f"direction shift (starting-answer SD, 95 % CI, {n} prompts): " + ", ".join(parts)
