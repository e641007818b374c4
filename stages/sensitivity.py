"""Stage `sensitivity` (ICON² appendix G): do the directions depend on the feature set?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from icon2.core.io import write_csv, write_json
from icon2.core.layers import resolve_layers
from icon2.core.tables import read_instructions
from icon2.evaluate.sensitivity import compare_directions
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.direction_file import check_same_model, load_directions
from icon2.steps.directions import extract


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    directions: Annotated[Path, typer.Option(help="The directions stage's output (reference).")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="CSV of per-layer cosines to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg, dc = p.sensitivity, p.directions
    model, tokenizer, card = load_model(model_dir, p)
    ref = load_directions(directions)
    check_same_model(ref, card, directions)
    # The controlled layers: where the directions are used (A4).
    layers = resolve_layers(
        p.pairs.layers,
        card["num_layers"],
        "pairs.layers",
        default="middle",
        within=ref.layers,
        source=str(directions),
    )
    rows = [ref.layers.index(x) for x in layers]
    reference = {c: d.direction[rows] for c, d in ref.criteria.items()}
    prompts = {c: (dc.prompts[c].positive, dc.prompts[c].negative) for c in ref.criteria}
    metrics: dict[str, Any] = {"reference_features": ref.meta.get("num_features")}
    frames = []
    for name, source in cfg.sources.items():
        instructions = read_instructions(Path(source.file), minimum=2)[: source.max_features]
        dirs = extract(
            model,
            tokenizer,
            instructions,
            prompts,
            layers=layers,
            read_position=dc.read_position,
            batch_size=dc.batch_size,
        )
        per_layer, summary = compare_directions(
            reference, {c: d.direction for c, d in dirs.items()}, layers
        )
        frames.append(per_layer.with_columns(pl.lit(name).alias("source")))
        # Headline: a few numbers per source; per criterion and layer go to the plot file.
        metrics[name] = {
            "features": len(instructions),
            "cosine_mean": float(summary["cosine_mean"].mean()),  # type: ignore[arg-type]
            "cosine_min": float(summary["cosine_min"].min()),  # type: ignore[arg-type]
            "mw_min_p": float(summary["mw_min_p"].min()),  # type: ignore[arg-type]
        }
        m = metrics[name]
        typer.echo(
            f"sensitivity {name} ({len(instructions)} features, layers {layers[0]}..{layers[-1]}):"
            f" cosine mean {m['cosine_mean']:.4f}, min {m['cosine_min']:.4f};"
            f" Mann-Whitney min p {m['mw_min_p']:.3g}"
        )
    write_json(out, metrics)
    table = pl.concat(frames) if frames else pl.DataFrame()
    if frames:
        table = table.with_columns((pl.col("source") + ":" + pl.col("criterion")).alias("series"))
    write_csv(plots, table)


if __name__ == "__main__":
    typer.run(main)
