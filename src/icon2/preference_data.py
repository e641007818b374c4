"""Preference tables → TRL datasets, and the checks a table must pass first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import polars as pl

from icon2.errors import InputError

MESSAGE_COLUMNS = ("prompt", "chosen", "rejected")


def read_pairs(path: Path) -> pl.DataFrame:
    """Read a conversational preference table and reject rows that carry no signal.

    Input columns: prompt, chosen, rejected (lists of {role, content} messages); optional
    split ("train" | "validation"; missing = all train).
    """
    if not path.is_file():
        raise InputError(f"{path}: preference file not found")
    try:
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    except Exception as exc:  # polars raises several types for unreadable files
        raise InputError(f"{path}: not a readable Parquet/JSONL preference file: {exc}") from None
    missing = [c for c in MESSAGE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; expected {list(MESSAGE_COLUMNS)}")
    if frame.height == 0:
        raise InputError(f"{path}: the preference file has no rows")
    for i, row in enumerate(frame.select(MESSAGE_COLUMNS).iter_rows(named=True)):
        for col in MESSAGE_COLUMNS:
            if not _text(row[col]).strip():
                raise InputError(f"{path}: row {i + 1}: {col!r} is empty")
        if _text(row["chosen"]).strip() == _text(row["rejected"]).strip():
            raise InputError(f"{path}: row {i + 1}: chosen and rejected are identical")
    if "split" not in frame.columns:
        frame = frame.with_columns(pl.lit("train").alias("split"))
    return frame


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if not messages:
        return ""
    return "".join(str(m.get("content") or "") for m in messages)


def to_datasets(frame: pl.DataFrame) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, validation or None) in TRL's conversational preference format."""

    def part(name: str) -> datasets.Dataset | None:
        rows = frame.filter(pl.col("split") == name).select(MESSAGE_COLUMNS)
        return datasets.Dataset.from_list(rows.to_dicts()) if rows.height else None

    train = part("train")
    if train is None:
        raise InputError("the preference table has no rows in the train split")
    return train, part("validation")
