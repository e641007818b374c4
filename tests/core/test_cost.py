"""Cost records: a meter adds up its timed blocks."""

from __future__ import annotations

import time

from icon2.core.cost import Meter, device_kind


def test_meter_adds_up_timed_blocks() -> None:
    meter = Meter("pairs", "icon2", "response generation", device_kind=device_kind("cpu"))
    for _ in range(2):
        with meter:
            time.sleep(0.01)
    meter.tokens_generated += 7
    rec = meter.record()
    assert rec.device_kind == "cpu" and rec.device_count == 1
    assert 0.02 <= rec.wall_seconds < 1.0 and rec.tokens_generated == 7
