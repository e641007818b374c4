"""Stage `cost` (METHOD A8, Table 4): device-hours and money per method, and ICON² / SR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icon2.core.cost import records_frame
from icon2.core.errors import InputError
from icon2.core.io import write_csv, write_json
from icon2.evaluate.cost import cost_ratio, cost_table, format_table, read_cost_files
from icon2.stage import open_stage, user_errors


@user_errors
def main(
    records: Annotated[
        list[Path],
        typer.Option("--records", help="Cost JSON files ({'cost': [...]}) of the main run."),
    ],
    table: Annotated[Path, typer.Option(help="Cost table (CSV, Table 4's layout) to write.")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write (the ratios).")],
    baselines: Annotated[
        Path | None,
        typer.Option(help="Folder with <method>/cost.json for each of baselines.methods."),
    ] = None,
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    cfg = p.cost
    files = list(records)
    if baselines is not None:
        files += [baselines / method / "cost.json" for method in p.baselines.methods]
    frame = cost_table(
        records_frame(read_cost_files(files)), price_per_device_hour=cfg.price_per_device_hour
    )
    try:
        ratio = cost_ratio(frame, cfg.numerator, cfg.denominator)
    except ValueError as exc:
        raise InputError(f"cost.numerator/denominator: {exc}") from None
    write_csv(table, frame)
    write_json(out, {f"ratio_{k}": v for k, v in ratio.items()})
    typer.echo(
        format_table(
            frame,
            ratio,
            currency=cfg.currency,
            numerator=cfg.numerator,
            denominator=cfg.denominator,
        )
    )


if __name__ == "__main__":
    typer.run(main)
