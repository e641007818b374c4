"""Atomic writers, content hashes and provenance metadata (no ML libraries imported here).

Every output goes to a temporary sibling first and is renamed into place, so a failed
stage never leaves a half-written file behind; the temporaries of a killed run are removed
by the next write of the same output (:func:`clean_stale`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from safetensors import safe_open

from icon2.core.errors import InputError, ModelError

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


def _tmp_prefix(path: Path) -> str:
    """Temporaries are ``.<name>.tmp-<pid>-XXXXXXXX``: the writer's pid tells a later run
    whether they are in use or left over by a killed run."""
    return f".{path.name}.tmp-{os.getpid()}-"


# Names of earlier versions (no pid): ``.<name>.XXXXXXXX`` and ``.<name>.XXXXXXXX.tmp``.
_LEGACY = re.compile(r"[a-z0-9_]{8}(\.tmp)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(path: Path) -> list[Path]:
    """Remove the temporaries that a killed run (kill -9, power loss) left next to ``path``:
    those whose writing process no longer exists. Returns what was removed."""
    removed: list[Path] = []
    head = f".{path.name}."
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.iterdir():
        rest = sibling.name.removeprefix(head)
        if rest == sibling.name:
            continue
        if rest.startswith("tmp-"):
            pid = rest.removeprefix("tmp-").split("-", 1)[0]
            stale = pid.isdigit() and not _alive(int(pid))
        else:
            stale = _LEGACY.fullmatch(rest) is not None
        if not stale:
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
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
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
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
        value: str | bytes | None = meta.get(PROVENANCE_KEY)
    else:
        value = (pq.read_metadata(path).metadata or {}).get(PROVENANCE_KEY.encode())
    if not value:
        return {}
    try:
        record = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: its {PROVENANCE_KEY!r} metadata is not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: its {PROVENANCE_KEY!r} metadata is not a JSON object")
    return record


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
