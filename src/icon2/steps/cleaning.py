"""Clean sampled instructions (stage A2) and summarise their diversity.

``clean`` applies drop rules in a fixed order and counts each row under the first rule
that drops it, so the counts add up: ``raw == kept + sum(drop counts)``.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import polars as pl

from icon2.core.io import text_id
from icon2.core.tables import RAW_SCHEMA, check_schema
from icon2.model.embeddings import Embedder

DROP_REASONS = ("empty", "truncated", "too_short", "too_long", "duplicate", "near_duplicate")
# Rows compared at once in the near-duplicate pass: blocks of BLOCK x BLOCK similarities
# (4 MiB of float32) keep memory flat however many rows there are.
BLOCK = 1024
# Above this many rows the near-duplicate pass is approximate (FAISS IVF range search,
# :func:`_near_duplicates_ann`): the exact pass's n² similarities grow to hours at 1M rows.
ANN_ABOVE = 50_000
# Lists probed per query by the approximate pass (of about 4·√n lists).
ANN_NPROBE = 16
# float32 rounding puts the self-similarity of a unit vector anywhere in 1 ± 1e-7;
# without slack a threshold of 1.0 would miss identical embeddings.
SIM_EPS = 1e-6


def _is_edge(char: str) -> bool:
    # Unicode punctuation (P*) covers ASCII . , ! ? " ' ( ) * and curly quotes «»“”‘’;
    # the backtick is a symbol (Sk) in Unicode but used as a quote in Markdown.
    return char.isspace() or char == "`" or unicodedata.category(char).startswith("P")


def normalise(text: str) -> str:
    """Key for exact-duplicate detection.

    Exactly: (1) ``str.casefold()``; (2) every run of Unicode whitespace becomes one
    space; (3) leading and trailing characters are removed while they are whitespace,
    Unicode punctuation (categories ``P*``: ``.,;:!?'"()[]{}*-_/…`` and typographic
    quotes) or a backtick. Inner punctuation, digits, symbols and accents are kept.

    >>> normalise('  "What IS\\n\\tthe   capital of France?!"  ')
    'what is the capital of france'
    """
    collapsed = " ".join(text.casefold().split())
    start, end = 0, len(collapsed)
    while start < end and _is_edge(collapsed[start]):
        start += 1
    while end > start and _is_edge(collapsed[end - 1]):
        end -= 1
    return collapsed[start:end]


def _near_duplicates(emb: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy in row order: row i is dropped when its cosine similarity with some earlier
    *kept* row is >= threshold. Returns a boolean mask of dropped rows."""
    n = emb.shape[0]
    dropped = np.zeros(n, dtype=bool)
    kept = np.empty_like(emb)  # kept rows, compacted, in order
    n_kept = 0
    limit = np.float32(threshold - SIM_EPS)
    for start in range(0, n, BLOCK):
        block = emb[start : start + BLOCK]
        # Already-kept rows from earlier blocks, in bounded chunks.
        hit = np.zeros(block.shape[0], dtype=bool)
        for k in range(0, n_kept, BLOCK):
            # Stop at n_kept: the rest of `kept` is uninitialised memory.
            hit |= (block @ kept[k : min(k + BLOCK, n_kept)].T >= limit).any(axis=1)
        # Within the block only a kept row may knock out a later one, so walk it in order.
        within = block @ block.T >= limit
        for j in range(block.shape[0]):
            if hit[j]:
                dropped[start + j] = True
                continue
            kept[n_kept] = block[j]
            n_kept += 1
            hit[j + 1 :] |= within[j, j + 1 :]
    return dropped


def _near_duplicates_ann(emb: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`_near_duplicates`' greedy rule on the candidate pairs an inverted-file index
    finds (FAISS ``IndexIVFFlat``, inner product, ~4·√n k-means lists, ``ANN_NPROBE``
    probed, range search at the threshold): every pair it returns has an exact cosine at
    or above the threshold, but a pair whose rows fall in lists the query does not probe is
    missed, so a few near-duplicates may be kept (recall measured in
    ``benchmarks/scale.py``; tested on planted near-duplicates)."""
    import faiss  # only for large inputs

    n, d = emb.shape
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 40))  # k-means wants >= 39 rows per list
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # k-means on 40 rows per list, 10 rounds: the lists only route queries (every candidate
    # is then compared exactly), so a rough clustering costs recall little and time less.
    index.cp.niter = 10
    rng = np.random.default_rng(0)
    sample = emb[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))]
    index.train(sample)
    index.add(emb)
    index.nprobe = min(ANN_NPROBE, nlist)
    limit = float(threshold - SIM_EPS)
    later: list[np.ndarray] = []
    earlier: list[np.ndarray] = []
    for start in range(0, n, 1 << 16):  # bounded result buffers
        lims, _, ids = index.range_search(emb[start : start + (1 << 16)], limit)
        bounds = np.asarray(lims, dtype=np.int64)
        counts = bounds[1:] - bounds[:-1]
        rows = start + np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        keep = ids < rows  # each pair once, as (later row, earlier row)
        later.append(rows[keep])
        earlier.append(ids[keep])
    i = np.concatenate(later) if later else np.zeros(0, dtype=np.int64)
    j = np.concatenate(earlier) if earlier else np.zeros(0, dtype=np.int64)
    order = np.lexsort((j, i))
    dropped = np.zeros(n, dtype=bool)
    # Greedy in row order over the candidate pairs: j < i is decided before i.
    for row, partner in zip(i[order].tolist(), j[order].tolist(), strict=True):
        if not dropped[row] and not dropped[partner]:
            dropped[row] = True
    return dropped


def clean(
    raw: pl.DataFrame,
    *,
    min_chars: int,
    max_chars: int,
    near_dup_threshold: float | None = None,
    embed: Embedder | None = None,
    ann_above: int = ANN_ABOVE,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Strip sampled texts and drop unusable ones.

    Rules, applied in this order to rows not yet dropped (a row counts under the first
    rule that drops it): ``empty`` (nothing left after stripping whitespace),
    ``truncated`` (``finish_reason`` is not ``"stop"``), ``too_short`` (fewer than
    ``min_chars`` characters), ``too_long`` (more than ``max_chars``), ``duplicate`` (same
    ``normalise()`` key as an earlier kept row), ``near_duplicate`` (only with
    ``near_dup_threshold``: cosine similarity >= threshold, less 1e-6 of float32
    slack, with an earlier kept row; greedy in row order).
    The first occurrence of a (near-)duplicate is the one kept.

    Args:
        raw: columns ``text`` (str), ``finish_reason`` (str: ``"stop"`` when the
            end-of-turn token was generated, ``"length"`` when the token budget ran out),
            ``token_count`` (int), ``seed`` (int); extra columns are ignored.
        min_chars: shortest kept instruction, in characters (Unicode code points).
        max_chars: longest kept instruction, in characters.
        near_dup_threshold: cosine-similarity threshold in (0, 1]; None skips the rule.
        embed: embeds the surviving texts; required with ``near_dup_threshold``.
        ann_above: with more surviving rows than this, near-duplicates are found by an
            approximate nearest-neighbour index (FAISS IVF) instead of all pairs: the same
            rule on the pairs it finds, which may miss a few (see ``_near_duplicates_ann``).

    Returns:
        The kept rows in their original order with columns ``id`` (str:
        ``text_id(instruction)``), ``instruction`` (str: the stripped text),
        ``token_count``, ``finish_reason``, ``seed``; and counts with ``raw``, ``kept``
        and one key per ``DROP_REASONS`` entry.

    Raises:
        ValueError: an argument is out of range, or ``embed`` is missing or misbehaves.
        InputError: ``raw`` lacks a column of ``RAW_SCHEMA`` or has a wrong type.
    """
    if min_chars < 1:
        raise ValueError(f"min_chars must be >= 1, got {min_chars}")
    if max_chars < min_chars:
        raise ValueError(f"max_chars must be >= min_chars ({min_chars}), got {max_chars}")
    if near_dup_threshold is not None:
        if not 0 < near_dup_threshold <= 1:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {near_dup_threshold}")
        if embed is None:
            raise ValueError("near_dup_threshold is set but no embed function was given")
    check_schema(raw, RAW_SCHEMA, "raw instructions")

    text = pl.col("instruction")
    n_chars = text.str.len_chars()
    frame = raw.select(
        pl.col("text").fill_null("").str.strip_chars().alias("instruction"),
        *(pl.col(c) for c in ("token_count", "finish_reason", "seed")),
    ).with_columns(
        # when/then stops at the first matching rule, which gives the documented order.
        pl.when(text == "")
        .then(pl.lit("empty"))
        .when(pl.col("finish_reason").fill_null("") != "stop")
        .then(pl.lit("truncated"))
        .when(n_chars < min_chars)
        .then(pl.lit("too_short"))
        .when(n_chars > max_chars)
        .then(pl.lit("too_long"))
        .alias("reason")
    )
    # Keys only for surviving rows: a dropped row must not make a later one a duplicate.
    key = pl.when(pl.col("reason").is_null()).then(
        text.map_elements(normalise, return_dtype=pl.String)
    )
    frame = frame.with_columns(
        pl.when(pl.col("reason").is_null() & ~key.is_first_distinct())
        .then(pl.lit("duplicate"))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )

    if near_dup_threshold is not None and embed is not None:
        alive = frame.with_row_index("row").filter(pl.col("reason").is_null())
        if alive.height:
            emb = np.asarray(embed(alive["instruction"].to_list()), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != alive.height:
                raise ValueError(f"embed returned shape {emb.shape} for {alive.height} texts")
            # Re-normalise so the dot product is a cosine even for a sloppy embedder.
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            unit = (emb / np.where(norms > 0, norms, 1)).astype(np.float32)
            hit = np.zeros(frame.height, dtype=bool)
            rule = _near_duplicates_ann if alive.height > ann_above else _near_duplicates
            hit[alive["row"].to_numpy()[rule(unit, near_dup_threshold)]] = True
            frame = frame.with_columns(
                pl.when(pl.Series(hit))
                .then(pl.lit("near_duplicate"))
                .otherwise(pl.col("reason"))
                .alias("reason")
            )

    found = dict(frame["reason"].drop_nulls().value_counts().iter_rows())
    kept = frame.filter(pl.col("reason").is_null()).select(
        text.map_elements(text_id, return_dtype=pl.String).alias("id"),
        text,
        *(pl.col(c) for c in ("token_count", "finish_reason", "seed")),
    )
    counts = {"raw": raw.height, "kept": kept.height}
    counts.update({reason: int(found.get(reason, 0)) for reason in DROP_REASONS})
    return kept, counts


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n: unique n-grams / all n-grams over casefolded whitespace tokens.

    N-grams never span two texts. Returns 0.0 when no text has ``n`` tokens.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for t in texts:
        tokens = t.casefold().split()
        grams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def length_stats(texts: list[str]) -> dict[str, float]:
    """Mean length in characters and in whitespace-separated words (0.0 for no texts)."""
    if not texts:
        return {"mean_chars": 0.0, "mean_words": 0.0}
    return {
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "mean_words": float(np.mean([len(t.split()) for t in texts])),
    }
