"""Stage `directions` (METHOD A1): per-layer preference directions for every criterion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from icon2 import direction_file
from icon2.directions import extract
from icon2.errors import InputError
from icon2.io import read_instructions, sha256_json, write_csv, write_json
from icon2.models import check_layers, load_local
from icon2.params import load_params
from icon2.stage import provenance, seed_everything, user_errors


@user_errors
def main(
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    features: Annotated[Path, typer.Option(help="JSONL/Parquet with an `instruction` column.")],
    out: Annotated[Path, typer.Option(help="directions.safetensors to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="Directory for the explained-variance plot data.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.directions
    seed_everything(p.base.seed)
    instructions = read_instructions(features)[: cfg.max_features]
    if len(instructions) < 2:
        raise InputError(f"{features}: need at least 2 instructions, found {len(instructions)}")
    model, tokenizer, card = load_local(model_dir, dtype=p.base.dtype, device=p.base.device)
    layers = cfg.layers or list(range(1, card["num_layers"] + 1))
    check_layers(layers, card["num_layers"], "directions.layers")
    prompts = {c: (cfg.prompts[c].positive, cfg.prompts[c].negative) for c in cfg.criteria}
    dirs = extract(
        model,
        tokenizer,
        instructions,
        prompts,
        layers=layers,
        read_position=cfg.read_position,
        batch_size=cfg.batch_size,
    )
    meta = provenance("directions", p, ["directions"], {"features": features}, card)
    meta.update(
        criteria=list(cfg.criteria),
        layers=layers,
        read_position=cfg.read_position,
        prompts_sha256=sha256_json(prompts),
        features_sha256=meta["inputs"]["features"],
        num_features=len(instructions),
    )
    direction_file.save(out, dirs, meta)
    write_json(
        metrics,
        {
            c: {
                str(layer): {
                    "explained_variance": round(float(d.evr[i]), 6),
                    "contrastive_norm": round(float(d.contrastive_norm[i]), 4),
                    "hidden_norm": round(float(d.hidden_norm[i]), 4),
                }
                for i, layer in enumerate(layers)
            }
            for c, d in dirs.items()
        },
    )
    for c, d in dirs.items():
        write_csv(
            plots / f"{c}.csv",
            pl.DataFrame({"layer": layers, "explained_variance": d.evr.tolist()}),
        )
    typer.echo(
        f"directions for {list(dirs)} over {len(layers)} layers "
        f"from {len(instructions)} instructions -> {out}"
    )


if __name__ == "__main__":
    typer.run(main)
