"""Turn a trainer's log history into the train stage's headline metrics (the per-step
curves are written live by :mod:`icon2.train.live`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

STEP_KEYS = {
    "loss": "loss",
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "spa/flagged_fraction": "spa_flagged_fraction",
    "dro/weighted_loss": "dro_weighted_loss",
    "dro/mean_shift": "dro_mean_shift",
}


def step_rows(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One row per logged training step: step plus the renamed metrics present."""
    rows = []
    for entry in history:
        if "loss" not in entry or "step" not in entry:
            continue
        row: dict[str, float] = {"step": float(entry["step"])}
        for key, name in STEP_KEYS.items():
            if key in entry:
                row[name] = round(float(entry[key]), 6)
        rows.append(row)
    return rows


def final_eval(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last evaluation's metrics, keys without the ``eval_`` prefix."""
    evals = [e for e in history if "eval_loss" in e]
    if not evals:
        return {}
    last = evals[-1]
    return {
        STEP_KEYS.get(k.removeprefix("eval_"), k.removeprefix("eval_").replace("/", "_")): round(
            float(v), 6
        )
        for k, v in last.items()
        if k.startswith("eval_") and isinstance(v, int | float)
    }


HEADLINE_EVAL = ("loss", "reward_accuracy", "reward_margin")
HEADLINE_TRAIN = ("loss", "reward_accuracy")


def headline(history: list[dict[str, Any]]) -> dict[str, float]:
    """The few numbers worth comparing across experiments: the last logged training step's
    loss, reward accuracy and margin, and the final evaluation's (``eval_*``)."""
    steps = step_rows(history)
    last = steps[-1] if steps else {}
    out = {f"final_{k}": last[k] for k in HEADLINE_TRAIN if k in last}
    evals = final_eval(history)
    out.update({f"eval_{k}": evals[k] for k in HEADLINE_EVAL if k in evals})
    return out


def reward_metrics(
    gather: Callable[[torch.Tensor], torch.Tensor],
    beta: float,
    pol_w: torch.Tensor,
    pol_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
) -> dict[str, float]:
    """The subset of TRL's DPO step metrics that needs no fused-head extras, over every rank
    (``gather``: the accelerator's ``gather_for_metrics``)."""
    chosen = beta * (pol_w - ref_w).detach()
    rejected = beta * (pol_l - ref_l).detach()
    return {
        "rewards/chosen": gather(chosen).mean().item(),
        "rewards/rejected": gather(rejected).mean().item(),
        "rewards/accuracies": gather((chosen > rejected).float()).mean().item(),
        "rewards/margins": gather(chosen - rejected).mean().item(),
        "logps/chosen": gather(pol_w.detach()).mean().item(),
        "logps/rejected": gather(pol_l.detach()).mean().item(),
    }
