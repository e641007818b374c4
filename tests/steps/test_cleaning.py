from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from icon2.core.errors import InputError
from icon2.core.io import text_id
from icon2.core.tables import INSTRUCTION_SCHEMA, RAW_SCHEMA, check_schema
from icon2.steps import cleaning
from icon2.steps.cleaning import DROP_REASONS, clean, distinct_n, length_stats, normalise


def raw(texts: list[str], finish: list[str] | None = None) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame(
        {
            "text": texts,
            "finish_reason": finish or ["stop"] * n,
            "token_count": list(range(10, 10 + n)),
            "seed": list(range(n)),
        },
        schema=RAW_SCHEMA,
    )


def expected_counts(n_raw: int, n_kept: int, **dropped: int) -> dict[str, int]:
    return {"raw": n_raw, "kept": n_kept, **{r: dropped.get(r, 0) for r in DROP_REASONS}}


class BagOfWords:
    """Deterministic fake embedder: one axis per distinct word, rows L2-normalised, so the
    cosine of two texts is |shared words| / sqrt(|words a| * |words b|) for sets of words."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        for t in texts:
            for w in t.split():
                self.vocab.setdefault(w, len(self.vocab))
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, self.vocab[w]] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_each_drop_reason_is_counted() -> None:
    frame = raw(
        [
            "  keep me please ",
            "   ",
            "cut off mid",
            "hi",
            "x" * 31,
            "Keep  me please!",
            "other one",
        ],
        ["stop", "stop", "length", "stop", "stop", "stop", "stop"],
    )
    out, counts = clean(frame, min_chars=3, max_chars=30)
    assert out["instruction"].to_list() == ["keep me please", "other one"]
    assert counts == expected_counts(
        7, 2, empty=1, truncated=1, too_short=1, too_long=1, duplicate=1
    )
    assert counts["raw"] == counts["kept"] + sum(counts[r] for r in DROP_REASONS)
    check_schema(out, INSTRUCTION_SCHEMA, "out")
    assert list(out.columns) == list(INSTRUCTION_SCHEMA)


def test_length_bounds_are_inclusive() -> None:
    out, counts = clean(raw(["ab", "abc", "abcde", "abcdef"]), min_chars=3, max_chars=5)
    assert out["instruction"].to_list() == ["abc", "abcde"]
    assert counts["too_short"] == 1 and counts["too_long"] == 1


def test_rule_order_first_rule_wins() -> None:
    frame = raw(
        ["  ", "Same text", "same text", "Same text", "SAME TEXT!", "tiny", "tiny"],
        ["length", "length", "stop", "stop", "length", "length", "stop"],
    )
    out, counts = clean(frame, min_chars=5, max_chars=100)
    # Row 0: empty beats truncated. Row 1: truncated, and being dropped it does not make
    # row 2 a duplicate. Row 3: duplicate of row 2. Row 4: a truncated duplicate counts
    # as truncated. Row 5: truncated beats too_short. Row 6: too_short.
    assert out["instruction"].to_list() == ["same text"]
    assert out["seed"].to_list() == [2]
    assert counts == expected_counts(7, 1, empty=1, truncated=3, duplicate=1, too_short=1)


def test_null_text_and_finish_reason() -> None:
    frame = pl.DataFrame(
        {"text": [None, "fine text", "no reason"], "finish_reason": ["stop", "stop", None]},
        schema={"text": pl.String, "finish_reason": pl.String},
    ).with_columns(token_count=pl.lit(1, pl.Int64), seed=pl.lit(0, pl.Int64))
    out, counts = clean(frame, min_chars=1, max_chars=100)
    assert out["instruction"].to_list() == ["fine text"]
    assert counts["empty"] == 1 and counts["truncated"] == 1


def test_first_occurrence_kept_and_order_preserved() -> None:
    frame = raw(["b first", "a second", "B FIRST?", "c third", "a   second"])
    out, counts = clean(frame, min_chars=1, max_chars=100)
    assert out["instruction"].to_list() == ["b first", "a second", "c third"]
    assert out["seed"].to_list() == [0, 1, 3]
    assert out["token_count"].to_list() == [10, 11, 13]
    assert counts["duplicate"] == 2


def test_ids_are_text_id_of_stripped_text() -> None:
    texts = ["\tHow do I sort a list?\n", "Explain recursion.  "]
    out, _ = clean(raw(texts), min_chars=1, max_chars=100)
    assert out["id"].to_list() == [text_id(t.strip()) for t in texts]
    again, _ = clean(raw(["x", *texts]), min_chars=5, max_chars=100)
    assert again["id"].to_list() == out["id"].to_list()


def test_empty_input() -> None:
    out, counts = clean(
        raw([]), min_chars=1, max_chars=10, near_dup_threshold=0.9, embed=BagOfWords()
    )
    assert out.height == 0
    check_schema(out, INSTRUCTION_SCHEMA, "out")
    assert counts == expected_counts(0, 0)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('  "What IS\n\tthe   capital of France?!"  ', "what is the capital of france"),
        ("«Straße»", "strasse"),
        ("“Hello,” she said.", "hello,” she said"),
        ("`ls -la`", "ls -la"),
        ("(e.g. 3.5 + 4)", "e.g. 3.5 + 4"),
        ("...", ""),
        ("Ünïcode\u00a0spaces\u2003here", "ünïcode spaces here"),
    ],
)
def test_normalise(text: str, key: str) -> None:
    assert normalise(text) == key


def test_near_duplicate_threshold_is_inclusive() -> None:
    texts = ["alpha beta gamma delta", "alpha beta gamma epsilon"]  # cosine 3/4
    _, at = clean(
        raw(texts), min_chars=1, max_chars=99, near_dup_threshold=0.75, embed=BagOfWords()
    )
    _, above = clean(
        raw(texts), min_chars=1, max_chars=99, near_dup_threshold=0.76, embed=BagOfWords()
    )
    assert at["near_duplicate"] == 1 and at["kept"] == 1
    assert above["near_duplicate"] == 0 and above["kept"] == 2


def test_near_duplicate_threshold_one_catches_identical_embeddings() -> None:
    # Different normalise() keys, identical bag of words.
    texts = ["red blue green", "green red blue", "red blue green yellow"]
    out, counts = clean(
        raw(texts), min_chars=1, max_chars=99, near_dup_threshold=1.0, embed=BagOfWords()
    )
    assert out["instruction"].to_list() == ["red blue green", "red blue green yellow"]
    assert counts["near_duplicate"] == 1


def test_near_duplicate_greedy_against_kept_rows_only() -> None:
    # cos(A,B) = cos(B,C) = 0.5, cos(A,C) = 0: B goes (near A); C stays because B, its only
    # close neighbour, was dropped.
    texts = ["aa bb", "bb cc", "cc dd"]
    out, counts = clean(
        raw(texts), min_chars=1, max_chars=99, near_dup_threshold=0.5, embed=BagOfWords()
    )
    assert out["instruction"].to_list() == ["aa bb", "cc dd"]
    assert counts == expected_counts(3, 2, near_duplicate=1)


def test_near_duplicate_runs_after_other_rules() -> None:
    embed = BagOfWords()
    frame = raw(
        ["one two three", "one two three four", "  one two three  ", "one two three five"],
        ["length", "stop", "stop", "stop"],
    )
    out, counts = clean(frame, min_chars=1, max_chars=99, near_dup_threshold=0.75, embed=embed)
    # Only survivors are embedded, stripped; the truncated row cannot knock anything out.
    assert embed.calls == [["one two three four", "one two three", "one two three five"]]
    assert out["instruction"].to_list() == ["one two three four"]
    assert counts == expected_counts(4, 1, truncated=1, near_duplicate=2)


def naive_greedy(emb: np.ndarray, threshold: float) -> list[int]:
    kept: list[int] = []
    for i in range(len(emb)):
        if all(float(emb[i] @ emb[k]) < threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 1024])
def test_near_duplicate_blocks_match_naive_greedy(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(cleaning, "BLOCK", block)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8))
    emb = centres[rng.integers(0, 5, size=40)] + 0.4 * rng.normal(size=(40, 8))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    texts = [f"text {i}" for i in range(40)]
    out, counts = clean(
        raw(texts), min_chars=1, max_chars=99, near_dup_threshold=0.8, embed=lambda _: emb
    )
    expected = naive_greedy(emb, 0.8)
    assert 5 <= len(expected) < 40
    assert out["seed"].to_list() == expected
    assert counts["near_duplicate"] == 40 - len(expected)


def test_embedder_not_called_without_threshold() -> None:
    embed = BagOfWords()
    clean(raw(["a b", "a c"]), min_chars=1, max_chars=9, embed=embed)
    assert embed.calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_chars": 0, "max_chars": 5}, "min_chars"),
        ({"min_chars": 5, "max_chars": 4}, "max_chars"),
        (
            {"min_chars": 1, "max_chars": 5, "near_dup_threshold": 0.0, "embed": BagOfWords()},
            "near_dup_threshold",
        ),
        (
            {"min_chars": 1, "max_chars": 5, "near_dup_threshold": 1.5, "embed": BagOfWords()},
            "near_dup_threshold",
        ),
        ({"min_chars": 1, "max_chars": 5, "near_dup_threshold": 0.9}, "embed"),
        (
            {
                "min_chars": 1,
                "max_chars": 5,
                "near_dup_threshold": 0.9,
                "embed": lambda t: np.ones((1, 4)),
            },
            "shape",
        ),
    ],
)
def test_value_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clean(raw(["abc", "abd"]), **kwargs)


def test_schema_errors() -> None:
    with pytest.raises(InputError, match="finish_reason"):
        clean(pl.DataFrame({"text": ["a"]}), min_chars=1, max_chars=5)
    bad = raw(["abc"]).with_columns(pl.col("seed").cast(pl.Int32))
    with pytest.raises(InputError, match="seed"):
        clean(bad, min_chars=1, max_chars=5)


def test_distinct_n() -> None:
    texts = ["The cat sat", "the cat ran", "dog"]
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 distinct of 4; "dog" has none.
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # unigrams: the cat sat the cat ran dog -> 5 distinct of 7.
    assert distinct_n(texts, 1) == pytest.approx(5 / 7)
    assert distinct_n(["one two"], 3) == 0.0
    assert distinct_n([]) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(texts, 0)


def test_length_stats() -> None:
    assert length_stats(["ab cd", "e"]) == {"mean_chars": 3.0, "mean_words": 1.5}
    assert length_stats([]) == {"mean_chars": 0.0, "mean_words": 0.0}


def _planted(n: int, d: int, copies: int, seed: int = 0) -> tuple[np.ndarray, set[int]]:
    """Unit rows; ``copies`` rows are noisy copies (cosine ≈ 0.98) of an earlier original."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    rows = rng.choice(np.arange(n // 2, n), copies, replace=False)
    for i in rows:
        emb[i] = emb[int(rng.integers(0, n // 2))] + 0.15 * rng.standard_normal(d)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, {int(i) for i in rows}


def test_approximate_pass_agrees_with_the_exact_one_on_planted_near_duplicates() -> None:
    emb, planted = _planted(6000, 64, 300)
    exact = cleaning._near_duplicates(emb, 0.9)
    approx = cleaning._near_duplicates_ann(emb, 0.9)
    assert set(np.flatnonzero(exact).tolist()) == planted  # the plant is what exact finds
    found = set(np.flatnonzero(approx).tolist())
    assert found <= planted  # everything it drops is a near-duplicate
    assert len(found) / len(planted) >= 0.98  # recall
    # A threshold above every planted pair's cosine drops nothing either way.
    assert not cleaning._near_duplicates_ann(emb, 0.999).any()


def test_approximate_pass_keeps_the_greedy_rule() -> None:
    # Rows 0 ~ 1 ~ 2 in a chain, 0 and 2 far apart: the exact rule drops 1 only (2's only
    # close neighbour was dropped); so does the approximate one, and row order decides.
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 32)).astype(np.float32)
    a = np.zeros(32, dtype=np.float32)
    a[0] = 1.0
    c = np.zeros(32, dtype=np.float32)
    c[1] = 1.0
    b = (a + c) / np.linalg.norm(a + c)  # cos(a, b) = cos(b, c) = 0.707, cos(a, c) = 0
    base[[10, 50, 120]] = [a, b, c]
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    exact = cleaning._near_duplicates(base, 0.7)
    assert np.flatnonzero(exact).tolist() == [50]
    assert np.array_equal(cleaning._near_duplicates_ann(base, 0.7), exact)


def test_clean_switches_to_the_approximate_pass_above_ann_above(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = ["aa bb", "bb cc", "cc dd", "ee ff"]
    used: list[str] = []
    for name in ("_near_duplicates", "_near_duplicates_ann"):
        original = getattr(cleaning, name)

        def spy(emb: np.ndarray, t: float, _f: Any = original, _n: str = name) -> np.ndarray:
            used.append(_n)
            return np.asarray(_f(emb, t))

        monkeypatch.setattr(cleaning, name, spy)
    kwargs: dict[str, Any] = {"min_chars": 1, "max_chars": 99, "near_dup_threshold": 0.5}
    small, _ = clean(raw(texts), embed=BagOfWords(), ann_above=4, **kwargs)
    large, counts = clean(raw(texts), embed=BagOfWords(), ann_above=3, **kwargs)
    assert used == ["_near_duplicates", "_near_duplicates_ann"]
    assert large.equals(small) and counts["near_duplicate"] == 1
