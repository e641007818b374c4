from __future__ import annotations

import itertools
from typing import Any

import polars as pl
import pytest

from icon2.steps.selection import (
    GRID_SCHEMA,
    SCORED_SCHEMA,
    Rule,
    Selection,
    grid_table,
    select,
)
from icon2.steps.selection_report import apply_command, grid_csv, per_setting

RANGES = {"early": [1, 2], "middle": [3, 4], "late": [5, 6]}
REWARD = Rule("reward", min_share=0.9, min_kept_fraction=0.5)
GAP = Rule("projection_gap", min_share=0.9, min_kept_fraction=0.5)


def _cell(
    r: str,
    gp: float,
    gn: float,
    chosen: float | None = None,
    rejected: float | None = None,
    win: float | None = None,
    *,
    n: int = 10,
    kept: int = 10,
    gap: float | None = None,
    gap_share: float | None = None,
) -> dict[str, Any]:
    return {
        "layer_range": r,
        "layers": RANGES[r],
        "gamma_pos": gp,
        "gamma_neg": gn,
        "n": n,
        "kept": kept,
        "dropped_empty": 0,
        "dropped_truncated": n - kept,
        "dropped_identical": 0,
        "kept_share": kept / n,
        "chosen_reward": chosen,
        "rejected_reward": rejected,
        "win_share": win,
        "gap": gap,
        "gap_share": gap_share,
        "eligible": False,  # not read by select
    }


def _grid(rows: list[tuple[str, float, float, float, float, float]]) -> pl.DataFrame:
    """(range, γ⁺, γ⁻, chosen, rejected, share) → a grid table, 10 pairs per cell, all kept."""
    return pl.DataFrame([_cell(*row) for row in rows], schema=GRID_SCHEMA)


Pair = tuple[str, float, float, float, float, str | None]


def _scored(rows: list[Pair]) -> pl.DataFrame:
    """(range, γ⁺, γ⁻, chosen reward, rejected reward, drop reason) → scored pairs."""
    return pl.DataFrame(
        [
            {
                "layer_range": r,
                "layers": RANGES[r],
                "gamma_pos": gp,
                "gamma_neg": gn,
                "id": f"i{k}",
                "chosen_reward": c,
                "rejected_reward": rj,
                "chosen_projection": None if why else 0.0,
                "rejected_projection": None if why else 0.0,
                "drop_reason": why,
            }
            for k, (r, gp, gn, c, rj, why) in enumerate(rows)
        ],
        schema=SCORED_SCHEMA,
    )


def test_rule_picks_best_chosen_then_best_rejected_above_share() -> None:
    grid = _grid(
        [
            ("early", 0.1, -0.05, 0.2, 0.0, 0.99),
            ("middle", 0.1, -0.01, 0.9, 0.85, 0.60),  # best rejected, but too close
            ("middle", 0.1, -0.05, 0.9, 0.40, 0.95),  # ← the pick
            ("middle", 0.1, -0.3, 0.9, -0.5, 1.00),  # separates more, worse rejected
            ("middle", 0.3, -0.05, 0.7, 0.60, 0.99),
            ("late", 0.5, -0.05, 0.8, 0.79, 0.99),  # best rejected overall, wrong head
        ]
    )
    pick, reason = select(grid, REWARD)
    assert pick is not None
    assert (pick.layer_range, pick.gamma_pos, pick.gamma_neg) == ("middle", 0.1, -0.05)
    assert pick.layers == [3, 4] and pick.win_share == 0.95 and pick.criterion == "reward"
    assert pick.chosen_reward == pytest.approx(0.9) and pick.rejected_reward == 0.40
    assert "picked" in reason and "2 of 3" in reason


def test_share_must_exceed_not_equal_the_threshold() -> None:
    grid = _grid([("middle", 0.1, -0.05, 1.0, 0.5, 0.9), ("middle", 0.1, -0.1, 1.0, 0.2, 0.91)])
    pick, _ = select(grid, REWARD)
    assert pick is not None and pick.gamma_neg == -0.1


def test_no_setting_above_the_share_picks_none_and_says_so() -> None:
    grid = _grid(
        [
            ("middle", 0.1, -0.05, 0.9, 0.5, 0.7),
            ("middle", 0.1, -0.5, 0.9, 0.1, 0.85),
            ("late", 0.1, -0.05, 0.1, 0.0, 1.0),  # passes, but its chosen reward is lower
        ]
    )
    pick, reason = select(grid, REWARD)
    assert pick is None
    assert "no setting picked" in reason and "0.850" in reason and "'middle'" in reason


def test_ties_go_to_the_gentler_push_and_the_earlier_range() -> None:
    grid = _grid(
        [
            ("early", 0.3, -0.05, 1.0, 0.5, 1.0),
            ("late", 0.1, -0.05, 1.0, 0.5, 1.0),
            ("middle", 0.1, -0.1, 1.0, 0.5, 1.0),
            ("middle", 0.1, -0.05, 1.0, 0.5, 1.0),
        ]
    )
    pick, _ = select(grid, REWARD)
    assert pick is not None
    assert (pick.layer_range, pick.gamma_pos, pick.gamma_neg) == ("middle", 0.1, -0.05)
    assert select(grid.reverse(), REWARD)[0] == pick  # row order does not matter


def test_a_setting_whose_pairs_mostly_vanish_is_not_picked() -> None:
    """Issue 23: the share and the means are over the pairs A4 keeps, and a setting that
    keeps too few is not eligible. Over all pairs, γ⁻ = −0.3 separates 9 of 10 pairs with
    the best rejected reward — but 9 of its pairs are truncated or empty, and its one kept
    pair does not separate."""
    over: list[Pair] = [("middle", 0.1, -0.3, 1.0, 0.9, "truncated")] * 8
    over += [("middle", 0.1, -0.3, 1.0, 0.9, "empty"), ("middle", 0.1, -0.3, 1.0, 1.2, None)]
    fine: list[Pair] = [("middle", 0.1, -0.05, 1.0, 0.5, None)] * 9
    fine += [("middle", 0.1, -0.05, 1.0, 0.5, "identical")]
    grid = grid_table(_scored(over + fine), REWARD)
    cells = {r["gamma_neg"]: r for r in grid.iter_rows(named=True)}
    hard, soft = cells[-0.3], cells[-0.05]
    assert (hard["n"], hard["kept"], hard["dropped_truncated"], hard["dropped_empty"]) == (
        10,
        1,
        8,
        1,
    )
    assert hard["kept_share"] == 0.1 and hard["win_share"] == 0.0  # over kept pairs: 0 of 1
    assert hard["rejected_reward"] == pytest.approx(1.2) and not hard["eligible"]
    assert (soft["kept"], soft["dropped_identical"], soft["kept_share"]) == (9, 1, 0.9)
    assert soft["win_share"] == 1.0 and soft["eligible"]
    rule = Rule("reward", min_share=0.5, min_kept_fraction=0.5)
    pick, reason = select(grid, rule)
    assert pick is not None and pick.gamma_neg == -0.05, reason
    assert (pick.n, pick.kept) == (10, 9)
    # Even with every kept-fraction allowed, its one kept pair does not separate.
    assert select(grid, Rule("reward", 0.5, 0.0))[0] == pick
    # Keeping exactly the minimum is enough; one pair fewer is not.
    assert select(grid, Rule("reward", 0.5, 0.9))[0] == pick
    pick, reason = select(grid, Rule("reward", 0.5, 0.95))
    assert pick is None and "none keeps 0.95" in reason and "0.900" in reason


def _gap_scored(gaps: dict[tuple[str, float, float], list[float]]) -> pl.DataFrame:
    """Kept pairs whose chosen answer projects ``gap`` above its rejected one."""
    return pl.DataFrame(
        [
            {
                "layer_range": r,
                "layers": RANGES[r],
                "gamma_pos": gp,
                "gamma_neg": gn,
                "id": f"i{k}",
                "chosen_reward": None,
                "rejected_reward": None,
                "chosen_projection": 0.5 + g,
                "rejected_projection": 0.5,
                "drop_reason": None,
            }
            for (r, gp, gn), values in gaps.items()
            for k, g in enumerate(values)
        ],
        schema=SCORED_SCHEMA,
    )


def _swap(scored: pl.DataFrame) -> pl.DataFrame:
    return scored.with_columns(
        chosen_projection=pl.col("rejected_projection"),
        rejected_projection=pl.col("chosen_projection"),
    )


def test_projection_gap_rule_and_a_swap_flips_it() -> None:
    scored = _gap_scored(
        {
            ("middle", 0.1, -0.05): [0.2, 0.3, 0.1, 0.2],  # ← the pick: all > 0, mean 0.2
            ("middle", 0.3, -0.05): [0.9, 0.9, 0.9, -0.1],  # larger mean, share 0.75
            ("late", 0.1, -0.05): [-0.4, -0.5, -0.6, -0.5],  # all < 0
            ("early", 0.1, -0.05): [0.1, 0.1, 0.1, 0.1],
        }
    )
    grid = grid_table(scored, GAP)
    assert grid["gap"].to_list() == pytest.approx([0.2, 0.65, -0.5, 0.1])
    assert grid["gap_share"].to_list() == [1.0, 0.75, 0.0, 1.0]
    assert grid["eligible"].to_list() == [True, False, False, True]
    assert grid["win_share"].null_count() == grid.height  # no scorer ran
    pick, reason = select(grid, GAP)
    assert pick is not None and (pick.layer_range, pick.gamma_pos) == ("middle", 0.1)
    assert pick.criterion == "projection_gap" and pick.gap == pytest.approx(0.2)
    assert pick.gap_share == 1.0 and pick.chosen_reward is None
    assert "largest mean gap 0.2000" in reason and "2 of 4" in reason
    # Chosen ↔ rejected: every gap changes sign, and the setting whose rejected answers
    # read higher is now the one picked.
    swapped = grid_table(_swap(scored), GAP)
    assert swapped["gap"].to_list() == pytest.approx([-0.2, -0.65, 0.5, -0.1])
    pick, _ = select(swapped, GAP)
    assert pick is not None and pick.layer_range == "late" and pick.gap == pytest.approx(0.5)
    # A reward rule needs rewards.
    with pytest.raises(ValueError, match="needs rewards"):
        select(grid, REWARD)


def test_projection_gap_ties_and_nothing_eligible() -> None:
    gaps = {("early", 0.3, -0.05): [0.2] * 2, ("late", 0.1, -0.1): [0.2] * 2}
    gaps |= {("middle", 0.1, -0.1): [0.2] * 2, ("middle", 0.1, -0.05): [0.2] * 2}
    grid = grid_table(_gap_scored(gaps), GAP)
    pick, _ = select(grid, GAP)
    assert pick is not None
    assert (pick.layer_range, pick.gamma_pos, pick.gamma_neg) == ("middle", 0.1, -0.05)
    assert select(grid.reverse(), GAP)[0] == pick
    pick, reason = select(grid_table(_swap(_gap_scored(gaps)), GAP), GAP)
    assert pick is None and "no setting picked" in reason and "share is 0.000" in reason


def test_grid_table_aggregates_scored_pairs() -> None:
    rows = []
    for (r, layers), gp, gn, i in itertools.product(
        RANGES.items(), [0.1, 0.3], [-0.05, -0.1], range(5)
    ):
        chosen = gp * 10 + (0.5 if r == "middle" else 0.0) + i * 0.01
        rejected = chosen - (1.0 if i < 3 else -1.0) * abs(gn) * 10
        why = "truncated" if i == 4 else None
        proj = None if why else float(i)
        rows.append((r, layers, gp, gn, f"id{i}", chosen, rejected, proj, 1.0, why))
    scored = pl.DataFrame(rows, schema=SCORED_SCHEMA, orient="row")
    grid = grid_table(scored, Rule("reward", 0.7, 0.5))
    assert grid.height == 12 and grid.schema == pl.Schema(GRID_SCHEMA)
    cell = grid.filter(
        (pl.col("layer_range") == "middle")
        & (pl.col("gamma_pos") == 0.3)
        & (pl.col("gamma_neg") == -0.1)
    ).row(0, named=True)
    assert (cell["n"], cell["kept"], cell["dropped_truncated"], cell["kept_share"]) == (
        5,
        4,
        1,
        0.8,
    )
    assert cell["win_share"] == 0.75 and cell["eligible"]  # over the 4 kept pairs
    assert cell["chosen_reward"] == pytest.approx(3.5 + 0.015)
    assert cell["rejected_reward"] == pytest.approx(3.515 - 0.5)
    assert cell["gap"] == pytest.approx(0.5) and cell["gap_share"] == 0.5  # 0, 1, 2, 3 − 1
    pick, reason = select(grid, Rule("reward", 0.7, 0.5))
    assert pick is not None and (pick.layer_range, pick.gamma_pos) == ("middle", 0.3), reason
    assert select(grid, REWARD)[0] is None  # 0.75 is not above 0.9


def test_bad_grids_and_rules() -> None:
    with pytest.raises(ValueError, match="empty"):
        select(_grid([]), REWARD)
    with pytest.raises(ValueError, match="lacks"):
        select(pl.DataFrame({"layer_range": ["a"]}), REWARD)
    with pytest.raises(ValueError, match="min_share"):
        Rule("reward", 1.0, 0.5)
    with pytest.raises(ValueError, match="min_kept_fraction"):
        Rule("reward", 0.9, 1.5)
    with pytest.raises(ValueError, match="criterion"):
        Rule("judge", 0.9, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lack"):
        grid_table(pl.DataFrame({"id": ["x"]}), REWARD)


def test_apply_command_sets_the_picked_params() -> None:
    pick = Selection("reward", "middle", [10, 11, 12], 0.3, -0.05, 16, 12, 1.0, 0.5, 0.95, 0.1, 1)
    assert apply_command(pick) == (
        "dvc exp run --set-param pairs.gamma_pos=0.3 --set-param pairs.gamma_neg=-0.05 "
        "--set-param 'pairs.layers=[10,11,12]'"
    )
    assert apply_command(None) is None


def test_grid_csv_and_per_setting() -> None:
    grid = _grid([("early", 0.1, -0.1, 1.0, 0.5, 0.95), ("late", 0.1, -0.1, 1.0, 0.5, 0.95)])
    out = grid_csv(grid)
    assert out["layers"].to_list() == ["1 2", "5 6"]
    assert out.drop("layers").equals(grid.drop("layers"))
    values = per_setting(grid)
    assert list(values) == ["early:0.1:-0.1", "late:0.1:-0.1"]
    assert values["late:0.1:-0.1"]["win_share"] == 0.95
    assert set(values["late:0.1:-0.1"]) == set(GRID_SCHEMA) - {
        "layer_range",
        "layers",
        "gamma_pos",
        "gamma_neg",
    }
