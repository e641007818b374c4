"""Preference files in TRL's format, read for the `benchmark` stage and judged by `check`.

A preference file is JSONL or Parquet, one pair per row, with the fields ``prompt``,
``chosen`` and ``rejected`` in TRL's explicit-prompt preference format:

* conversational — ``prompt`` is a list of ``{"role", "content"}`` messages (an optional
  ``system`` turn first, then ``user`` and ``assistant`` turns alternating, ending with a
  ``user`` turn), ``chosen`` and ``rejected`` each one ``assistant`` message;
* standard — plain strings: the prompt is one user turn, the answers are its replies.

An optional string ``id`` names the pair in the per-pair output; other fields are ignored.
Every problem names the file and the row: rows are numbered from 1, and in JSONL row N is
line N (blank lines are skipped but counted). Nothing here imports an ML library, so the
`check` stage can validate the file before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from icon2.core.errors import InputError, first_line
from icon2.core.io import text_id

FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One pair: the conversation so far, and the two final assistant answers."""

    id: str
    prompt: list[dict[str, str]]  # system? then user/assistant alternating, last = user
    chosen: str
    rejected: str


def read_preference_file(path: Path, *, limit: int | None = None) -> list[PreferencePair]:
    """Every pair of a preference file (the first ``limit`` when given), validated.

    Raises:
        InputError: naming the file (and the row) when the file is missing, unreadable, holds
            no pair, or a row is malformed: a missing field, a message without a role or
            text, a prompt whose last turn is not the user's, an answer that is not one
            assistant message, empty or identical answers.
    """
    rows = _raw_rows(path)
    pairs = [_pair(path, n, row) for n, row in rows]
    if not pairs:
        raise InputError(
            f"{path}: the preference file holds no pairs; expected rows with "
            f"{list(FIELDS)} in TRL's preference format"
        )
    return pairs[:limit] if limit else pairs


def _raw_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number from 1, decoded row) of a JSONL or Parquet file."""
    if not path.is_file():
        raise InputError(f"{path}: preference file not found")
    if path.suffix == ".parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars/pyarrow raise several types for a corrupt file
            raise InputError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
        return list(enumerate(frame.to_dicts(), start=1))
    if path.suffix not in {".jsonl", ".json"}:
        raise InputError(f"{path}: expected a .jsonl or .parquet preference file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: row {n}: not valid JSON ({exc.msg})") from None
    return rows


def _pair(path: Path, n: int, row: Any) -> PreferencePair:
    where = f"{path}: row {n}"
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object with {list(FIELDS)}")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise InputError(f"{where}: missing field(s) {missing}; expected {list(FIELDS)}")
    prompt = _prompt(where, row["prompt"])
    chosen = _answer(where, "chosen", row["chosen"])
    rejected = _answer(where, "rejected", row["rejected"])
    if chosen.strip() == rejected.strip():
        raise InputError(f"{where}: chosen and rejected are identical; a pair needs two answers")
    pid = row.get("id")
    if pid is not None and not (isinstance(pid, str) and pid.strip()):
        raise InputError(f"{where}: 'id' must be a non-empty string when given (got {pid!r})")
    key = json.dumps([prompt, chosen, rejected], ensure_ascii=False)
    return PreferencePair(pid or text_id(key), prompt, chosen, rejected)


def _prompt(where: str, value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": value}]
    msgs = _messages(where, "prompt", value)
    turns = [m["role"] for m in msgs if m["role"] != "system"]
    if "system" in [m["role"] for m in msgs[1:]]:
        raise InputError(f"{where}: 'prompt': a system message may only come first")
    for i, role in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise InputError(
                f"{where}: 'prompt': turn {i + 1} is from {role!r}, expected {want!r} (user "
                f"and assistant turns alternate, starting with the user)"
            )
    if not turns or turns[-1] != "user":
        raise InputError(f"{where}: 'prompt': the last message must be the user's")
    return msgs


def _answer(where: str, name: str, value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        msgs = _messages(where, name, value)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            roles = [m["role"] for m in msgs]
            raise InputError(
                f"{where}: {name!r}: expected one assistant message (got roles {roles})"
            )
        text = msgs[0]["content"]
    if not text.strip():
        raise InputError(f"{where}: {name!r} is empty")
    return text


def _messages(where: str, name: str, value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InputError(
            f"{where}: {name!r} must be a string or a non-empty list of "
            f"{{'role', 'content'}} messages (got {type(value).__name__})"
        )
    out: list[dict[str, str]] = []
    for i, m in enumerate(value, start=1):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role not in ROLES:
            raise InputError(f"{where}: {name!r} message {i}: role {role!r}; expected {ROLES}")
        if not isinstance(content, str) or (role != "system" and not content.strip()):
            raise InputError(f"{where}: {name!r} message {i}: 'content' must be non-empty text")
        out.append({"role": role, "content": content})
    return out
