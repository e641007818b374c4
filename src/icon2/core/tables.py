"""Every table the pipeline writes or reads: its declared schema once, and its reader.

Tables are Parquet with a declared schema, checked on write and on read; the provenance
record goes into the file's key-value metadata. Prompt files are read by
:mod:`icon2.core.prompts`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from icon2.core.errors import InputError, first_line
from icon2.core.io import PROVENANCE_KEY, atomic_path

MESSAGES = pl.List(pl.Struct({"role": pl.String(), "content": pl.String()}))
MESSAGE_COLUMNS = ("prompt", "chosen", "rejected")

# A2: what the model sampled, before cleaning.
RAW_SCHEMA: dict[str, pl.DataType] = {
    "text": pl.String(),
    "finish_reason": pl.String(),
    "token_count": pl.Int64(),
    "seed": pl.Int64(),
}


# A2: cleaned instructions (the synthesize stage's output).
INSTRUCTION_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "instruction": pl.String(),
    "token_count": pl.Int64(),
    "finish_reason": pl.String(),
    "seed": pl.Int64(),
}

# A4: steered pairs in TRL's conversational preference format.
PAIR_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "split": pl.String(),
    "criterion": pl.String(),
    "prompt": MESSAGES,
    "chosen": MESSAGES,
    "rejected": MESSAGES,
    "gamma_pos": pl.Float64(),
    "gamma_neg": pl.Float64(),
    "gamma_scale": pl.String(),
    "layers": pl.List(pl.Int64()),
    "chosen_tokens": pl.Int64(),
    "rejected_tokens": pl.Int64(),
    "chosen_finish": pl.String(),
    "rejected_finish": pl.String(),
}
# Part B: one SPA iteration's self-annotated pairs, with the implicit rewards (eq. 7).
SPA_PAIR_SCHEMA: dict[str, pl.DataType] = {
    "split": pl.String(),
    "prompt": MESSAGES,
    "chosen": MESSAGES,
    "rejected": MESSAGES,
    "reward_chosen": pl.Float64(),
    "reward_rejected": pl.Float64(),
    # "stop" = the answer ended its turn, "length" = the token budget cut it (kept in part B).
    "chosen_finish": pl.String(),
    "rejected_finish": pl.String(),
}

# The benchmark stage's per-pair scores of a human-preference file (icon2.evaluate.benchmark).
BENCHMARK_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "logp_chosen": pl.Float64(),  # trained model, summed over the answer's tokens
    "logp_rejected": pl.Float64(),
    "ref_logp_chosen": pl.Float64(),  # starting model
    "ref_logp_rejected": pl.Float64(),
    "chosen_tokens": pl.Int64(),  # without the end-of-turn token
    "rejected_tokens": pl.Int64(),
    "reward_margin": pl.Float64(),
}


def score_schema(criteria: list[str]) -> dict[str, pl.DataType]:
    """A3: the score stage's table for these criteria, in column order."""
    schema: dict[str, pl.DataType] = {"id": pl.String(), "instruction": pl.String()}
    schema.update({f"raw_{c}": pl.Float64() for c in criteria})
    schema.update({f"std_{c}": pl.Float64() for c in criteria})
    schema.update(
        {
            "criterion": pl.String(),
            "consistency": pl.Float64(),
            "margin": pl.Float64(),
            "standardised": pl.Boolean(),
        }
    )
    return schema


def kept_schema(criteria: list[str]) -> dict[str, pl.DataType]:
    """A3: the filter stage's table: the scores plus the train/validation ``split``."""
    return {**score_schema(criteria), "split": pl.String()}


def criteria_of(frame: pl.DataFrame) -> list[str]:
    """The criteria of a score/kept table: one ``raw_<criterion>`` column each."""
    return [c.removeprefix("raw_") for c in frame.columns if c.startswith("raw_")]


SPLITS = ("train", "validation")


def read_scores(path: Path) -> tuple[pl.DataFrame, list[str]]:
    """The score stage's table and its criteria (whatever ``raw_<criterion>`` it has)."""
    frame = read_table(path, {}, what="score table (the score stage's output)")
    criteria = criteria_of(frame)
    if not criteria:
        raise InputError(f"{path}: no 'raw_<criterion>' column; expected the score stage's table")
    check_schema(frame, score_schema(criteria), str(path))
    check_text(frame, ("id", "instruction", "criterion"), str(path))
    unknown = sorted(set(frame["criterion"].to_list()) - set(criteria))
    if unknown:
        raise InputError(
            f"{path}: column 'criterion' holds {unknown}, which have no 'raw_<criterion>' "
            f"column (criteria: {criteria})"
        )
    return frame, criteria


def read_kept(path: Path) -> pl.DataFrame:
    """The filter stage's table (scores + split)."""
    frame = read_table(path, {}, what="kept table (the filter stage's output)")
    criteria = criteria_of(frame)
    if not criteria:
        raise InputError(f"{path}: no 'raw_<criterion>' column; expected the filter stage's table")
    check_schema(frame, kept_schema(criteria), str(path))
    check_text(frame, ("id", "instruction", "criterion", "split"), str(path))
    bad = sorted(set(frame["split"].to_list()) - set(SPLITS))
    if bad:
        raise InputError(f"{path}: column 'split' holds {bad}; expected one of {list(SPLITS)}")
    return frame


def check_text(frame: pl.DataFrame, columns: tuple[str, ...], where: str) -> None:
    """Raise InputError naming the first row whose value in one of ``columns`` is null or blank."""
    for name in columns:
        col = pl.col(name)
        bad = frame.with_row_index("_row").filter(col.is_null() | (col.str.strip_chars() == ""))
        if bad.height:
            row = int(bad["_row"][0]) + 1
            raise InputError(f"{where}: row {row}: {name!r} must be a non-empty string")


def check_schema(frame: pl.DataFrame, schema: Mapping[str, pl.DataType], where: str) -> None:
    """Raise InputError unless ``frame`` has every declared column with its declared type."""
    for name, dtype in schema.items():
        if name not in frame.columns:
            raise InputError(f"{where}: missing column {name!r} (expected {dtype})")
        if frame.schema[name] != dtype:
            raise InputError(
                f"{where}: column {name!r} has type {frame.schema[name]}, expected {dtype}"
            )


def write_table(
    path: Path,
    frame: pl.DataFrame,
    schema: Mapping[str, pl.DataType],
    provenance: Mapping[str, Any],
) -> None:
    """Write Parquet atomically after checking the declared schema; provenance goes in
    the file's key-value metadata under ``icon2``."""
    check_schema(frame, schema, str(path))
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, metadata={PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})


def read_table(
    path: Path,
    schema: Mapping[str, pl.DataType],
    *,
    what: str = "Parquet table",
    text: tuple[str, ...] = (),
    allow_empty: bool = False,
) -> pl.DataFrame:
    """A Parquet table with the declared columns, at least one row (unless ``allow_empty``)
    and no null/blank value in the ``text`` columns; every problem names the file."""
    frame = read_parquet(path, what)
    check_schema(frame, schema, str(path))
    if frame.height == 0 and not allow_empty:
        raise InputError(f"{path}: the {what} has 0 rows; expected at least one")
    check_text(frame, text, str(path))
    return frame


def read_parquet(path: Path, what: str = "Parquet table") -> pl.DataFrame:
    """Read a Parquet file; a missing or unreadable one is an InputError naming it."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected the {what})")
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars/pyarrow raise several types for a corrupt file
        raise InputError(
            f"{path}: not a readable Parquet file ({first_line(exc)}); expected the {what}"
        ) from None


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
        raise InputError(
            f"{path}: not a readable Parquet/JSONL preference file ({first_line(exc)})"
        ) from None
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
