"""What App. J's selection writes (METHOD A6): each setting's values for ``selected.json``,
the ``dvc exp run`` command that applies the pick, and the grid as a CSV for plots."""

from __future__ import annotations

from typing import Any

import polars as pl

from icon2.steps.selection import Selection


def per_setting(grid: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Each setting's values (``GRID_SCHEMA`` less its keys), keyed ``range:γ⁺:γ⁻``, for
    ``selected.json``."""
    keys = ("layer_range", "layers", "gamma_pos", "gamma_neg")
    return {
        f"{r['layer_range']}:{r['gamma_pos']:g}:{r['gamma_neg']:g}": {
            k: v for k, v in r.items() if k not in keys
        }
        for r in grid.iter_rows(named=True)
    }


def apply_command(pick: Selection | None) -> str | None:
    """The ``dvc exp run`` command that sets the picked γ⁺, γ⁻ and layers in
    ``params.yaml``; None when nothing was picked."""
    if pick is None:
        return None
    layers = ",".join(str(x) for x in pick.layers)
    return (
        f"dvc exp run --set-param pairs.gamma_pos={pick.gamma_pos:g} "
        f"--set-param pairs.gamma_neg={pick.gamma_neg:g} --set-param 'pairs.layers=[{layers}]'"
    )


def grid_csv(grid: pl.DataFrame) -> pl.DataFrame:
    """A grid table (``GRID_SCHEMA``) for CSV and plots: ``layers`` as one space-separated
    string ("10 11 12"), the other columns as they are."""
    return grid.with_columns(pl.col("layers").cast(pl.List(pl.String)).list.join(" "))
