"""Reading the stages' cost files and printing Table 4 (METHOD A8)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from icon2.core.errors import InputError
from icon2.evaluate.cost import CostRecord


def read_cost_files(paths: Sequence[Path]) -> list[CostRecord]:
    """Every record of every ``{"cost": [...]}`` file; a bad file is one clear error."""
    found: list[CostRecord] = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable cost JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("cost"), list):
            raise InputError(f"{path}: no `cost` list; rerun the stage that wrote it")
        try:
            found += [CostRecord.from_json(r) for r in data["cost"]]
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: bad cost record: {exc}") from None
    if not found:
        raise InputError("no cost records in " + ", ".join(str(p) for p in paths))
    return found


def format_table(
    table: pl.DataFrame,
    ratio: Mapping[str, float | None],
    *,
    currency: str,
    numerator: str,
    denominator: str,
) -> str:
    """Table 4's layout: device-hours for response generation, preference annotation and in
    total per method, the money, then the ratio line."""
    head = (
        f"{'method':<18} {'generation (dev-h)':>19} {'annotation (dev-h)':>19} "
        f"{'total (dev-h)':>14} {'total (' + currency + ')':>12} {'tokens out':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in table.iter_rows(named=True):
        lines.append(
            f"{r['method']:<18} {r['generation_hours']:>19.6f} {r['annotation_hours']:>19.6f} "
            f"{r['total_hours']:>14.6f} {r['total_money']:>12.4f} {r['tokens_generated']:>11d}"
        )

    def show(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines.append(
        f"{numerator} / {denominator}: generation {show(ratio['generation'])}, "
        f"annotation {show(ratio['annotation'])}, total {show(ratio['total'])} (device-hours)"
    )
    lines.append(
        f"{numerator} / {denominator}: generation {show(ratio['tokens_generation'])}, "
        f"annotation {show(ratio['tokens_annotation'])}, total {show(ratio['tokens_total'])} "
        "(tokens generated + read)"
    )
    return "\n".join(lines)
