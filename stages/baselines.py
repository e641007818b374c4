"""Stage `baselines@<method>` (METHOD A7): one baseline's pairs on the `pairs` instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.errors import InputError
from icon2.core.io import write_json
from icon2.core.provenance import provenance
from icon2.core.tables import read_kept, write_table
from icon2.engines.metered import write_cost
from icon2.stage import load_model, open_stage, user_errors
from icon2.steps.baselines.pairs import BASELINE_PAIR_SCHEMA
from icon2.steps.baselines.rules import BASELINES, check_method
from icon2.steps.baselines.run import run_baseline


@user_errors
def main(
    method: Annotated[str, typer.Option(help=f"One of {', '.join(BASELINES)}.")],
    model_dir: Annotated[Path, typer.Option(help="Output of the model stage.")],
    kept: Annotated[Path, typer.Option(help="kept.parquet from the filter stage.")],
    out: Annotated[Path, typer.Option(help="pairs.parquet to write.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write (counts).")],
    cost: Annotated[Path, typer.Option(help="Cost records (JSON) to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    if check_method(method) not in BASELINES:
        raise InputError(f"{method!r} is not a baseline; its pairs come from the `pairs` stage")
    p = open_stage(params)
    table = read_kept(kept)
    model, tokenizer, card = load_model(model_dir, p)
    run = run_baseline(method, p, model_dir, model, tokenizer, card["name"], table)
    meta = provenance("baselines", p, {"kept": kept}, card)
    write_table(out, run.pairs, BASELINE_PAIR_SCHEMA, meta)
    write_json(metrics, run.metrics)
    write_cost(cost, run.meters)
    typer.echo(
        f"baselines@{method}: {run.metrics['instructions']} instructions -> "
        f"{run.pairs.height} pairs ({run.decided_by}) -> {out}"
    )


if __name__ == "__main__":
    typer.run(main)
