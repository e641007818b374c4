"""Leakage audit (ICON² appendix D): do evaluation prompts appear in the training data?

Two checks, both pure functions:

* **13-gram overlap.** A prompt is *leaked* when it shares at least one word 13-gram with
  any training text (the instructions and the chosen/rejected responses). Texts are
  normalised before they are cut into words: Unicode NFKC, lower case, every run of
  characters that is neither a letter nor a digit becomes one space, then split on
  whitespace. So "Hello, World!" and "hello world" are the same two words; punctuation,
  case and spacing never hide an overlap, and never create one. A prompt with fewer than
  ``n`` words cannot share an ``n``-gram and counts as not leaked (``too_short`` says so).
* **Embedding similarity.** For each prompt, the highest cosine similarity to any training
  text, from embeddings computed elsewhere (e.g. ``minilm_embedder``); a prompt at or above
  a threshold is flagged. This catches paraphrases the exact n-gram test misses.

The n-gram index is built over the *prompts* (small: hundreds of prompts) and the training
texts are streamed past it, so memory does not grow with the training set.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

NGRAM = 13  # appendix D's window
_NON_WORD = re.compile(r"[^\w]|_", flags=re.UNICODE)

NGRAM_SCHEMA: dict[str, pl.DataType] = {
    "prompt_index": pl.Int64(),
    "prompt": pl.String(),
    "words": pl.Int64(),
    "shared_ngrams": pl.Int64(),  # distinct n-grams of the prompt found in training texts
    "leaked": pl.Boolean(),
    "too_short": pl.Boolean(),
    "train_index": pl.Int64(),  # the first training text sharing one; null if none
    "example_ngram": pl.String(),  # one shared n-gram (normalised words); null if none
}
EMBEDDING_SCHEMA: dict[str, pl.DataType] = {
    "prompt_index": pl.Int64(),
    "max_cosine": pl.Float64(),
    "train_index": pl.Int64(),  # the most similar training text
    "flagged": pl.Boolean(),
}


def normalise_words(text: str) -> list[str]:
    """NFKC, lower case, non-alphanumerics → spaces, split: the words n-grams are made of."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", folded).split()


def ngrams(words: Sequence[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    """Distinct contiguous word n-grams (empty when there are fewer than n words)."""
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_leakage(
    prompts: Sequence[str], training: Iterable[str], *, n: int = NGRAM
) -> pl.DataFrame:
    """Which prompts share at least one word n-gram with any training text.

    Args:
        prompts: the evaluation prompts.
        training: training texts (instructions and responses); read once, in order.
        n: n-gram length in normalised words (appendix D: 13).

    Returns:
        One row per prompt with ``NGRAM_SCHEMA``: prompt_index, prompt, words (normalised
        word count), shared_ngrams, leaked (shared_ngrams ≥ 1), too_short (words < n),
        train_index (first training text that shares an n-gram), example_ngram.

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = [normalise_words(p) for p in prompts]
    grams = [ngrams(w, n) for w in words]
    owners: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(grams):
        for gram in g:
            owners.setdefault(gram, []).append(i)
    found: dict[tuple[str, ...], int] = {}  # n-gram → first training text holding it
    if owners:
        for t, text in enumerate(training):
            for gram in ngrams(normalise_words(text), n):
                if gram in owners and gram not in found:
                    found[gram] = t
    rows: list[dict[str, Any]] = []
    for i, (prompt, w, g) in enumerate(zip(prompts, words, grams, strict=True)):
        shared = sorted(g & found.keys(), key=lambda x: (found[x], x))
        rows.append(
            {
                "prompt_index": i,
                "prompt": prompt,
                "words": len(w),
                "shared_ngrams": len(shared),
                "leaked": bool(shared),
                "too_short": len(w) < n,
                "train_index": found[shared[0]] if shared else None,
                "example_ngram": " ".join(shared[0]) if shared else None,
            }
        )
    return pl.DataFrame(rows, schema=NGRAM_SCHEMA)


def embedding_leakage(
    prompt_embeddings: np.ndarray,
    train_embeddings: np.ndarray,
    *,
    threshold: float = 0.9,
    chunk: int = 4096,
) -> pl.DataFrame:
    """Nearest training text of each prompt by cosine similarity.

    Rows are L2-normalised here (embedders that already do so are unaffected); a zero row
    has similarity 0 to everything.

    Args:
        prompt_embeddings: float [p, dim].
        train_embeddings: float [t, dim], t ≥ 1.
        threshold: a prompt with max cosine ≥ threshold is flagged.
        chunk: training rows per matrix product (bounds memory at p × chunk floats).

    Returns:
        One row per prompt with ``EMBEDDING_SCHEMA``; ties go to the lowest train_index.

    Raises:
        ValueError: not 2-D, different widths, no training rows, or threshold outside [-1, 1].
    """
    a = np.asarray(prompt_embeddings, dtype=np.float64)
    b = np.asarray(train_embeddings, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [p, dim] and [t, dim] embeddings, got {a.shape} and {b.shape}")
    if b.shape[0] == 0:
        raise ValueError("no training embeddings to compare with")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    a = _unit_rows(a)
    best = np.full(a.shape[0], -np.inf)
    where = np.zeros(a.shape[0], dtype=np.int64)
    for start in range(0, b.shape[0], chunk):
        sims = a @ _unit_rows(b[start : start + chunk]).T
        arg = sims.argmax(axis=1)
        top = sims[np.arange(a.shape[0]), arg]
        better = top > best  # strict: an earlier chunk keeps a tie
        best[better], where[better] = top[better], arg[better] + start
    return pl.DataFrame(
        {
            "prompt_index": np.arange(a.shape[0], dtype=np.int64),
            "max_cosine": best,
            "train_index": where,
            "flagged": best >= threshold,
        },
        schema=EMBEDDING_SCHEMA,
    )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.where(norms > 0, norms, 1.0)
    return out


def pair_texts(pairs: pl.DataFrame) -> list[str]:
    """Training texts of a preference table: every user turn of ``prompt`` and every
    message of ``chosen`` and ``rejected`` (chat-message lists), in row order."""
    out: list[str] = []
    for row in pairs.select("prompt", "chosen", "rejected").iter_rows(named=True):
        out += [m["content"] for m in row["prompt"] if m["role"] == "user"]
        out += [m["content"] for m in row["chosen"]] + [m["content"] for m in row["rejected"]]
    return out


def summarize(ngram: pl.DataFrame, embedding: pl.DataFrame | None = None) -> dict[str, Any]:
    """Headline numbers: prompts, leaked count and share, too-short count, and (with
    embeddings) flagged count/share and the mean and max of the nearest-neighbour cosine."""
    n = ngram.height
    leaked = int(ngram["leaked"].sum())
    out: dict[str, Any] = {
        "prompts": n,
        "ngram_leaked": leaked,
        "ngram_leaked_share": leaked / n if n else 0.0,
        "too_short": int(ngram["too_short"].sum()),
    }
    if embedding is not None:
        flagged = int(embedding["flagged"].sum())
        cos = embedding["max_cosine"].to_numpy()
        out.update(
            embedding_flagged=flagged,
            embedding_flagged_share=flagged / n if n else 0.0,
            embedding_max_cosine_mean=float(cos.mean()) if cos.size else 0.0,
            embedding_max_cosine_max=float(cos.max()) if cos.size else 0.0,
        )
    return out


def offending_prompts(
    ngram: pl.DataFrame, embedding: pl.DataFrame | None, train_texts: Sequence[str]
) -> pl.DataFrame:
    """The flagged prompts, for a person to read.

    Args:
        ngram: :func:`ngram_leakage`'s table, one row per prompt in prompt order.
        embedding: :func:`embedding_leakage`'s table for the same prompts, or None.
        train_texts: the training texts ``embedding``'s ``train_index`` points into.

    Returns:
        The rows of ``ngram`` (``prompt_index`` renumbered 0..p−1) that leaked an n-gram
        or, with embeddings, were flagged; with embeddings also max_cosine,
        embedding_flagged and nearest_training_text.
    """
    table = ngram.drop("prompt_index").with_row_index("prompt_index")
    if embedding is None:
        return table.filter(pl.col("leaked"))
    table = table.with_columns(
        embedding["max_cosine"].alias("max_cosine"),
        embedding["flagged"].alias("embedding_flagged"),
        pl.Series("nearest_training_text", [train_texts[i] for i in embedding["train_index"]]),
    )
    return table.filter(pl.col("leaked") | pl.col("embedding_flagged"))
