"""Held-out prompts for evaluation and the record of one comparison."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from icon2.errors import InputError
from icon2.io import read_instructions


def load_prompts(path: Path, limit: int | None) -> tuple[list[str], list[str] | None]:
    """Instructions (and criteria when the file has them) to evaluate on.

    A Parquet file with a ``split`` column (the filter stage's table) contributes only its
    "validation" rows; any other JSONL/Parquet file with an ``instruction`` column is used
    whole. Returns (instructions, criteria or None), at most ``limit`` of them.
    """
    if path.suffix == ".parquet" and path.is_file():
        frame = pl.read_parquet(path)
        if "split" in frame.columns:
            frame = frame.filter(pl.col("split") == "validation")
            if frame.height == 0:
                raise InputError(f"{path}: no rows in the validation split to evaluate on")
        if "instruction" not in frame.columns:
            raise InputError(f"{path}: no 'instruction' column (columns: {frame.columns})")
        if frame.height == 0:
            raise InputError(f"{path}: the prompt file holds no instructions")
        frame = frame.head(limit) if limit else frame
        criteria = frame["criterion"].to_list() if "criterion" in frame.columns else None
        texts = [str(t).strip() for t in frame["instruction"].to_list()]
        for i, t in enumerate(texts):
            if not t:
                raise InputError(f"{path}: row {i + 1}: 'instruction' must be a non-empty string")
        return texts, criteria
    texts = read_instructions(path)
    return (texts[:limit] if limit else texts), None
