"""How strongly a pair table carries the preference directions (issue 23's diagnostic).

    python benchmarks/pair_projections.py                       # data/pairs/pairs.parquet
    python benchmarks/pair_projections.py --pairs <other table>

Every pair's chosen and rejected answer is re-read by the starting model without steering
(the mean over the answer's tokens at the controlled layers, ``pairs.layers``) and projected
on each criterion's direction in contrastive-norm units. Printed per criterion: the share of
pairs whose chosen answer projects higher than its rejected one and the mean gap, over all
pairs and over the pairs made for that criterion; then the cosines between the criteria's
directions (mean over the controlled layers) and the answers' mean token counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
import typer

from icon2.core.params import load_params
from icon2.core.precision import machine
from icon2.evaluate.shift import projections
from icon2.model.states import answer_token_means
from icon2.stage import load_model
from icon2.steps.direction_file import controlled_layers, load_directions


def main(
    pairs: Annotated[Path, typer.Option(help="A pair table.")] = Path("data/pairs/pairs.parquet"),
    model_dir: Annotated[Path, typer.Option(help="The model stage's output.")] = Path("data/model"),
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")] = Path(
        "data/directions/directions.safetensors"
    ),
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    typer.echo(json.dumps({"machine": machine()}))
    table = pl.read_parquet(pairs)
    model, tok, card = load_model(model_dir, p)
    dfile = load_directions(directions)
    layers = controlled_layers(dfile, p.pairs.layers, card["num_layers"], directions)
    rows = [dfile.layers.index(x) for x in layers]
    users = [next(m["content"] for m in r if m["role"] == "user") for r in table["prompt"]]
    read = {
        side: answer_token_means(
            model,
            tok,
            users,
            [r[0]["content"] for r in table[side]],
            layers=layers,
            system=p.base.system_prompt,
            batch_size=16,
        )
        for side in ("chosen", "rejected")
    }
    made_for = np.array(table["criterion"].to_list())
    typer.echo(f"{table.height} pairs from {pairs}, layers {layers[0]}..{layers[-1]}")
    for c, d in dfile.criteria.items():
        u, s = d.direction[rows], d.contrastive_norm[rows]
        gap = (projections(read["chosen"], u, s) - projections(read["rejected"], u, s)).numpy()
        own = made_for == c
        typer.echo(
            f"{c:13s} all: chosen > rejected {np.mean(gap > 0):.2f}, mean gap {gap.mean():+.3f}"
            f" | made for {c} ({own.sum()}): {np.mean(gap[own] > 0):.2f}, "
            f"{gap[own].mean():+.3f}"
        )
    names = list(dfile.criteria)
    for a in names:
        cos = [
            float(
                (dfile.criteria[a].direction[rows] * dfile.criteria[b].direction[rows])
                .sum(-1)
                .mean()
            )
            for b in names
        ]
        typer.echo(f"cosine {a:13s} " + " ".join(f"{x:+.2f}" for x in cos))
    lengths = table.select(
        pl.col("chosen_tokens").mean().alias("chosen"),
        pl.col("rejected_tokens").mean().alias("rejected"),
    ).row(0, named=True)
    typer.echo(f"mean tokens: chosen {lengths['chosen']:.1f}, rejected {lengths['rejected']:.1f}")


if __name__ == "__main__":
    typer.run(main)
