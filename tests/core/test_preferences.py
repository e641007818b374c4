"""Reading preference files in TRL's format (icon2.core.preferences), and the shipped one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from icon2.core.errors import InputError
from icon2.core.preferences import read_preference_file
from tests.conftest import REPO

SHIPPED = REPO / "data/benchmarks/hh_rlhf_300.jsonl"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


GOOD: dict[str, Any] = {
    "prompt": [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "How are you?")],
    "chosen": [msg("assistant", "Well, thanks.")],
    "rejected": [msg("assistant", "Go away.")],
}


def write_jsonl(path: Path, *rows: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_conversational_and_standard_rows(tmp_path: Path) -> None:
    plain = {"prompt": "Hi?", "chosen": "Hello.", "rejected": "No.", "id": "p1"}
    system = {**GOOD, "prompt": [msg("system", "Be kind."), *GOOD["prompt"]]}
    path = write_jsonl(tmp_path / "p.jsonl", GOOD, "", plain, system)
    a, b, c = read_preference_file(path)
    assert a.prompt == GOOD["prompt"] and (a.chosen, a.rejected) == ("Well, thanks.", "Go away.")
    assert b.prompt == [msg("user", "Hi?")] and b.id == "p1"
    assert c.prompt[0] == msg("system", "Be kind.")
    assert len(a.id) == 16 and a.id != c.id  # a stable hash when the row has no id
    assert read_preference_file(path, limit=2) == [a, b]
    # The same rows as Parquet (list-of-struct columns, as the pipeline writes them).
    frame = pl.DataFrame([GOOD, {**GOOD, "chosen": [msg("assistant", "Fine.")]}])
    frame.write_parquet(tmp_path / "p.parquet")
    pairs = read_preference_file(tmp_path / "p.parquet")
    assert [p.chosen for p in pairs] == ["Well, thanks.", "Fine."] and pairs[0].id == a.id


def _bad(**change: Any) -> dict[str, Any]:
    row = {**GOOD, **change}
    return {k: v for k, v in row.items() if v is not None}


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        (_bad(rejected=[msg("assistant", "Well, thanks.")]), "identical"),
        (_bad(rejected="  Well, thanks. "), "identical"),
        (_bad(prompt=[{"content": "Hi"}]), "'prompt' message 1: role None"),
        (_bad(prompt=[msg("user", "Hi"), msg("assistant", "Hello")]), "last message must be"),
        (_bad(prompt=[msg("assistant", "Hi"), msg("user", "Hm")]), "turn 1 is from 'assistant'"),
        (_bad(prompt=[msg("user", "a"), msg("user", "b")]), "turn 2 is from 'user'"),
        (_bad(prompt=[msg("user", "a"), msg("system", "b"), msg("user", "c")]), "system message"),
        (_bad(prompt=[msg("user", "")]), "'content' must be non-empty"),
        (_bad(prompt=[]), "non-empty list"),
        (_bad(prompt=" "), "'prompt' is empty"),
        (_bad(chosen=[msg("user", "Well")]), "'chosen': expected one assistant message"),
        (_bad(chosen=[msg("assistant", "a"), msg("assistant", "b")]), "one assistant message"),
        (_bad(rejected=""), "'rejected' is empty"),
        (_bad(rejected=None), "missing field(s) ['rejected']"),
        (_bad(chosen=42), "must be a string or"),
        (_bad(id=3), "'id' must be"),
        ("[1, 2]", "expected a JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_a_malformed_row_is_named(tmp_path: Path, row: Any, expect: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", GOOD, "", row)  # row 3 (line 3)
    with pytest.raises(InputError) as info:
        read_preference_file(path)
    assert str(info.value).startswith(f"{path}: row 3: ")
    assert expect in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_preference_file(tmp_path / "none.jsonl")
    with pytest.raises(InputError, match="holds no pairs"):
        read_preference_file(write_jsonl(tmp_path / "empty.jsonl", ""))
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(InputError, match=r"\.jsonl or \.parquet"):
        read_preference_file(tmp_path / "p.csv")
    (tmp_path / "p.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_preference_file(tmp_path / "p.parquet")
    pl.DataFrame({"prompt": ["a"], "chosen": ["b"], "rejected": ["b"]}).write_parquet(
        tmp_path / "same.parquet"
    )
    with pytest.raises(InputError, match=r"same\.parquet: row 1: chosen and rejected"):
        read_preference_file(tmp_path / "same.parquet")


def test_the_shipped_benchmark_reads_and_matches_its_readme() -> None:
    pairs = read_preference_file(SHIPPED)
    assert len(pairs) == 300 and len({p.id for p in pairs}) == 300
    assert all(p.id.startswith("harmless-base/test.jsonl.gz:") for p in pairs)
    assert any(len(p.prompt) > 1 for p in pairs)  # multi-turn conversations are kept
    readme = (SHIPPED.parent / "README.md").read_text()
    for fact in ("anthropics/hh-rlhf", "MIT", "benchmarks/make_hh_rlhf.py", "300"):
        assert fact in readme
