from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from icon2.core.errors import InputError
from icon2.core.io import atomic_path, read_provenance
from icon2.core.tables import read_instructions, read_table, write_table


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
