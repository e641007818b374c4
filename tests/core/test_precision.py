"""Tests for icon2.core.precision: ``auto`` picks bf16 only where it is native."""

from __future__ import annotations

from pathlib import Path

import pytest

from icon2.core import precision
from icon2.core.params import load_params
from icon2.core.precision import (
    generation_dtype,
    native_bf16,
    resolve_dtype,
    resolve_mixed,
    stage_precisions,
)
from icon2.core.provenance import provenance

ROOT = Path(__file__).resolve().parents[2]


def _cpu(monkeypatch: pytest.MonkeyPatch, *, amx: bool, avx512_bf16: bool, cap: str) -> None:
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(precision, "_cpu_probe", lambda: (amx, avx512_bf16, cap))


def test_avx2_only_cpu_resolves_auto_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, amx=False, avx512_bf16=False, cap="AVX2")
    assert not native_bf16("cpu").bf16
    got = resolve_dtype("hf.dtype", "auto", "cpu")
    assert (got.value, got.requested) == ("float32", "auto")
    assert "AVX2" in got.reason and "emulated" in got.reason
    assert resolve_mixed("train.precision", "auto", "cpu").value == "fp32"
    # AVX-512 without its BF16 extension still emulates bf16.
    _cpu(monkeypatch, amx=False, avx512_bf16=False, cap="AVX512")
    assert resolve_dtype("vllm.dtype", "auto", "cpu").value == "float32"


@pytest.mark.parametrize(("amx", "avx512_bf16"), [(True, False), (False, True), (True, True)])
def test_amx_or_avx512_bf16_cpu_resolves_auto_to_bf16(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool
) -> None:
    _cpu(monkeypatch, amx=amx, avx512_bf16=avx512_bf16, cap="AVX512")
    got = resolve_dtype("hf.dtype", "auto", "cpu")
    assert got.value == "bfloat16" and "native" in got.reason
    assert resolve_mixed("train.precision", "auto", "cpu").value == "bf16"


def test_cuda_follows_the_device_and_never_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(precision, "_cuda_probe", lambda: (True, "H100"))
    assert resolve_dtype("vllm.dtype", "auto", "cuda").value == "bfloat16"
    monkeypatch.setattr(precision, "_cuda_probe", lambda: (False, "V100"))
    assert resolve_dtype("vllm.dtype", "auto", "cuda").value == "float32"
    assert resolve_mixed("train.precision", "auto", "cuda").value == "fp32"


def test_explicit_values_are_kept_whatever_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, amx=False, avx512_bf16=False, cap="AVX2")
    assert resolve_dtype("hf.dtype", "bfloat16", "cpu").value == "bfloat16"
    assert resolve_dtype("hf.dtype", None, "cpu").value == "null"
    _cpu(monkeypatch, amx=True, avx512_bf16=True, cap="AVX512")
    assert resolve_mixed("train.precision", "fp32", "cpu").value == "fp32"
    assert resolve_dtype("hf.dtype", "float32", "cpu").reason == "set in params"


def test_env_override_beats_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "_cpu_probe", lambda: (False, False, "AVX2"))
    monkeypatch.setenv(precision.ENV_OVERRIDE, "1")
    assert resolve_dtype("hf.dtype", "auto", "cpu").value == "bfloat16"
    monkeypatch.setattr(precision, "_cpu_probe", lambda: (True, True, "AVX512"))
    monkeypatch.setenv(precision.ENV_OVERRIDE, "0")
    got = resolve_dtype("hf.dtype", "auto", "cpu")
    assert got.value == "float32" and precision.ENV_OVERRIDE in got.reason


def test_defaults_are_auto_and_resolve_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    p = load_params(ROOT / "params.yaml")
    assert (p.hf.dtype, p.vllm.dtype, p.train.precision) == ("auto", "auto", "auto")
    _cpu(monkeypatch, amx=False, avx512_bf16=False, cap="AVX2")
    assert generation_dtype(p).key == "hf.dtype"
    vllm = p.model_copy(update={"base": p.base.model_copy(update={"engine": "vllm"})})
    assert generation_dtype(vllm).key == "vllm.dtype"
    keys = [r.key for r in stage_precisions(p, ("base.engine", "hf.dtype", "vllm.dtype"))]
    assert keys == ["hf.dtype"]
    assert [r.key for r in stage_precisions(p, ("base.seed", "train"))] == ["train.precision"]
    assert stage_precisions(p, ("filter",)) == []


def test_provenance_records_what_auto_resolved_to(monkeypatch: pytest.MonkeyPatch) -> None:
    p = load_params(ROOT / "params.yaml")
    _cpu(monkeypatch, amx=False, avx512_bf16=False, cap="AVX2")
    slow = provenance("pairs", p, {})
    assert slow["params"]["hf.dtype"] == "auto"  # the params (and DVC's hash) stay "auto"
    assert slow["precision"]["hf.dtype"]["value"] == "float32"
    _cpu(monkeypatch, amx=True, avx512_bf16=True, cap="AVX512")
    fast = provenance("train", p, {})
    assert fast["precision"] == {
        "train.precision": {
            "requested": "auto",
            "value": "bf16",
            "reason": "cpu AVX512: AMX + AVX512-BF16, bf16 native",
        }
    }
    assert provenance("filter", p, {})["precision"] == {}
