"""Table 4 (ICON² §4.5, METHOD A8): the stages' cost records summed into device-hours,
money and tokens per method and category, and the ratio of two methods.

Money = device-hours × one hourly price. The records themselves (:class:`CostRecord`,
:class:`Meter`) are in :mod:`icon2.core.cost`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from icon2.core.cost import CATEGORIES, CostRecord
from icon2.core.errors import InputError

TABLE_SCHEMA: dict[str, pl.DataType] = {  # Table 4's layout, one row per method
    "method": pl.String(),
    "generation_hours": pl.Float64(),
    "annotation_hours": pl.Float64(),
    "total_hours": pl.Float64(),
    "generation_money": pl.Float64(),
    "annotation_money": pl.Float64(),
    "total_money": pl.Float64(),
    "wall_seconds": pl.Float64(),
    "tokens_generated": pl.Int64(),
    "tokens_read": pl.Int64(),
    # tokens generated + read, per category and in total: the machine-independent measure
    "generation_tokens": pl.Int64(),
    "annotation_tokens": pl.Int64(),
    "total_tokens": pl.Int64(),
}


def cost_table(records: pl.DataFrame, *, price_per_device_hour: float) -> pl.DataFrame:
    """Sum per-stage records into Table 4: device-hours and money per method and category.

    Args:
        records: ``RECORD_SCHEMA`` rows.
        price_per_device_hour: money per device-hour (same currency for every row).

    Returns:
        One ``TABLE_SCHEMA`` row per method (sorted by name): generation/annotation/total
        device-hours, money and tokens (generated + read), wall seconds and token totals.

    Raises:
        ValueError: a negative price, or a category outside ``CATEGORIES``.
    """
    if not price_per_device_hour >= 0:
        raise ValueError(f"price_per_device_hour must be >= 0, got {price_per_device_hour}")
    bad = sorted(set(records["category"].to_list()) - set(CATEGORIES))
    if bad:
        raise ValueError(f"unknown cost categories {bad}; expected {CATEGORIES}")
    hours = pl.col("wall_seconds") * pl.col("device_count") / 3600.0

    tokens = pl.col("tokens_generated") + pl.col("tokens_read")

    def part(category: str, of: pl.Expr = hours) -> pl.Expr:
        return of.filter(pl.col("category") == category).sum()

    table = (
        records.group_by("method")
        .agg(
            part("response generation").alias("generation_hours"),
            part("preference annotation").alias("annotation_hours"),
            part("response generation", tokens).alias("generation_tokens"),
            part("preference annotation", tokens).alias("annotation_tokens"),
            tokens.sum().alias("total_tokens"),
            pl.col("wall_seconds").sum(),
            pl.col("tokens_generated").sum(),
            pl.col("tokens_read").sum(),
        )
        .with_columns(total_hours=pl.col("generation_hours") + pl.col("annotation_hours"))
        .with_columns(
            (pl.col(f"{p}_hours") * price_per_device_hour).alias(f"{p}_money")
            for p in ("generation", "annotation", "total")
        )
        .sort("method")
    )
    return table.select(list(TABLE_SCHEMA)).cast(TABLE_SCHEMA)  # type: ignore[arg-type]


def cost_ratio(
    table: pl.DataFrame, numerator: str = "icon2", denominator: str = "sampling_ranking"
) -> dict[str, float | None]:
    """Cost of ``numerator`` over ``denominator`` per category and in total, in device-hours
    (``generation``, ``annotation``, ``total``) and in tokens generated + read
    (``tokens_generation``, ``tokens_annotation``, ``tokens_total``).

    The token ratio does not depend on the machine or its load when the records were
    made, so it compares two methods' work even when their seconds were measured apart.
    A ratio whose denominator is 0 is None (nothing to compare with).

    Raises:
        ValueError: a method that is not in the table (the message lists the ones that are).
    """
    methods = table["method"].to_list()
    for m in (numerator, denominator):
        if m not in methods:
            raise ValueError(f"no cost records for method {m!r}; the table has {methods}")
    num = table.filter(pl.col("method") == numerator).row(0, named=True)
    den = table.filter(pl.col("method") == denominator).row(0, named=True)
    out: dict[str, float | None] = {}
    for key in ("generation", "annotation", "total"):
        d = den[f"{key}_hours"]
        out[key] = num[f"{key}_hours"] / d if d > 0 else None
    for key in ("generation", "annotation", "total"):
        d = den[f"{key}_tokens"]
        out[f"tokens_{key}"] = num[f"{key}_tokens"] / d if d > 0 else None
    return out


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
