"""A2: Magpie-style self-synthesis — let the model write the user turn itself.

The prompt is the chat template cut right where a user's message would start (any system
turn the template inserts by default included); an aligned model continues it with a
plausible instruction and closes the turn with its end-of-turn token.
"""

from __future__ import annotations

import polars as pl

from icon2.core.tables import RAW_SCHEMA
from icon2.engines.base import Backend, Sampling


def synthesize(
    backend: Backend,
    pre_query: str,
    count: int,
    sampling: Sampling,
    *,
    stop_at_newline: bool = False,
) -> pl.DataFrame:
    """Sample ``count`` user turns from ``pre_query``.

    Returns a frame with ``RAW_SCHEMA`` columns: text, finish_reason ("stop" when the
    end-of-turn token was produced, "length" when ``max_new_tokens`` ran out), token_count,
    seed. With ``stop_at_newline`` (Magpie's early stopping) a text is cut at its first
    newline and counts as stopped there.
    """
    gens = backend.generate([pre_query] * count, sampling, desc="synthesize")
    texts, reasons = [], []
    for g in gens:
        text, reason = g.text, g.finish_reason
        if stop_at_newline and "\n" in text.strip():
            text, reason = text.strip().split("\n", 1)[0], "stop"
        texts.append(text)
        reasons.append(reason)
    return pl.DataFrame(
        {
            "text": texts,
            "finish_reason": reasons,
            "token_count": [g.token_count for g in gens],
            "seed": [sampling.seed] * count,
        },
        schema=RAW_SCHEMA,
    )


def from_file(instructions: list[str]) -> pl.DataFrame:
    """An external instruction list in the same raw shape (every row counts as stopped)."""
    return pl.DataFrame(
        {
            "text": instructions,
            "finish_reason": ["stop"] * len(instructions),
            "token_count": [len(t.split()) for t in instructions],
            "seed": [0] * len(instructions),
        },
        schema=RAW_SCHEMA,
    )
