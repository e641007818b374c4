from __future__ import annotations

import pytest

from icon2.core.cost import CostRecord, records_frame
from icon2.evaluate.cost import cost_ratio, cost_table

RECORDS = [
    CostRecord("synthesize", "shared", "response generation", 3600.0, "cpu", 1, 500, 0),
    CostRecord("directions", "icon2", "preference annotation", 720.0, "cpu", 1, 0, 1000),
    CostRecord("score", "icon2", "preference annotation", 1800.0, "H100", 2, 0, 4000),
    CostRecord("pairs", "icon2", "response generation", 5400.0, "H100", 2, 800, 300),
    CostRecord("sample", "sampling_ranking", "response generation", 9000.0, "H100", 2, 2000, 750),
    CostRecord("rank", "sampling_ranking", "preference annotation", 1800.0, "H100", 1, 0, 6000),
]


def test_table_matches_hand_sums() -> None:
    table = cost_table(records_frame(RECORDS), price_per_device_hour=2.5)
    rows = {r["method"]: r for r in table.iter_rows(named=True)}
    assert list(rows) == ["icon2", "sampling_ranking", "shared"]
    icon2 = rows["icon2"]
    # annotation: 720 s × 1 + 1800 s × 2 = 4320 s = 1.2 device-hours; generation: 5400 × 2 = 3 h
    assert icon2["annotation_hours"] == pytest.approx(1.2)
    assert icon2["generation_hours"] == pytest.approx(3.0)
    assert icon2["total_hours"] == pytest.approx(4.2)
    assert icon2["total_money"] == pytest.approx(10.5)
    assert icon2["annotation_money"] == pytest.approx(3.0)
    assert icon2["wall_seconds"] == pytest.approx(720 + 1800 + 5400)
    assert (icon2["tokens_generated"], icon2["tokens_read"]) == (800, 5300)
    sr = rows["sampling_ranking"]
    assert (sr["generation_hours"], sr["annotation_hours"]) == pytest.approx((5.0, 0.5))
    assert rows["shared"]["generation_hours"] == pytest.approx(1.0)
    assert rows["shared"]["annotation_hours"] == 0.0
    # per-record device-hours add up to the table
    assert sum(r.device_hours for r in RECORDS) == pytest.approx(table["total_hours"].sum())


def test_ratio_icon2_over_sampling_ranking() -> None:
    table = cost_table(records_frame(RECORDS), price_per_device_hour=1.0)
    ratio = cost_ratio(table)
    assert ratio["generation"] == pytest.approx(3.0 / 5.0)
    assert ratio["annotation"] == pytest.approx(1.2 / 0.5)
    assert ratio["total"] == pytest.approx(4.2 / 5.5)
    # In tokens generated + read: icon2 generation 800 + 300, annotation 1000 + 4000;
    # sampling_ranking generation 2000 + 750, annotation 6000 (swapping the two fails).
    assert ratio["tokens_generation"] == pytest.approx(1100 / 2750)
    assert ratio["tokens_annotation"] == pytest.approx(5000 / 6000)
    assert ratio["tokens_total"] == pytest.approx(6100 / 8750)
    rows = {r["method"]: r for r in table.iter_rows(named=True)}
    assert (rows["icon2"]["generation_tokens"], rows["icon2"]["total_tokens"]) == (1100, 6100)
    reverse = cost_ratio(table, "sampling_ranking", "icon2")
    assert reverse["tokens_total"] == pytest.approx(8750 / 6100)
    no_annotation = cost_table(records_frame(RECORDS[:4] + RECORDS[4:5]), price_per_device_hour=1)
    assert cost_ratio(no_annotation)["annotation"] is None


def test_bad_input() -> None:
    table = cost_table(records_frame(RECORDS), price_per_device_hour=1.0)
    with pytest.raises(ValueError, match=r"'self_refining'.*icon2"):
        cost_ratio(table, denominator="self_refining")
    with pytest.raises(ValueError, match="category"):
        CostRecord("x", "icon2", "training", 1.0, "cpu", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device_count"):
        CostRecord("x", "icon2", "response generation", 1.0, "cpu", 0)
    with pytest.raises(ValueError, match="wall_seconds"):
        CostRecord("x", "icon2", "response generation", float("nan"), "cpu", 1)
    with pytest.raises(ValueError, match="price"):
        cost_table(records_frame(RECORDS), price_per_device_hour=-1)
    with pytest.raises(ValueError, match="keys"):
        CostRecord.from_json({"stage": "x"})


def test_json_round_trip() -> None:
    assert all(CostRecord.from_json(r.to_json()) == r for r in RECORDS)
