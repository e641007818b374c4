"""Stage `filter` (METHOD A3): keep the most consistent instructions; train/validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.filtering import apply_filter, split
from icon2.io import check_schema, read_provenance, read_table, write_json, write_table
from icon2.params import load_params
from icon2.scoring import score_schema
from icon2.stage import provenance, user_errors


@user_errors
def main(
    scores: Annotated[Path, typer.Option(help="scores.parquet from the score stage.")],
    out: Annotated[Path, typer.Option(help="kept.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.filter
    upstream = read_provenance(scores)
    table = read_table(scores, {})
    # The criteria are whatever the score stage wrote: one raw_<criterion> column each.
    schema = score_schema([c.removeprefix("raw_") for c in table.columns if c.startswith("raw_")])
    check_schema(table, schema, str(scores))
    kept, counts = apply_filter(table, rule=cfg.rule, value=cfg.value, min_margin=cfg.min_margin)
    kept = split(kept, validation_fraction=cfg.validation_fraction, seed=p.base.seed)
    meta = provenance("filter", p, ["filter"], {"scores": scores})
    for key in ("model", "weights_sha256", "revision"):
        meta[key] = upstream.get(key)
    write_table(out, kept, {**schema, "split": kept.schema["split"]}, meta)
    counts["train"] = kept.filter(kept["split"] == "train").height
    counts["validation"] = kept.height - counts["train"]
    write_json(metrics, counts)
    typer.echo(f"filter: {counts['scored']} scored -> {counts['kept']} kept -> {out}")


if __name__ == "__main__":
    typer.run(main)
