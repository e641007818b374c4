"""Compute precision chosen by the hardware: ``auto`` resolves at run time.

bf16 is fast only where the device computes it natively: CUDA GPUs that support it, and
CPUs with AMX tiles or AVX512-BF16 (as torch reports them). Elsewhere, e.g. on AVX2-only
CPUs, torch emulates bf16 and a matmul runs ~30x slower than in fp32, so ``auto`` picks
fp32 there (and never fp16 on a CPU). Explicit values are kept as written.

The params keep the word ``auto`` (so DVC's params hash, and with it every cache key, is
the same on every machine); the resolved value and its reason go into each artifact's
provenance and the stage's log line. Two machine classes can therefore produce different
(equally valid) outputs for the same params: the first to run fills the cache.

``ICON2_BF16_NATIVE=1`` (or ``0``) overrides the probe, to reproduce on one machine what
``auto`` picks on the other class.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from icon2.core.params import Params

ENV_OVERRIDE = "ICON2_BF16_NATIVE"
#: Variables that change which kernels this CPU runs (torch's, oneDNN's, MKL's dispatch).
SIMULATION_ENV = (
    ENV_OVERRIDE,
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class Native:
    """Whether bf16 is computed natively on a device, and why (for logs and provenance)."""

    bf16: bool
    reason: str


@dataclass(frozen=True)
class Resolved:
    """One precision setting: what params ask for, what runs, and why."""

    key: str
    requested: str
    value: str
    reason: str

    def record(self) -> dict[str, str]:
        return {"requested": self.requested, "value": self.value, "reason": self.reason}

    def line(self) -> str:
        return f"precision: {self.key} {self.requested} -> {self.value} ({self.reason})"


def _cpu_probe() -> tuple[bool, bool, str]:
    """(AMX tiles, AVX512-BF16, torch's capability string) of this CPU."""
    import torch

    return (
        bool(torch.cpu._is_amx_tile_supported()),
        bool(torch.cpu._is_avx512_bf16_supported()),
        str(torch.backends.cpu.get_cpu_capability()),
    )


def _cuda_probe() -> tuple[bool, str]:
    """(bf16 supported, device name) of the current CUDA device."""
    import torch

    # including_emulation=False: pre-Ampere GPUs (V100, T4) run bf16 only by emulation.
    ok = torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(ok), str(torch.cuda.get_device_name())


def compute_device(device: str) -> Device:
    """The device a setting computes on: ``auto`` is CUDA when one is visible."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def native_bf16(device: Device) -> Native:
    """Whether ``device`` computes bf16 natively (``ICON2_BF16_NATIVE`` overrides)."""
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override in ("0", "1"):
        return Native(override == "1", f"{ENV_OVERRIDE}={override} (probe overridden)")
    if device == "cuda":
        ok, name = _cuda_probe()
        return Native(ok, f"cuda {name}: bf16 {'native' if ok else 'not supported'}")
    amx, avx512_bf16, capability = _cpu_probe()
    if amx or avx512_bf16:
        have = " + ".join(n for n, on in (("AMX", amx), ("AVX512-BF16", avx512_bf16)) if on)
        return Native(True, f"cpu {capability}: {have}, bf16 native")
    return Native(False, f"cpu {capability}: no AMX or AVX512-BF16, bf16 emulated")


def resolve_dtype(key: str, requested: str | None, device: Device) -> Resolved:
    """A weights/compute dtype (``bfloat16`` | ``float16`` | ``float32`` | ``auto``)."""
    if requested is None:
        return Resolved(key, "null", "null", "the stage's own model dtype (base.dtype)")
    if requested != "auto":
        return Resolved(key, requested, requested, "set in params")
    native = native_bf16(device)
    return Resolved(key, "auto", "bfloat16" if native.bf16 else "float32", native.reason)


def resolve_mixed(key: str, requested: str, device: Device) -> Resolved:
    """A training precision (``bf16`` | ``fp16`` | ``fp32`` | ``auto``)."""
    if requested != "auto":
        return Resolved(key, requested, requested, "set in params")
    native = native_bf16(device)
    return Resolved(key, "auto", "bf16" if native.bf16 else "fp32", native.reason)


def announce(resolved: Resolved) -> None:
    """The stage's log line for one resolved setting (stderr: DVC shows it as it runs)."""
    print(resolved.line(), file=sys.stderr, flush=True)


def generation_dtype(p: Params) -> Resolved:
    """The dtype the stage's engine (``base.engine``) generates in."""
    if p.base.engine == "hf":
        return resolve_dtype("hf.dtype", p.hf.dtype, compute_device(p.base.device))
    return resolve_dtype("vllm.dtype", p.vllm.dtype, compute_device("auto"))


def train_precision(p: Params) -> Resolved:
    """``train.precision`` on the device the trainer uses (a GPU when one is visible)."""
    return resolve_mixed("train.precision", p.train.precision, compute_device("auto"))


def stage_precisions(p: Params, stage_keys: tuple[str, ...]) -> list[Resolved]:
    """The precision settings a stage reads (``STAGE_PARAMS``), resolved here."""
    out = []
    if "hf.dtype" in stage_keys:
        out.append(generation_dtype(p))
    if any(k == "train" or k.startswith("train.precision") for k in stage_keys):
        out.append(train_precision(p))
    return out


def machine() -> dict[str, object]:
    """What a figure was measured on: CPU model, the flags that decide bf16 speed, cores,
    threads and any CUDA device (benchmarks print it beside every figure)."""
    import platform

    import torch

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        cpuinfo = []
    for line in cpuinfo:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "fma")
    amx, avx512_bf16, capability = _cpu_probe()
    info: dict[str, object] = {
        "cpu": model,
        "flags": [f for f in wanted if f in flags],
        "torch_capability": capability,
        "bf16_native_cpu": amx or avx512_bf16,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    # Settings that make this CPU behave as another class (e.g. AVX2 kernels, bf16 taken
    # as emulated): a figure measured under them says so.
    overrides = {k: os.environ[k] for k in SIMULATION_ENV if os.environ.get(k)}
    if overrides:
        info["simulated_by"] = overrides
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info
