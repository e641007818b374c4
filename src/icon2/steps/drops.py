"""A4's drop rule, one place for every pair maker: ICON²'s steered pairs (A4), the
selection grid (A6) and the baselines (A7) drop a pair that carries no signal."""

from __future__ import annotations

from icon2.engines.base import Generation

DROP_REASONS = ("empty", "truncated", "identical")  # checked in this order


def drop_reason(chosen: str, rejected: str, chosen_done: bool, rejected_done: bool) -> str | None:
    """One of ``DROP_REASONS`` for a pair of answers (``*_done``: the answer ended by itself,
    not at the token limit), or None to keep it."""
    a, b = chosen.strip(), rejected.strip()
    if not a or not b:
        return "empty"
    if not (chosen_done and rejected_done):
        return "truncated"
    return "identical" if a == b else None


def pair_drop_reason(chosen: Generation, rejected: Generation) -> str | None:
    """:func:`drop_reason` of two generations."""
    return drop_reason(
        chosen.text, rejected.text, chosen.finish_reason == "stop", rejected.finish_reason == "stop"
    )
