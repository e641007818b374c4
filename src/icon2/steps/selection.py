"""A6: choosing γ⁺, γ⁻ and the layer range without training (ICON² appendix J).

Pairs are generated for a small subsample under every (layer range, γ⁺, γ⁻) of a grid.
Every pair goes through A4's drop rule (:func:`icon2.steps.drops.pair_drop_reason`: empty,
truncated or identical answers carry no signal); every mean and share below is over the
pairs A4 would **keep**, and each setting reports how many it kept and dropped, by reason.

A setting is **eligible** when it keeps at least ``min_kept_fraction`` of its pairs (and at
least one) and the criterion's share of kept pairs that separate **exceeds** ``min_share``
(0.9). ``criterion`` chooses what separates and ranks:

* ``reward`` — the paper's rule, on the scorer's rewards (reward model or LLM judge):
  1. the layer range and γ⁺ whose **chosen** answers have the highest mean reward, pooled
     over that (range, γ⁺)'s settings that keep enough pairs (chosen answers do not depend
     on γ⁻), each weighted by its kept count;
  2. with those fixed, the eligible γ⁻ (share of reward(chosen) > reward(rejected) above
     ``min_share``) whose **rejected** answers have the highest mean reward: the rejected
     side should be as good as it can be while the pair still separates — a large gap
     makes pairs trivially separable.
* ``projection_gap`` — no judge (:mod:`icon2.steps.projection`): each kept pair's answers
  are re-read unsteered and projected on the instruction's criterion direction; the gap is
  chosen − rejected. The eligible setting (share of gap > 0 above ``min_share``) with the
  largest mean gap is picked. Note the rule prefers the strongest push whose pairs still
  survive A4 and separate; the kept guard is what stops it at pushes that wreck the text.

Ties go to the gentler push (smaller |γ⁺|, then |γ⁻|), then the range that starts at the
earlier layer, then the range name, so the same grid gives the same answer whatever its
row order. When no setting is eligible nothing is picked, and the reason says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, get_args

import polars as pl

from icon2.core.params import SelectCriterion
from icon2.steps.drops import DROP_REASONS

SCORED_SCHEMA: dict[str, pl.DataType] = {  # one row per generated pair
    "layer_range": pl.String(),
    "layers": pl.List(pl.Int64()),
    "gamma_pos": pl.Float64(),
    "gamma_neg": pl.Float64(),
    "id": pl.String(),
    "chosen_reward": pl.Float64(),  # null when no scorer ran (criterion projection_gap)
    "rejected_reward": pl.Float64(),
    "chosen_projection": pl.Float64(),  # null for a dropped pair
    "rejected_projection": pl.Float64(),
    "drop_reason": pl.String(),  # A4's reason to drop the pair (DROP_REASONS); null = kept
}
GRID_SCHEMA: dict[str, pl.DataType] = {  # one row per grid setting (cell)
    "layer_range": pl.String(),
    "layers": pl.List(pl.Int64()),
    "gamma_pos": pl.Float64(),
    "gamma_neg": pl.Float64(),
    "n": pl.Int64(),  # pairs generated
    "kept": pl.Int64(),  # pairs A4 keeps; every value below is over these
    **{f"dropped_{r}": pl.Int64() for r in DROP_REASONS},
    "kept_share": pl.Float64(),  # kept / n
    "chosen_reward": pl.Float64(),  # means (null: no scorer, or nothing kept)
    "rejected_reward": pl.Float64(),
    "win_share": pl.Float64(),  # share with chosen_reward > rejected_reward
    "gap": pl.Float64(),  # mean projection gap, chosen − rejected
    "gap_share": pl.Float64(),  # share with gap > 0
    "eligible": pl.Boolean(),  # keeps enough pairs and the criterion's share exceeds min_share
}
CRITERIA: tuple[str, ...] = get_args(SelectCriterion)


@dataclass(frozen=True)
class Rule:
    """How the grid is read (the ``select`` section)."""

    criterion: SelectCriterion
    min_share: float  # the criterion's share of kept pairs that separate must exceed it
    min_kept_fraction: float  # the share of its pairs a setting must keep

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {self.criterion!r}")
        if not 0.0 <= self.min_share < 1.0:
            raise ValueError(f"min_share must be in [0, 1), got {self.min_share}")
        if not 0.0 <= self.min_kept_fraction <= 1.0:
            raise ValueError(f"min_kept_fraction must be in [0, 1], got {self.min_kept_fraction}")

    @property
    def share(self) -> str:
        return "win_share" if self.criterion == "reward" else "gap_share"

    def enough_kept(self) -> pl.Expr:
        return (pl.col("kept") > 0) & (pl.col("kept_share") >= self.min_kept_fraction)

    def eligible(self) -> pl.Expr:
        return self.enough_kept() & (pl.col(self.share) > self.min_share).fill_null(False)


@dataclass(frozen=True)
class Selection:
    criterion: str
    layer_range: str
    layers: list[int]
    gamma_pos: float
    gamma_neg: float
    n: int
    kept: int
    chosen_reward: float | None  # reward rule: pooled over the head's settings (step 1)
    rejected_reward: float | None
    win_share: float | None
    gap: float | None
    gap_share: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def grid_table(scored: pl.DataFrame, rule: Rule) -> pl.DataFrame:
    """Aggregate scored pairs into one row per grid setting.

    Args:
        scored: columns of ``SCORED_SCHEMA`` (layer_range, layers, gamma_pos, gamma_neg, id,
            chosen/rejected reward and projection, drop_reason).

    Returns:
        ``GRID_SCHEMA`` rows (layer_range, layers, gamma_pos, gamma_neg, n, kept, dropped
        per reason, kept_share, means and shares over the kept pairs, eligible under
        ``rule``), in the order settings first appear in ``scored``.
    """
    missing = [c for c in SCORED_SCHEMA if c not in scored.columns]
    if missing:
        raise ValueError(f"scored pairs lack column(s) {missing}")
    keys = ["layer_range", "gamma_pos", "gamma_neg"]
    kept = pl.col("drop_reason").is_null()
    gap = pl.col("chosen_projection") - pl.col("rejected_projection")
    grid = scored.group_by(keys, maintain_order=True).agg(
        pl.col("layers").first(),
        pl.len().cast(pl.Int64).alias("n"),
        kept.sum().cast(pl.Int64).alias("kept"),
        *(
            (pl.col("drop_reason") == r).sum().cast(pl.Int64).alias(f"dropped_{r}")
            for r in DROP_REASONS
        ),
        kept.mean().alias("kept_share"),
        pl.col("chosen_reward").filter(kept).mean(),
        pl.col("rejected_reward").filter(kept).mean(),
        (pl.col("chosen_reward") > pl.col("rejected_reward"))
        .filter(kept)
        .mean()
        .alias("win_share"),
        gap.filter(kept).mean().alias("gap"),
        (gap > 0).filter(kept).mean().alias("gap_share"),
    )
    grid = grid.with_columns(rule.eligible().alias("eligible"))
    return grid.select(list(GRID_SCHEMA)).cast(GRID_SCHEMA)  # type: ignore[arg-type]


def select(grid: pl.DataFrame, rule: Rule) -> tuple[Selection | None, str]:
    """Apply ``rule`` to a grid table (``GRID_SCHEMA``; its ``eligible`` column is not
    read: eligibility is computed here from the other columns).

    Returns:
        (the chosen setting, or None; a one-line reason saying what was picked and why, or
        why nothing could be).

    Raises:
        ValueError: an empty grid, missing columns, or a reward rule on a grid without
            rewards.
    """
    missing = [c for c in GRID_SCHEMA if c not in grid.columns and c != "eligible"]
    if missing:
        raise ValueError(f"the grid table lacks column(s) {missing}")
    if grid.height == 0:
        raise ValueError("the grid table is empty")
    cells = grid.with_columns(
        pl.col("layers").list.min().alias("_first_layer"),
        rule.enough_kept().alias("_enough"),
        rule.eligible().alias("_eligible"),
    )
    enough = cells.filter("_enough")
    if enough.height == 0:
        top = float(cells["kept_share"].max() or 0.0)  # type: ignore[arg-type]
        return None, (
            f"no setting picked: none keeps {rule.min_kept_fraction:g} of its pairs under A4's "
            f"drop rule (the best kept share is {top:.3f}); raise select.max_new_tokens or "
            f"use gentler pushes"
        )
    if rule.criterion == "reward":
        return _by_reward(cells, enough, rule)
    return _by_gap(cells, enough, rule)


def _by_reward(
    cells: pl.DataFrame, enough: pl.DataFrame, rule: Rule
) -> tuple[Selection | None, str]:
    if enough["chosen_reward"].null_count() == enough.height:
        raise ValueError("criterion 'reward' needs rewards, and the grid has none")
    # Step 1: best mean chosen reward per (range, γ⁺), pooled over its settings' kept pairs.
    heads = (
        enough.group_by("layer_range", "gamma_pos", maintain_order=True)
        .agg(
            ((pl.col("chosen_reward") * pl.col("kept")).sum() / pl.col("kept").sum()).alias(
                "pooled"
            ),
            pl.col("_first_layer").first(),
        )
        .sort(
            [pl.col("pooled"), pl.col("gamma_pos").abs(), "_first_layer", "layer_range"],
            descending=[True, False, False, False],
        )
    )
    best = heads.row(0, named=True)
    head = f"layer range {best['layer_range']!r}, γ⁺ = {best['gamma_pos']:g}"
    # Step 2: among that head's γ⁻ settings, the eligible ones.
    mine = enough.filter(
        (pl.col("layer_range") == best["layer_range"]) & (pl.col("gamma_pos") == best["gamma_pos"])
    )
    passing = mine.filter("_eligible")
    if passing.height == 0:
        top = float(mine["win_share"].max())  # type: ignore[arg-type]
        return None, (
            f"no setting picked: with {head} (best mean chosen reward {best['pooled']:.4f} "
            f"over kept pairs) no γ⁻ keeping {rule.min_kept_fraction:g} of its pairs has a "
            f"share of chosen > rejected above {rule.min_share:g} (the best share is "
            f"{top:.3f}); widen the γ⁻ grid or check the scorer"
        )
    row = passing.sort(
        [pl.col("rejected_reward"), pl.col("gamma_neg").abs()], descending=[True, False]
    ).row(0, named=True)
    pick = _selection(rule, row, chosen_reward=float(best["pooled"]))
    return pick, (
        f"picked {head}, γ⁻ = {pick.gamma_neg:g} by reward: best mean chosen reward "
        f"{best['pooled']:.4f}, then best mean rejected reward {row['rejected_reward']:.4f} "
        f"among {passing.height} of {mine.height} γ⁻ settings keeping "
        f"{rule.min_kept_fraction:g} of their pairs with a share above {rule.min_share:g} "
        f"({pick.kept} of {pick.n} pairs kept)"
    )


def _by_gap(cells: pl.DataFrame, enough: pl.DataFrame, rule: Rule) -> tuple[Selection | None, str]:
    passing = cells.filter("_eligible")
    if passing.height == 0:
        top = float(enough["gap_share"].max() or 0.0)  # type: ignore[arg-type]
        return None, (
            f"no setting picked: of the {enough.height} settings keeping "
            f"{rule.min_kept_fraction:g} of their pairs, none has a share of projection gap "
            f"> 0 above {rule.min_share:g} (the best share is {top:.3f}); widen the grid or "
            f"check the directions"
        )
    row = passing.sort(
        [
            pl.col("gap"),
            pl.col("gamma_pos").abs(),
            pl.col("gamma_neg").abs(),
            "_first_layer",
            "layer_range",
        ],
        descending=[True, False, False, False, False],
    ).row(0, named=True)
    pick = _selection(rule, row, chosen_reward=row["chosen_reward"])
    return pick, (
        f"picked layer range {pick.layer_range!r}, γ⁺ = {pick.gamma_pos:g}, γ⁻ = "
        f"{pick.gamma_neg:g} by projection gap: largest mean gap {row['gap']:.4f} among "
        f"{passing.height} of {cells.height} settings keeping {rule.min_kept_fraction:g} of "
        f"their pairs with a share of gap > 0 above {rule.min_share:g} ({pick.kept} of "
        f"{pick.n} pairs kept)"
    )


def _selection(rule: Rule, row: dict[str, Any], *, chosen_reward: float | None) -> Selection:
    def num(key: str) -> float | None:
        return None if row[key] is None else float(row[key])

    return Selection(
        criterion=rule.criterion,
        layer_range=row["layer_range"],
        layers=list(row["layers"]),
        gamma_pos=float(row["gamma_pos"]),
        gamma_neg=float(row["gamma_neg"]),
        n=int(row["n"]),
        kept=int(row["kept"]),
        chosen_reward=chosen_reward,
        rejected_reward=num("rejected_reward"),
        win_share=num("win_share"),
        gap=num("gap"),
        gap_share=num("gap_share"),
    )
