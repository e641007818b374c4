from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from icon2.core.errors import InputError
from icon2.core.io import atomic_path, read_provenance
from icon2.core.prompts import read_instructions
from icon2.core.tables import read_table, write_table


def test_read_jsonl_and_parquet(tmp_path: Path) -> None:
    j = tmp_path / "a.jsonl"
    j.write_text('{"instruction": " Hi there "}\n\n{"instruction": "Bye"}\n', encoding="utf-8")
    assert read_instructions(j) == ["Hi there", "Bye"]
    p = tmp_path / "a.parquet"
    pl.DataFrame({"instruction": ["x", "y"]}).write_parquet(p)
    assert read_instructions(p) == ["x", "y"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no instructions"),
        (b'{"prompt": "hi"}\n', r"line 1: no 'instruction' field"),
        (b'{"instruction": "ok"}\n{oops\n', "line 2: not valid JSON"),
        (b'{"instruction": "caf\xe9"}\n', "not UTF-8"),
        (b'{"instruction": ""}\n', "row 1: 'instruction' must be a non-empty string"),
    ],
)
def test_bad_instruction_files(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "f.jsonl"
    f.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_instructions(f)


def test_parquet_without_column_and_wrong_suffix(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    pl.DataFrame({"text": ["x"]}).write_parquet(p)
    with pytest.raises(InputError, match="no 'instruction' column"):
        read_instructions(p)
    c = tmp_path / "a.csv"
    c.write_text("instruction\nx\n")
    with pytest.raises(InputError, match=r"expected a \.jsonl or \.parquet"):
        read_instructions(c)


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_table_schema_and_provenance_roundtrip(tmp_path: Path) -> None:
    schema = {"id": pl.String, "score": pl.Float64}
    frame = pl.DataFrame({"id": ["a"], "score": [1.0]})
    path = tmp_path / "t.parquet"
    write_table(path, frame, schema, {"stage": "x", "inputs": {"f": "abc"}})
    assert read_table(path, schema).equals(frame)
    assert read_provenance(path)["stage"] == "x"
    with pytest.raises(InputError, match="missing column 'other'"):
        read_table(path, {"other": pl.String})
    with pytest.raises(InputError, match="column 'score' has type Float64, expected Int64"):
        write_table(tmp_path / "u.parquet", frame, {"score": pl.Int64}, {})
    assert not (tmp_path / "u.parquet").exists()
    assert json.loads(json.dumps(read_provenance(path)))


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    """A dead writer's temporaries (and the pid-less names of earlier versions) go at the
    next write of the same output; a live writer's, and other files, stay."""
    import os
    import subprocess
    import sys

    from icon2.core.io import atomic_dir, clean_stale

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale_dir = tmp_path / f".model.tmp-{dead_pid}-abcd1234"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x" * 1000)
    legacy_dir = tmp_path / ".model.k2j4_x9q"
    legacy_dir.mkdir()
    legacy_file = tmp_path / ".kept.parquet.ab12cd34.tmp"
    legacy_file.write_bytes(b"half")
    live = tmp_path / f".model.tmp-{os.getpid()}-zzzz0000"  # a writer still running
    live.mkdir()
    others = [tmp_path / ".model.notes", tmp_path / "model.bak", tmp_path / ".other.tmp-1-x"]
    for p in others:
        p.write_text("keep")

    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"w")
    assert not stale_dir.exists() and not legacy_dir.exists()
    assert live.exists() and all(p.exists() for p in others)
    assert legacy_file.exists()  # another output's temporary: cleaned when that one is written
    assert clean_stale(tmp_path / "kept.parquet") == [legacy_file]
    with atomic_path(tmp_path / "kept.parquet") as tmp:
        tmp.write_bytes(b"ok")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([live.name, "kept.parquet", "model", *(p.name for p in others)])
