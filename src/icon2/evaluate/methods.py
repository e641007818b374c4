"""The comparison table: one row per method, from the metrics its stages wrote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

# Every column with a 95 % CI comes with <column>_low and <column>_high.
TABLE_SCHEMA: dict[str, pl.DataType] = {
    "method": pl.String(),
    "pairs": pl.Int64(),
    "device_hours": pl.Float64(),
    "money": pl.Float64(),
    # the trained model's DPO implicit reward on the common held-out set (every method's
    # validation pairs pooled: the same pairs for every row, none trained on)
    "held_out_pairs": pl.Int64(),
    "reward_accuracy": pl.Float64(),
    "reward_accuracy_low": pl.Float64(),
    "reward_accuracy_high": pl.Float64(),
    # the trained model's own answers along u, mean over criteria, in starting-answer SDs
    "direction_shift": pl.Float64(),
    "criteria_moved": pl.Int64(),  # criteria whose shift CI lies above 0
    "win_rate": pl.Float64(),
    "win_rate_low": pl.Float64(),  # absent (–) in metrics written before the interval was
    "win_rate_high": pl.Float64(),
    "lc_win_rate": pl.Float64(),
    "judge_discrimination": pl.Float64(),
    # the human-preference benchmark (the `benchmark` stage): the same pairs for every row
    "human_pairs": pl.Int64(),
    "human_reward_accuracy": pl.Float64(),
    "human_reward_accuracy_low": pl.Float64(),
    "human_reward_accuracy_high": pl.Float64(),
    "human_likelihood_accuracy": pl.Float64(),
    "human_likelihood_accuracy_low": pl.Float64(),
    "human_likelihood_accuracy_high": pl.Float64(),
}


def table_schema(criteria: list[str]) -> dict[str, pl.DataType]:
    """The table's columns: :data:`TABLE_SCHEMA` plus each criterion's shift and CI."""
    schema = dict(TABLE_SCHEMA)
    for c in criteria:
        for suffix in ("", "_low", "_high"):
            schema[f"direction_shift_{c}{suffix}"] = pl.Float64()
    return schema


def method_row(
    method: str,
    train: Mapping[str, Any],
    signals: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    benchmark: Mapping[str, Any],
    cost: Mapping[str, Any] | None,
    criteria: list[str],
) -> dict[str, Any]:
    """One row from a method's train, signals, evaluate and benchmark metrics and its
    cost-table row (None when the cost stage has no records for it)."""
    row: dict[str, Any] = {
        "method": method,
        "pairs": int(train["train_pairs"]) + int(train["validation_pairs"]),
        "device_hours": None if cost is None else float(cost["total_hours"]),
        "money": None if cost is None else float(cost["total_money"]),
        "held_out_pairs": int(signals["held_out_pairs"]),
        "criteria_moved": int(evaluation["criteria_moved"]),
        "direction_shift": _number(evaluation.get("direction_shift")),
        "win_rate": float(evaluation["win_rate"]),
        "win_rate_low": _number(evaluation.get("win_rate_low")),
        "win_rate_high": _number(evaluation.get("win_rate_high")),
        "lc_win_rate": float(evaluation["lc_win_rate"]),
        "judge_discrimination": float(signals["judge_discrimination"]),
        "human_pairs": int(benchmark["n"]),
    }
    for name in ("reward_accuracy", "likelihood_accuracy"):
        row[f"human_{name}"] = float(benchmark[name])
        row[f"human_{name}_low"] = float(benchmark[f"{name}_ci_low"])
        row[f"human_{name}_high"] = float(benchmark[f"{name}_ci_high"])
    for suffix in ("", "_low", "_high"):
        row[f"reward_accuracy{suffix}"] = _number(signals.get(f"reward_accuracy{suffix}"))
        for c in criteria:
            key = f"direction_shift_{c}{suffix}"
            row[key] = _number(evaluation.get(key))
    return row


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def to_markdown(table: pl.DataFrame) -> str:
    """A GitHub-style table; a value with a CI as "v [low, high]" in one cell; numbers to
    3 decimals (device-hours to 4), missing as "–"."""
    bounds = {c for c in table.columns if c.endswith(("_low", "_high"))}
    cols = [c for c in table.columns if c not in bounds]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.iter_rows(named=True):
        cells = []
        for c in cols:
            cell = _cell(c, row[c])
            low, high = row.get(f"{c}_low"), row.get(f"{c}_high")
            if row[c] is not None and low is not None and high is not None:
                cell += f" [{_cell(c, low)}, {_cell(c, high)}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(column: str, v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if column == "device_hours" else f"{v:.3f}"
    return str(v)
