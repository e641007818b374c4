"""Stage `score` (METHOD A3): consistency of every instruction with every direction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2 import direction_file
from icon2.chat import pre_query_template, render_prompt
from icon2.cleaning import INSTRUCTION_SCHEMA
from icon2.errors import InputError
from icon2.hidden import last_token_states
from icon2.io import read_table, write_csv, write_table
from icon2.models import load_local
from icon2.params import load_params
from icon2.scoring import consistency, score_schema, score_table
from icon2.stage import provenance, seed_everything, user_errors


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    instructions: Annotated[Path, typer.Option(help="instructions.parquet.")],
    out: Annotated[Path, typer.Option(help="scores.parquet to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of scores for the histogram plot.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.score
    seed_everything(p.base.seed)
    model, tokenizer, card = load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
    dfile = direction_file.load(directions)
    direction_file.check_same_model(dfile, card, directions)
    layers = cfg.layers or dfile.layers
    missing = [layer for layer in layers if layer not in dfile.layers]
    if missing:
        raise InputError(
            f"score.layers: layer(s) {missing} are not in {directions} "
            f"(it has layers {dfile.layers[0]}..{dfile.layers[-1]})"
        )
    table = read_table(instructions, INSTRUCTION_SCHEMA)
    texts = [
        render_prompt(tokenizer, t, None, dfile.meta["read_position"])
        for t in table["instruction"].to_list()
    ]
    states = last_token_states(
        model,
        tokenizer,
        texts,
        layers=layers,
        batch_size=cfg.batch_size,
        shared_prefix=pre_query_template(tokenizer),
        desc="score",
    )
    rows = [dfile.layers.index(layer) for layer in layers]
    dirs = {c: cd.direction[rows] for c, cd in dfile.criteria.items()}
    scored = score_table(
        table["id"].to_list(),
        table["instruction"].to_list(),
        consistency(states, dirs),
        standardise=cfg.standardise,
    )
    meta = provenance(
        "score", p, ["score"], {"directions": directions, "instructions": instructions}, card
    )
    meta["layers"] = layers
    write_table(out, scored, score_schema(list(dirs)), meta)
    col = "std" if cfg.standardise else "raw"
    long = pl.concat(
        [
            scored.select(pl.lit(c).alias("criterion"), pl.col(f"{col}_{c}").alias("score"))
            for c in dirs
        ]
    )
    write_csv(plots, long)
    typer.echo(f"score: {scored.height} instructions x {len(dirs)} criteria -> {out}")


if __name__ == "__main__":
    typer.run(main)
