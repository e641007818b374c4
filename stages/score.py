"""Stage `score` (METHOD A3): consistency of every instruction with every direction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_csv
from icon2.core.layers import resolve_layers
from icon2.core.provenance import provenance
from icon2.core.tables import INSTRUCTION_SCHEMA, read_table, score_schema, write_table
from icon2.engines.metered import count_tokens, stage_meter, write_cost
from icon2.model.loading import read_card
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, load_directions
from icon2.steps.scoring import score_instructions, score_plot_frame


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="directions.safetensors.")],
    instructions: Annotated[Path, typer.Option(help="instructions.parquet.")],
    out: Annotated[Path, typer.Option(help="scores.parquet to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of scores for the histogram plot.")],
    cost: Annotated[Path | None, typer.Option(help="Cost records (JSON) to write.")] = None,
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.score
    # Every input is checked before the model is loaded.
    table = read_table(
        instructions,
        INSTRUCTION_SCHEMA,
        what="instruction table (the synthesize stage's output)",
        text=("id", "instruction"),
    )
    card = read_card(model_dir)
    dfile = load_directions(directions)
    check_same_model(dfile, card, directions)
    layers = resolve_layers(
        cfg.layers, card["num_layers"], "score.layers", within=dfile.layers, source=str(directions)
    )
    model, tokenizer, card = load_model(model_dir, p)
    meter = stage_meter("score", "icon2", "preference annotation", p.base.device)
    with meter:
        scored = score_instructions(
            model,
            tokenizer,
            dfile,
            table,
            layers=layers,
            standardise=cfg.standardise,
            batch_size=cfg.batch_size,
        )
    meter.tokens_read = count_tokens(tokenizer, table["instruction"].to_list())
    inputs = {"directions": directions, "instructions": instructions}
    meta = {**provenance("score", p, inputs, card), "layers": layers}
    criteria = list(dfile.criteria)
    write_table(out, scored, score_schema(criteria), meta)
    write_csv(plots, score_plot_frame(scored, criteria, cfg.standardise))
    write_cost(cost, [meter])
    typer.echo(f"score: {scored.height} instructions x {len(criteria)} criteria -> {out}")


if __name__ == "__main__":
    typer.run(main)
