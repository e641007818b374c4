"""A2: Magpie-style self-synthesis — let the model write the user turn itself.

The prompt is the chat template cut right where a user's message would start (any system
turn the template inserts by default included); an aligned model continues it with a
plausible instruction and closes the turn with its end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.cost import Meter
from icon2.core.errors import InputError
from icon2.core.params import Params
from icon2.core.tables import RAW_SCHEMA
from icon2.engines import open_backend
from icon2.engines.base import Backend, Generation, Sampling
from icon2.engines.metered import MeteredBackend, engine_devices, stage_meter
from icon2.model.chat import pre_query_template
from icon2.model.embeddings import Embedder
from icon2.steps.cleaning import clean, distinct_n, length_stats
from icon2.steps.shards import Shard, ShardStore, plan_shards, run_shards, shard_sampling


def synthesize(
    backend: Backend,
    pre_query: str,
    count: int,
    sampling: Sampling,
    *,
    stop_at_newline: bool = False,
    shard_size: int | None = None,
    store: ShardStore | None = None,
    meter: Meter | None = None,
) -> pl.DataFrame | None:
    """Sample ``count`` user turns from ``pre_query``, ``shard_size`` at a time (None: all
    at once), keeping finished shards in ``store`` to resume from (:mod:`icon2.steps.shards`;
    ``meter`` is the one ``backend`` adds to).

    Returns a frame with ``RAW_SCHEMA`` columns: text, finish_reason ("stop" when the
    end-of-turn token was produced, "length" when ``max_new_tokens`` ran out), token_count,
    seed (the shard's). With ``stop_at_newline`` (Magpie's early stopping) a text is cut at
    its first newline and counts as stopped there. None on a process other than the main
    one (:func:`~icon2.steps.shards.run_shards`).
    """

    def work(shard: Shard) -> list[Generation]:
        return backend.generate(
            [pre_query] * shard.rows, shard_sampling(sampling, shard), desc="synthesize"
        )

    shards = plan_shards(count, shard_size or count)
    results = run_shards(shards, work, store=store, meter=meter, desc="synthesize")
    if results is None:
        return None
    gens, seeds = [], []
    for shard, part in zip(shards, results, strict=True):
        gens += part
        seeds += [shard_sampling(sampling, shard).seed] * shard.rows
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
            "seed": seeds,
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


@dataclass(frozen=True)
class Synthesized:
    """The ``synthesize`` stage's results."""

    kept: pl.DataFrame  # the cleaned instructions (``INSTRUCTION_SCHEMA``)
    metrics: dict[str, Any]  # raw, kept, truncated, distinct_2 and mean_words of the kept
    template: str | None  # the pre-query template sampled from (None: read from a file)
    meter: Meter  # response generation, shared by every method (A8)
    dropped: dict[str, int]  # the other cleaning rules' non-zero drop counts


# The cleaning counts in the stage's metrics (the rest are printed, and are rarely non-zero).
HEADLINE_COUNTS = ("raw", "kept", "truncated")


def make_instructions(
    p: Params,
    model_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    external: list[str] | None,
    *,
    embed: Embedder | None,
    seed: int,
    target: Path,
    store: ShardStore | None = None,
) -> Synthesized | None:
    """A2 with the ``synthesize`` section: ``external`` instructions when given, else
    ``synthesize.count`` user turns sampled (seeded with ``seed``) from the pre-query
    template, on the engine ``base.engine`` names, in shards of ``synthesize.shard_size``
    kept in ``store`` (a killed run resumes); then :func:`~icon2.steps.cleaning.clean` with
    ``embed`` for near-duplicates.

    Returns:
        The cleaned instructions and their counts; None on a process other than the main
        one (it only generated its shards).

    Raises:
        InputError: the cleaning rules dropped every sample (naming the counts, the
            rules' params and ``target``, the output left unwritten).
    """
    cfg = p.synthesize
    # Every method starts from these instructions: shared work, outside the ratio (A8).
    meter = stage_meter(
        "synthesize", "shared", "response generation", p.base.device, engine_devices(p)
    )
    template = None
    raw: pl.DataFrame | None
    if external is not None:
        raw = from_file(external)
    else:
        template = cfg.pre_query_template or pre_query_template(tokenizer)
        sampling = Sampling(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=seed,
        )
        with open_backend(p, model_dir, model, tokenizer, batch_size=cfg.batch_size) as backend:
            raw = synthesize(
                MeteredBackend(backend, meter, tokenizer),
                template,
                cfg.count,
                sampling,
                stop_at_newline=cfg.stop_at_newline,
                shard_size=cfg.shard_size,
                store=store,
                meter=meter,
            )
        if raw is None:
            return None
    kept, counts = clean(
        raw,
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        near_dup_threshold=cfg.near_dup_threshold,
        embed=embed,
        ann_above=cfg.near_dup_exact_max,
    )
    if kept.height == 0:
        dropped = {k: v for k, v in counts.items() if k not in ("raw", "kept") and v}
        raise InputError(
            f"synthesize: all {counts['raw']} samples were dropped by the cleaning rules "
            f"{dropped} (synthesize.min_chars={cfg.min_chars}, max_chars={cfg.max_chars}, "
            f"max_new_tokens={cfg.max_new_tokens}); nothing written to {target}"
        )
    texts = kept["instruction"].to_list()
    metrics = {
        **{k: counts[k] for k in HEADLINE_COUNTS},
        "distinct_2": distinct_n(texts, 2),
        "mean_words": length_stats(texts)["mean_words"],
    }
    dropped = {k: v for k, v in counts.items() if k not in HEADLINE_COUNTS and v}
    return Synthesized(kept, metrics, template, meter, dropped)
