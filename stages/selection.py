"""Stage `selection` (METHOD A6, appendix J): γ⁺, γ⁻ and the layer range chosen without DPO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_csv, write_json
from icon2.core.provenance import provenance
from icon2.core.tables import read_kept, write_table
from icon2.engines.metered import write_cost
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, load_directions
from icon2.steps.grid import layer_ranges, projection_layers, run_grid
from icon2.steps.selection import SCORED_SCHEMA
from icon2.steps.selection_report import apply_command, grid_csv


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    kept: Annotated[Path, typer.Option(help="kept.parquet from the filter stage.")],
    scored: Annotated[
        Path, typer.Option(help="Per-pair rewards, projections, drops (Parquet) to write.")
    ],
    grid: Annotated[Path, typer.Option(help="Grid table (CSV, also the plot) to write.")],
    out: Annotated[Path, typer.Option(help="The chosen setting (JSON) to write.")],
    cost: Annotated[Path, typer.Option(help="Cost records (JSON) to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    model, tokenizer, card = load_model(model_dir, p)
    dfile = load_directions(directions)
    check_same_model(dfile, card, directions)
    ranges = layer_ranges(p.select.layer_ranges, card["num_layers"], dfile, directions)
    read_at = projection_layers(p.select.projection_layers, card["num_layers"], dfile, directions)
    run = run_grid(
        p, model_dir, model, tokenizer, card["name"], dfile, read_kept(kept), ranges, read_at
    )
    meta = provenance("selection", p, {"kept": kept, "directions": directions}, card)
    write_table(scored, run.scored, SCORED_SCHEMA, meta)
    write_csv(grid, grid_csv(run.cells))
    write_json(out, run.summary())
    write_cost(cost, run.meters)
    typer.echo(f"selection ({run.rule.criterion}): {run.reason}")
    apply = apply_command(run.pick)
    if apply:
        typer.echo(f"apply with: {apply}")


if __name__ == "__main__":
    typer.run(main)
