"""Stage `selection` (METHOD A6, appendix J): γ⁺, γ⁻ and the layer range chosen without DPO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2.core.io import write_csv, write_json
from icon2.core.layers import resolve_layers
from icon2.core.provenance import provenance
from icon2.core.tables import read_kept, write_table
from icon2.engines import make_backend
from icon2.engines.base import Sampling
from icon2.evaluate.metered import stage_meter, write_cost
from icon2.evaluate.scorers import make_scorer
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, load_directions
from icon2.steps.grid import grid_scores, layer_thirds, subsample
from icon2.steps.selection import SCORED_SCHEMA, grid_table, select


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    kept: Annotated[Path, typer.Option(help="kept.parquet from the filter stage.")],
    scored: Annotated[Path, typer.Option(help="Per-pair rewards (Parquet) to write.")],
    grid: Annotated[Path, typer.Option(help="Grid table (CSV, also the plot) to write.")],
    out: Annotated[Path, typer.Option(help="The chosen setting (JSON) to write.")],
    cost: Annotated[Path, typer.Option(help="Cost records (JSON) to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg, pc = p.select, p.pairs
    model, tokenizer, card = load_model(model_dir, p)
    dfile = load_directions(directions)
    check_same_model(dfile, card, directions)
    ranges = {
        name: resolve_layers(
            layers,
            card["num_layers"],
            f"select.layer_ranges.{name}",
            within=dfile.layers,
            source=str(directions),
        )
        for name, layers in (cfg.layer_ranges or layer_thirds(card["num_layers"])).items()
    }
    rows = subsample(
        read_kept(kept), cfg.instructions, p.base.seed if cfg.seed is None else cfg.seed
    )
    # Its own method in the cost table: tuning work, outside the ICON² / baseline ratio.
    method, device = "icon2 selection", p.base.device
    generation = stage_meter("selection", method, "response generation", device)
    annotation = stage_meter("selection", method, "preference annotation", device)
    scorer = make_scorer(
        p.baselines.reward_model,
        p.baselines.judge,
        (model, tokenizer, card["name"]),
        dtype=p.base.dtype,
        batch_size=p.baselines.batch_size,
    )
    per_pair = grid_scores(
        make_backend(p, model_dir, model, tokenizer, batch_size=pc.batch_size, steering=True),
        tokenizer,
        rows,
        dfile,
        ranges=ranges,
        gammas_pos=cfg.gamma_pos,
        gammas_neg=cfg.gamma_neg,
        scale=pc.gamma_scale,
        sampling=Sampling(
            max_new_tokens=cfg.max_new_tokens or pc.max_new_tokens,
            temperature=pc.temperature,
            top_p=pc.top_p,
            repetition_penalty=pc.repetition_penalty,
            seed=p.base.seed,
        ),
        system=p.base.system_prompt,
        scorer=scorer,
        generation=generation,
        annotation=annotation,
    )
    cells = grid_table(per_pair)
    pick, reason = select(cells, min_share=cfg.min_share)
    meta = provenance("selection", p, {"kept": kept, "directions": directions}, card)
    write_table(scored, per_pair, SCORED_SCHEMA, meta)
    write_csv(grid, cells.with_columns(pl.col("layers").cast(pl.List(pl.String)).list.join(" ")))
    apply = None
    if pick is not None:
        layers = ",".join(str(x) for x in pick.layers)
        apply = (
            f"dvc exp run --set-param pairs.gamma_pos={pick.gamma_pos:g} "
            f"--set-param pairs.gamma_neg={pick.gamma_neg:g} --set-param 'pairs.layers=[{layers}]'"
        )
    write_json(
        out,
        {
            "selected": None if pick is None else pick.to_json(),
            "reason": reason,
            "apply": apply,
            "scorer": scorer.name,
            "instructions": rows.height,
            "cells": cells.height,
        },
    )
    write_cost(cost, [generation, annotation])
    typer.echo(f"selection: {reason}")
    if apply:
        typer.echo(f"apply with: {apply}")


if __name__ == "__main__":
    typer.run(main)
