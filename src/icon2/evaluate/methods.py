"""The comparison table: one row per method, from the metrics its stages wrote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

TABLE_SCHEMA: dict[str, pl.DataType] = {
    "method": pl.String(),
    "pairs": pl.Int64(),
    "device_hours": pl.Float64(),
    "money": pl.Float64(),
    "reward_accuracy": pl.Float64(),  # held-out, trained model (DPO implicit reward)
    "direction_shift": pl.Float64(),  # mean over criteria, in contrastive-norm units
    "win_rate": pl.Float64(),
    "lc_win_rate": pl.Float64(),
    "judge_discrimination": pl.Float64(),
}


def method_row(
    method: str,
    train: Mapping[str, Any],
    signals: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    cost: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One row from a method's train, signals and evaluate metrics and its cost-table row
    (None when the cost stage has no records for it)."""
    return {
        "method": method,
        "pairs": int(train["train_pairs"]) + int(train["validation_pairs"]),
        "device_hours": None if cost is None else float(cost["total_hours"]),
        "money": None if cost is None else float(cost["total_money"]),
        # None when the method's pairs have no validation split
        "reward_accuracy": _number(signals.get("reward_accuracy")),
        "direction_shift": float(signals["direction_shift"]),
        "win_rate": float(evaluation["win_rate"]),
        "lc_win_rate": float(evaluation["lc_win_rate"]),
        "judge_discrimination": float(signals["judge_discrimination"]),
    }


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def to_markdown(table: pl.DataFrame) -> str:
    """A GitHub-style table; numbers to 3 decimals (device-hours to 4), missing as "–"."""
    cols = table.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.iter_rows(named=True):
        cells = []
        for c in cols:
            v = row[c]
            if v is None:
                cells.append("–")
            elif isinstance(v, float):
                cells.append(f"{v:.4f}" if c == "device_hours" else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
