"""Stage `leakage` (ICON² appendix D): evaluation prompts that overlap the training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2.core.io import write_csv, write_json
from icon2.core.prompts import read_prompts
from icon2.core.tables import read_pairs
from icon2.evaluate.leakage import (
    embedding_leakage,
    ngram_leakage,
    offending_prompts,
    pair_texts,
    summarize,
)
from icon2.stage import open_stage, user_errors


@user_errors
def main(
    prompts: Annotated[
        Path, typer.Option(help="Evaluation prompts (JSONL/Parquet, `instruction`).")
    ],
    training: Annotated[Path, typer.Option(help="Training pairs; their train split is audited.")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    offending: Annotated[Path, typer.Option(help="CSV listing the flagged prompts.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.leakage
    texts, _ = read_prompts(prompts, split="validation")
    pairs = read_pairs(training)
    train_texts = pair_texts(pairs.filter(pl.col("split") == "train"))
    grams = ngram_leakage(texts, train_texts, n=cfg.n)
    emb = None
    if cfg.embedding_threshold is not None:
        from icon2.model.embeddings import minilm_embedder

        embed = minilm_embedder()
        emb = embedding_leakage(embed(texts), embed(train_texts), threshold=cfg.embedding_threshold)
    summary = summarize(grams, emb)
    write_csv(offending, offending_prompts(grams, emb, train_texts))
    write_json(
        out,
        {
            **summary,
            "n": cfg.n,
            "embedding_threshold": cfg.embedding_threshold,
            "training_texts": len(train_texts),
        },
    )
    typer.echo(
        f"leakage: {summary['ngram_leaked']}/{summary['prompts']} prompts share a {cfg.n}-gram"
        f" with {len(train_texts)} training texts"
        + (
            ""
            if emb is None
            else f"; {summary['embedding_flagged']} have cosine >= {cfg.embedding_threshold}"
        )
    )


if __name__ == "__main__":
    typer.run(main)
