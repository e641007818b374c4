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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


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
