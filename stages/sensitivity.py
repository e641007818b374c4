"""Stage `sensitivity` (ICON² appendix G): do the directions depend on the feature set?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import write_csv, write_json
from icon2.core.prompts import read_instructions
from icon2.evaluate.sensitivity import feature_set_sensitivity, sensitivity_lines
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, controlled_layers, load_directions


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="The directions stage's output (reference).")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of per-layer cosines to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    model, tokenizer, card = load_model(model_dir, p)
    ref = load_directions(directions)
    check_same_model(ref, card, directions)
    # The controlled layers: where the directions are used (A4).
    layers = controlled_layers(ref, p.pairs.layers, card["num_layers"], directions)
    sources = {
        name: read_instructions(Path(s.file), minimum=2)[: s.max_features]
        for name, s in p.sensitivity.sources.items()
    }
    metrics, table = feature_set_sensitivity(
        model, tokenizer, ref, sources, layers=layers, cfg=p.directions
    )
    for line in sensitivity_lines(metrics, layers):
        typer.echo(line)
    write_json(out, metrics)
    write_csv(plots, table)


if __name__ == "__main__":
    typer.run(main)
