from __future__ import annotations

import itertools

import polars as pl
import pytest

from icon2.steps.selection import (
    GRID_SCHEMA,
    SCORED_SCHEMA,
    Selection,
    apply_command,
    grid_csv,
    grid_table,
    select,
)

RANGES = {"early": [1, 2], "middle": [3, 4], "late": [5, 6]}


def _grid(rows: list[tuple[str, float, float, float, float, float]]) -> pl.DataFrame:
    """(range, γ⁺, γ⁻, chosen, rejected, share) → a grid table with n = 10 per cell."""
    return pl.DataFrame(
        [
            {
                "layer_range": r,
                "layers": RANGES[r],
                "gamma_pos": gp,
                "gamma_neg": gn,
                "n": 10,
                "chosen_reward": c,
                "rejected_reward": rj,
                "win_share": s,
                "kept_share": 1.0,
            }
            for r, gp, gn, c, rj, s in rows
        ],
        schema=GRID_SCHEMA,
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
    pick, reason = select(grid)
    assert pick is not None
    assert (pick.layer_range, pick.gamma_pos, pick.gamma_neg) == ("middle", 0.1, -0.05)
    assert pick.layers == [3, 4] and pick.win_share == 0.95
    assert pick.chosen_reward == pytest.approx(0.9) and pick.rejected_reward == 0.40
    assert "picked" in reason and "2 of 3" in reason


def test_share_must_exceed_not_equal_the_threshold() -> None:
    grid = _grid([("middle", 0.1, -0.05, 1.0, 0.5, 0.9), ("middle", 0.1, -0.1, 1.0, 0.2, 0.91)])
    pick, _ = select(grid)
    assert pick is not None and pick.gamma_neg == -0.1


def test_no_setting_above_the_share_picks_none_and_says_so() -> None:
    grid = _grid(
        [
            ("middle", 0.1, -0.05, 0.9, 0.5, 0.7),
            ("middle", 0.1, -0.5, 0.9, 0.1, 0.85),
            ("late", 0.1, -0.05, 0.1, 0.0, 1.0),  # passes, but its chosen reward is lower
        ]
    )
    pick, reason = select(grid)
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
    pick, _ = select(grid)
    assert pick is not None
    assert (pick.layer_range, pick.gamma_pos, pick.gamma_neg) == ("middle", 0.1, -0.05)
    assert select(grid.reverse())[0] == pick  # row order does not matter


def test_grid_table_aggregates_scored_pairs() -> None:
    rows = []
    for (r, layers), gp, gn, i in itertools.product(
        RANGES.items(), [0.1, 0.3], [-0.05, -0.1], range(4)
    ):
        chosen = gp * 10 + (0.5 if r == "middle" else 0.0) + i * 0.01
        rejected = chosen - (1.0 if i < 3 else -1.0) * abs(gn) * 10
        rows.append((r, layers, gp, gn, f"id{i}", chosen, rejected, i != 0))
    scored = pl.DataFrame(rows, schema=SCORED_SCHEMA, orient="row")
    grid = grid_table(scored)
    assert grid.height == 12 and grid.schema == pl.Schema(GRID_SCHEMA)
    cell = grid.filter(
        (pl.col("layer_range") == "middle")
        & (pl.col("gamma_pos") == 0.3)
        & (pl.col("gamma_neg") == -0.1)
    ).row(0, named=True)
    assert cell["n"] == 4 and cell["win_share"] == 0.75 and cell["kept_share"] == 0.75
    assert cell["chosen_reward"] == pytest.approx(3.5 + 0.015)
    assert cell["rejected_reward"] == pytest.approx(3.515 - 0.5)
    pick, reason = select(grid, min_share=0.7)
    assert pick is not None and (pick.layer_range, pick.gamma_pos) == ("middle", 0.3), reason
    assert select(grid)[0] is None  # 0.75 is not above 0.9


def test_bad_grids() -> None:
    with pytest.raises(ValueError, match="empty"):
        select(_grid([]))
    with pytest.raises(ValueError, match="lacks"):
        select(pl.DataFrame({"layer_range": ["a"]}))
    with pytest.raises(ValueError, match="min_share"):
        select(_grid([("early", 0.1, -0.1, 1, 0, 1)]), min_share=1.0)
    with pytest.raises(ValueError, match="lack"):
        grid_table(pl.DataFrame({"id": ["x"]}))


def test_apply_command_sets_the_picked_params() -> None:
    pick = Selection("middle", [10, 11, 12], 0.3, -0.05, 1.0, 0.5, 0.95, 16)
    assert apply_command(pick) == (
        "dvc exp run --set-param pairs.gamma_pos=0.3 --set-param pairs.gamma_neg=-0.05 "
        "--set-param 'pairs.layers=[10,11,12]'"
    )
    assert apply_command(None) is None


def test_grid_csv_joins_the_layers() -> None:
    grid = _grid([("early", 0.1, -0.1, 1.0, 0.5, 0.95), ("late", 0.1, -0.1, 1.0, 0.5, 0.95)])
    out = grid_csv(grid)
    assert out["layers"].to_list() == ["1 2", "5 6"]
    assert out.drop("layers").equals(grid.drop("layers"))
