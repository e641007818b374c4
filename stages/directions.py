"""Stage `directions` (METHOD A1): per-layer preference directions for every criterion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_csv, write_json
from icon2.core.layers import resolve_layers
from icon2.core.prompts import read_instructions
from icon2.core.provenance import provenance
from icon2.engines.metered import count_tokens, stage_meter, write_cost
from icon2.model.loading import read_card
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.directions import direction_metrics, extract_and_save, layer_frames


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    features: Annotated[Path, typer.Option(help="JSONL/Parquet with an `instruction` column.")],
    out: Annotated[Path, typer.Option(help="directions.safetensors to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of per-layer statistics to write.")],
    cost: Annotated[Path | None, typer.Option(help="Cost records (JSON) to write.")] = None,
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.directions
    instructions = read_instructions(features, minimum=2)[: cfg.max_features]
    layers = resolve_layers(cfg.layers, read_card(model_dir)["num_layers"], "directions.layers")
    model, tokenizer, card = load_model(model_dir, p)
    meta = provenance("directions", p, {"features": features}, card)
    meter = stage_meter("directions", "icon2", "preference annotation", p.base.device)
    with meter:
        dirs = extract_and_save(out, model, tokenizer, instructions, cfg, layers, meta)
    # Each instruction is read under both prompts of every criterion (the shared system
    # prefix is computed once per criterion, so it is not counted).
    meter.tokens_read = 2 * len(dirs) * count_tokens(tokenizer, instructions)
    write_json(metrics, direction_metrics(dirs, layers, card["num_layers"], len(instructions)))
    for criterion, frame in layer_frames(dirs, layers).items():
        write_csv(plots / f"{criterion}.csv", frame)
    write_cost(cost, [meter])
    typer.echo(
        f"directions for {list(dirs)} over {len(layers)} layers "
        f"from {len(instructions)} instructions -> {out}"
    )


if __name__ == "__main__":
    typer.run(main)
