"""A3 filtering and split: keep instructions that align strongly with one criterion.

The scored table comes from :func:`icon2.steps.scoring.score_table`. Every ordering here ends in a
tie-break on ``id`` so that the kept set and the split never depend on input row order.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, get_args

import polars as pl

from icon2.core.errors import InputError

Rule = Literal["threshold", "top_k", "top_fraction"]
_NEEDED = ("id", "criterion", "consistency", "margin")


def _check_value(rule: str, value: float) -> None:
    if rule not in get_args(Rule):
        raise ValueError(f"filter.rule={rule!r} is not one of {list(get_args(Rule))}")
    if not math.isfinite(value):
        raise ValueError(f"filter.value={value} must be finite")
    if rule == "top_fraction" and not 0.0 < value <= 1.0:
        raise ValueError(f"filter.value={value} must be in (0, 1] for filter.rule=top_fraction")
    if rule == "top_k" and value < 1:
        raise ValueError(f"filter.value={value} must be >= 1 for filter.rule=top_k")


def apply_filter(
    scored: pl.DataFrame, *, rule: Rule, value: float, min_margin: float | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Keep the instructions with the highest consistency, then optionally a margin floor.

    Args:
        scored: a score table; needs ``id``, ``criterion``, ``consistency``, ``margin`` and
            the ``raw_<c>`` columns (which name the criteria to count).
        rule: ``threshold`` keeps consistency >= value; ``top_k`` the int(value) highest;
            ``top_fraction`` the ceil(value·n) highest (value in (0, 1]).
        value: the rule's parameter.
        min_margin: if set, then drop rows whose margin < min_margin.

    Returns:
        The kept rows (same columns), sorted by consistency descending then id, and counts
        ``scored``, ``after_<rule>``, ``after_margin`` (only with min_margin), ``kept`` and
        ``kept_<c>`` for every criterion.

    Raises:
        ValueError: unknown rule or value out of range.
        InputError: required columns missing, duplicate ids, or nothing is kept.
    """
    _check_value(rule, value)
    missing = [c for c in _NEEDED if c not in scored.columns]
    if missing:
        raise InputError(f"score table lacks column(s) {missing}; re-run the scoring stage")
    if scored["id"].n_unique() != scored.height:
        raise InputError("score table has duplicate ids; tie-breaks need unique ids")
    criteria = [c.removeprefix("raw_") for c in scored.columns if c.startswith("raw_")]
    n = scored.height
    ranked = scored.sort(["consistency", "id"], descending=[True, False])
    if rule == "threshold":
        kept = ranked.filter(pl.col("consistency") >= value)
    elif rule == "top_k":
        kept = ranked.head(int(value))
    else:
        # Round before ceil so float noise (0.1 * 30 = 3.0000000000000004) does not add a row.
        kept = ranked.head(max(1, math.ceil(round(value * n, 9))) if n else 0)
    counts = {"scored": n, f"after_{rule}": kept.height}
    if kept.height == 0:
        best = f"max consistency {ranked['consistency'][0]:.4g}" if n else "empty table"
        raise InputError(
            f"filter.rule={rule} with filter.value={value:g} keeps 0 of {n} instructions ({best})"
        )
    if min_margin is not None:
        before = kept
        kept = kept.filter(pl.col("margin") >= min_margin)
        counts["after_margin"] = kept.height
        if kept.height == 0:
            largest = before.select(pl.col("margin").max()).item()
            raise InputError(
                f"filter.min_margin={min_margin:g} removed all {before.height} instructions "
                f"left after {rule} (largest margin {largest:.4g})"
            )
    counts["kept"] = kept.height
    per = dict(kept.group_by("criterion").len().iter_rows())
    counts.update({f"kept_{c}": int(per.get(c, 0)) for c in criteria})
    return kept, counts


def split(kept: pl.DataFrame, *, validation_fraction: float, seed: int) -> pl.DataFrame:
    """Deterministic train/validation split by hashed id.

    Args:
        kept: rows with a unique String ``id`` column.
        validation_fraction: share of rows for validation, in [0, 1).
        seed: changes the hash order and so which rows go to validation.

    Returns:
        ``kept`` in its own row order with a String ``split`` column ("train" |
        "validation"). Rows ordered by sha256(f"{seed}:{id}") go to validation first;
        round(validation_fraction·n) of them, at least 1 when the fraction is > 0 and
        n >= 2, and never all n (train keeps at least one row).

    Raises:
        ValueError: fraction out of range or duplicate ids.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    ids: list[str] = kept["id"].cast(pl.String).to_list()
    if len(set(ids)) != len(ids):
        raise ValueError("split needs unique ids: duplicates would make the order ambiguous")
    n = len(ids)
    n_val = round(validation_fraction * n)
    if validation_fraction > 0 and n >= 2:
        # A fraction below 1 must leave a training row; a positive one must give validation.
        n_val = min(max(n_val, 1), n - 1)
    n_val = min(n_val, max(n - 1, 0))
    # Hashing the id (not the row index) makes membership independent of input order and
    # stable when other rows are added or removed.
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    validation = set(order[:n_val])
    labels = ["validation" if i in validation else "train" for i in ids]
    return kept.with_columns(pl.Series("split", labels, dtype=pl.String))
