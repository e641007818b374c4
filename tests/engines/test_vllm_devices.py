"""Each process's vLLM engine sees only its own GPUs under accelerate launch."""

from __future__ import annotations

import pytest

from icon2.core.errors import ModelError
from icon2.engines import vllm


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(vllm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(vllm.torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("rank", "tp", "visible", "expected"),
    [
        ("0", 1, None, "0"),
        ("3", 1, None, "3"),
        ("1", 2, None, "2,3"),
        ("1", 1, "4,6", "6"),  # a slice of what the scheduler made visible
    ],
)
def test_each_process_gets_its_slice(
    gpus: pytest.MonkeyPatch, rank: str, tp: int, visible: str | None, expected: str
) -> None:
    gpus.setenv("LOCAL_RANK", rank)
    gpus.setenv("LOCAL_WORLD_SIZE", "4" if tp == 1 and visible is None else "2")
    if visible is not None:
        gpus.setenv("CUDA_VISIBLE_DEVICES", visible)
    vllm._rank_devices(tp)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_one_process_is_left_alone_and_too_few_gpus_is_one_error(
    gpus: pytest.MonkeyPatch,
) -> None:
    import os

    vllm._rank_devices(1)  # no LOCAL_RANK: not launched
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    gpus.setenv("LOCAL_RANK", "1")
    gpus.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ModelError, match=r"process 1 of 2 on this machine needs 3 GPU\(s\)"):
        vllm._rank_devices(3)
