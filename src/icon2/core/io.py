"""Atomic writers, content hashes and provenance metadata (no ML libraries imported here).

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from safetensors import safe_open

from icon2.core.errors import ModelError

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


def read_provenance(path: Path) -> dict[str, Any]:
    """The provenance record of a Parquet or safetensors file written by icon2."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        return dict(json.loads(meta[PROVENANCE_KEY])) if PROVENANCE_KEY in meta else {}
    raw = pq.read_metadata(path).metadata or {}
    value = raw.get(PROVENANCE_KEY.encode())
    return json.loads(value) if value else {}


def weights_hash(model_dir: Path) -> str:
    """SHA-256 over the weight files of a saved model, in name order."""
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise ModelError(f"{model_dir}: no weight files (*.safetensors or *.bin)")
    return (
        sha256_file(files[0]) if len(files) == 1 else "+".join(sha256_file(f)[:16] for f in files)
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
