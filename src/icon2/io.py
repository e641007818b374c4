"""Atomic writers, content hashes, declared-schema tables and instruction-file readers.

Every output goes to a temporary sibling first and is renamed into place, so a failed
stage never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from icon2.errors import InputError

PROVENANCE_KEY = "icon2"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, ensure_ascii=False))


def text_id(text: str) -> str:
    """Stable id of a text: the first 16 hex digits of its SHA-256."""
    return sha256_text(text)[:16]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the output the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; swap it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            # Only ever replaces a pipeline output (DVC removes it before a rerun anyway).
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: Path, frame: pl.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)


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


def read_table(path: Path, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    frame = pl.read_parquet(path)
    check_schema(frame, schema, str(path))
    return frame


def read_provenance(path: Path) -> dict[str, Any]:
    """The provenance record of a Parquet or safetensors file written by icon2."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return dict(json.loads(meta[PROVENANCE_KEY])) if PROVENANCE_KEY in meta else {}
    raw = pq.read_metadata(path).metadata or {}
    value = raw.get(PROVENANCE_KEY.encode())
    return json.loads(value) if value else {}


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """safetensors, atomically. The metadata is one sorted-JSON entry under ``icon2``:
    safetensors stores metadata in a hash map whose key order changes from run to run, so
    several entries would make identical runs produce different bytes."""
    flat = {PROVENANCE_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=flat)


def read_instructions(path: Path, column: str = "instruction") -> list[str]:
    """Read a JSONL or Parquet file of instructions; every problem names the file and row."""
    if not path.is_file():
        raise InputError(f"{path}: instruction file not found")
    if path.suffix == ".parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several types for a corrupt file
            raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
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
