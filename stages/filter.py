"""Stage `filter` (METHOD A3): keep the most consistent instructions; train/validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.io import read_provenance, write_json
from icon2.core.params import load_params
from icon2.core.provenance import provenance
from icon2.core.tables import kept_schema, read_scores, write_table
from icon2.stage import user_errors
from icon2.steps.filtering import apply_filter, split


@user_errors
def main(
    scores: Annotated[Path, typer.Option(help="scores.parquet from the score stage.")],
    out: Annotated[Path, typer.Option(help="kept.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = load_params(params)
    cfg = p.filter
    table, criteria = read_scores(scores)
    kept, counts = apply_filter(table, rule=cfg.rule, value=cfg.value, min_margin=cfg.min_margin)
    kept = split(kept, validation_fraction=cfg.validation_fraction, seed=p.base.seed)
    upstream = read_provenance(scores)
    meta = provenance("filter", p, {"scores": scores})
    meta.update({k: upstream.get(k) for k in ("model", "weights_sha256", "revision")})
    write_table(out, kept, kept_schema(criteria), meta)
    counts["train"] = kept.filter(kept["split"] == "train").height
    counts["validation"] = kept.height - counts["train"]
    # The count after each rule stays in the table's story; metrics keep the headline ones.
    write_json(metrics, {k: v for k, v in counts.items() if not k.startswith("after_")})
    typer.echo(f"filter: {counts['scored']} scored -> {counts['kept']} kept -> {out}")


if __name__ == "__main__":
    typer.run(main)
