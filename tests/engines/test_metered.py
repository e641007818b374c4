"""A metered stage records the devices its engine holds."""

from __future__ import annotations

from typing import Any

from tests.conftest import REPO


def test_a_generating_stage_counts_the_devices_its_engine_holds(tmp_path: Any) -> None:
    from icon2.core.params import load_params
    from icon2.engines.metered import engine_devices, stage_meter

    params = load_params(REPO / "params.yaml")
    assert engine_devices(params) == 1  # the HF engine generates on one device
    vllm = params.model_copy(
        update={
            "base": params.base.model_copy(update={"engine": "vllm"}),
            "vllm": params.vllm.model_copy(update={"tensor_parallel_size": 4}),
        }
    )
    assert engine_devices(vllm) == 4
    meter = stage_meter("pairs", "icon2", "response generation", "cpu", engine_devices(vllm))
    meter.wall_seconds = 900.0
    assert meter.record().device_count == 4 and meter.record().device_hours == 1.0
