"""A6: choosing γ⁺, γ⁻ and the layer range without training (ICON² appendix J).

Pairs are generated for a small subsample under every (layer range, γ⁺, γ⁻) of a grid and
every answer is scored by a reward model (or the local judge's pointwise score). The rule:

1. the layer range and γ⁺ whose **chosen** answers have the highest mean reward;
2. with those fixed, the γ⁻ whose **rejected** answers have the highest mean reward among
   the settings where the share of pairs with reward(chosen) > reward(rejected) **exceeds**
   ``min_share`` (0.9): the rejected side should be as good as it can be while the pair
   still separates — a large gap makes pairs trivially separable.

Chosen answers do not depend on γ⁻, so step 1 pools a (range, γ⁺)'s cells, weighting each
cell by its pair count. Ties are broken towards the gentler push (smaller |γ|), then the
range that starts at the earlier layer, then the range name, so the same grid gives the same
answer whatever its row order. When no γ⁻ passes
step 2 nothing is picked, and the reason says which share was the best seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

SCORED_SCHEMA: dict[str, pl.DataType] = {  # one row per generated pair
    "layer_range": pl.String(),
    "layers": pl.List(pl.Int64()),
    "gamma_pos": pl.Float64(),
    "gamma_neg": pl.Float64(),
    "id": pl.String(),
    "chosen_reward": pl.Float64(),
    "rejected_reward": pl.Float64(),
    "kept": pl.Boolean(),  # A4 would keep the pair (neither side empty or truncated, texts differ)
}
GRID_SCHEMA: dict[str, pl.DataType] = {  # one row per grid cell
    "layer_range": pl.String(),
    "layers": pl.List(pl.Int64()),
    "gamma_pos": pl.Float64(),
    "gamma_neg": pl.Float64(),
    "n": pl.Int64(),
    "chosen_reward": pl.Float64(),
    "rejected_reward": pl.Float64(),
    "win_share": pl.Float64(),  # share of pairs with chosen_reward > rejected_reward
    "kept_share": pl.Float64(),  # share of pairs A4 would keep (information, not a rule)
}
MIN_SHARE = 0.9


@dataclass(frozen=True)
class Selection:
    layer_range: str
    layers: list[int]
    gamma_pos: float
    gamma_neg: float
    chosen_reward: float
    rejected_reward: float
    win_share: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def grid_table(scored: pl.DataFrame) -> pl.DataFrame:
    """Aggregate scored pairs into one row per grid cell.

    Args:
        scored: columns of ``SCORED_SCHEMA`` (layer_range, layers, gamma_pos, gamma_neg, id,
            chosen_reward, rejected_reward, kept).

    Returns:
        ``GRID_SCHEMA`` rows (layer_range, layers, gamma_pos, gamma_neg, n, mean chosen and
        rejected reward, win_share, kept_share), in the order cells first appear in
        ``scored``. Every scored pair counts, kept or not: appendix J scores every answer.
    """
    missing = [c for c in SCORED_SCHEMA if c not in scored.columns]
    if missing:
        raise ValueError(f"scored pairs lack column(s) {missing}")
    keys = ["layer_range", "gamma_pos", "gamma_neg"]
    grid = scored.group_by(keys, maintain_order=True).agg(
        pl.col("layers").first(),
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("chosen_reward").mean(),
        pl.col("rejected_reward").mean(),
        (pl.col("chosen_reward") > pl.col("rejected_reward")).mean().alias("win_share"),
        pl.col("kept").mean().alias("kept_share"),
    )
    return grid.select(list(GRID_SCHEMA)).cast(GRID_SCHEMA)  # type: ignore[arg-type]


def select(grid: pl.DataFrame, *, min_share: float = MIN_SHARE) -> tuple[Selection | None, str]:
    """Apply the appendix-J rule to a grid table (``GRID_SCHEMA``).

    Returns:
        (the chosen setting, or None; a one-line reason saying what was picked and why, or
        why nothing could be).

    Raises:
        ValueError: an empty grid, missing columns, or min_share outside [0, 1).
    """
    missing = [c for c in GRID_SCHEMA if c not in grid.columns]
    if missing:
        raise ValueError(f"the grid table lacks column(s) {missing}")
    if grid.height == 0:
        raise ValueError("the grid table is empty")
    if not 0.0 <= min_share < 1.0:
        raise ValueError(f"min_share must be in [0, 1), got {min_share}")
    cells = grid.with_columns(pl.col("layers").list.min().alias("_first_layer"))
    # Step 1: best mean chosen reward per (range, γ⁺), pooled over its γ⁻ cells.
    heads = (
        cells.group_by("layer_range", "gamma_pos", maintain_order=True)
        .agg(
            ((pl.col("chosen_reward") * pl.col("n")).sum() / pl.col("n").sum()).alias("pooled"),
            pl.col("_first_layer").first(),
        )
        .sort(
            [pl.col("pooled"), pl.col("gamma_pos").abs(), "_first_layer", "layer_range"],
            descending=[True, False, False, False],
        )
    )
    best = heads.row(0, named=True)
    head = f"layer range {best['layer_range']!r}, γ⁺ = {best['gamma_pos']:g}"
    # Step 2: among that head's γ⁻ cells whose pairs separate often enough.
    mine = cells.filter(
        (pl.col("layer_range") == best["layer_range"]) & (pl.col("gamma_pos") == best["gamma_pos"])
    )
    passing = mine.filter(pl.col("win_share") > min_share)
    if passing.height == 0:
        top = float(mine["win_share"].max())  # type: ignore[arg-type]
        return None, (
            f"no setting picked: with {head} (best mean chosen reward "
            f"{best['pooled']:.4f}) no γ⁻ has a share of chosen > rejected above "
            f"{min_share:g} (the best share is {top:.3f}); widen the γ⁻ grid or check the scorer"
        )
    row = passing.sort(
        [pl.col("rejected_reward"), pl.col("gamma_neg").abs()], descending=[True, False]
    ).row(0, named=True)
    pick = Selection(
        layer_range=row["layer_range"],
        layers=list(row["layers"]),
        gamma_pos=float(row["gamma_pos"]),
        gamma_neg=float(row["gamma_neg"]),
        chosen_reward=float(best["pooled"]),
        rejected_reward=float(row["rejected_reward"]),
        win_share=float(row["win_share"]),
        n=int(row["n"]),
    )
    return pick, (
        f"picked {head}, γ⁻ = {pick.gamma_neg:g}: best mean chosen reward "
        f"{pick.chosen_reward:.4f}, then best mean rejected reward {pick.rejected_reward:.4f} "
        f"among {passing.height} of {mine.height} γ⁻ settings with a share above {min_share:g}"
    )


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
