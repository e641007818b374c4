"""Prompt files: JSONL or Parquet with an ``instruction`` column, read by one function,
:func:`read_prompts` (:func:`read_instructions` for a plain list); every problem names the
file and row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from icon2.core.errors import InputError
from icon2.core.tables import read_parquet


def read_instructions(path: Path, column: str = "instruction", *, minimum: int = 1) -> list[str]:
    """Read a JSONL or Parquet file of instructions; every problem names the file and row."""
    if not path.is_file():
        raise InputError(f"{path}: instruction file not found")
    if path.suffix == ".parquet":
        frame = read_parquet(path, "instruction file")
        if column not in frame.columns:
            raise InputError(f"{path}: no {column!r} column (columns: {frame.columns})")
        values = frame[column].to_list()
    elif path.suffix in {".jsonl", ".json"}:
        values = _read_jsonl_column(path, column)
    else:
        raise InputError(f"{path}: expected a .jsonl or .parquet file")
    out: list[str] = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise InputError(f"{path}: row {i + 1}: {column!r} must be a non-empty string")
        out.append(v.strip())
    if not out:
        raise InputError(f"{path}: the file holds no instructions")
    if len(out) < minimum:
        raise InputError(f"{path}: need at least {minimum} instructions, found {len(out)}")
    return out


def _read_jsonl_column(path: Path, column: str) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    values: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or column not in row:
            raise InputError(f"{path}: line {lineno}: no {column!r} field")
        values.append(row[column])
    return values


def read_prompts(
    path: Path, *, split: str | None = None, limit: int | None = None
) -> tuple[list[str], list[str] | None]:
    """Instructions (and their criteria when the file has them) from a prompt file.

    A Parquet file with a ``split`` column (the filter stage's table) contributes only its
    ``split`` rows when ``split`` is given; any other JSONL/Parquet file with an
    ``instruction`` column is used whole. Returns (instructions, criteria or None), at most
    ``limit`` of them.
    """
    if path.suffix == ".parquet" and path.is_file():
        frame = read_parquet(path, "prompt file")
        if split is not None and "split" in frame.columns:
            frame = frame.filter(pl.col("split") == split)
            if frame.height == 0:
                raise InputError(f"{path}: no rows in the {split} split")
        if "instruction" not in frame.columns:
            raise InputError(f"{path}: no 'instruction' column (columns: {frame.columns})")
        if frame.height == 0:
            raise InputError(f"{path}: the prompt file holds no instructions")
        frame = frame.head(limit) if limit else frame
        criteria = frame["criterion"].to_list() if "criterion" in frame.columns else None
        texts = [str(t).strip() if t is not None else "" for t in frame["instruction"].to_list()]
        for i, text in enumerate(texts):
            if not text:
                raise InputError(f"{path}: row {i + 1}: 'instruction' must be a non-empty string")
        return texts, criteria
    texts = read_instructions(path)
    return (texts[:limit] if limit else texts), None
