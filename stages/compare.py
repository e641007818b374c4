"""Stage `compare`: one table over the methods — pairs, cost, reward accuracy on the common
held-out set, direction shift per criterion (each with its 95 % CI), win rate, LC win rate
(and whether the judge could tell the answers apart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer

from icon2.core.errors import InputError
from icon2.core.io import atomic_path, write_csv
from icon2.evaluate.methods import method_row, table_schema, to_markdown
from icon2.stage import open_stage, user_errors


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable metrics JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


@user_errors
def main(
    root: Annotated[Path, typer.Option(help="data/comparison: one folder per method.")],
    cost: Annotated[Path, typer.Option(help="The cost stage's table (CSV).")],
    table: Annotated[Path, typer.Option(help="Comparison table (CSV) to write.")],
    markdown: Annotated[Path, typer.Option(help="The same table in Markdown, to write.")],
    params: Annotated[Path, typer.Option(help="Params file.")] = Path("params.yaml"),
) -> None:
    p = open_stage(params)
    costs = {r["method"]: r for r in pl.read_csv(cost).iter_rows(named=True)}
    rows = []
    for method in p.compare.methods:
        folder = root / method
        rows.append(
            method_row(
                method,
                _json(folder / "train.json"),
                _json(folder / "signals.json"),
                _json(folder / "evaluate.json"),
                _json(folder / "benchmark.json"),
                costs.get(method),
                p.directions.criteria,
            )
        )
    frame = pl.DataFrame(rows, schema=table_schema(p.directions.criteria))
    write_csv(table, frame)
    text = to_markdown(frame)
    with atomic_path(markdown) as tmp:
        tmp.write_text(text, encoding="utf-8")
    typer.echo(text.rstrip())
    typer.echo(f"(device-hours and money at {p.cost.price_per_device_hour:g} {p.cost.currency}/h)")


if __name__ == "__main__":
    typer.run(main)
