"""Cost records (ICON² §4.5, METHOD A8): what each piece of a stage's work cost.

Every stage that generates or annotates writes one :class:`CostRecord` per piece of work:
wall seconds, the device kind and count it held, tokens generated and tokens read (prompt
tokens through a forward pass), the method it served and its category:

* "response generation": sampling answers (ICON²'s two steered passes, Sampling-Ranking's
  five samples, Self-Refine's samples and refinement, …);
* "preference annotation": what turns answers or instructions into preferences (ICON²:
  direction extraction + consistency scoring; baselines: reward-model or judge scoring).

Device-hours = wall seconds × device count / 3600: a stage that holds 8 GPUs for an hour
costs 8 device-hours. On CPU the "device" is the machine (count 1). Work every method
shares — synthesising the instructions they all start from — is recorded under the method
``shared`` and kept out of the per-method ratio. :mod:`icon2.evaluate.cost` sums the
records into Table 4.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Literal

import polars as pl

Category = Literal["response generation", "preference annotation"]
CATEGORIES: tuple[Category, ...] = ("response generation", "preference annotation")
SHARED = "shared"

RECORD_SCHEMA: dict[str, pl.DataType] = {
    "stage": pl.String(),
    "method": pl.String(),
    "category": pl.String(),
    "wall_seconds": pl.Float64(),
    "device_kind": pl.String(),
    "device_count": pl.Int64(),
    "tokens_generated": pl.Int64(),
    "tokens_read": pl.Int64(),
}


@dataclass(frozen=True)
class CostRecord:
    stage: str
    method: str
    category: Category
    wall_seconds: float
    device_kind: str  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
    device_count: int
    tokens_generated: int = 0
    tokens_read: int = 0

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(
                f"{self.stage}: category must be one of {CATEGORIES}, got {self.category!r}"
            )
        if not self.wall_seconds >= 0:  # also rejects NaN
            raise ValueError(f"{self.stage}: wall_seconds must be >= 0, got {self.wall_seconds}")
        if self.device_count < 1:
            raise ValueError(f"{self.stage}: device_count must be >= 1, got {self.device_count}")
        if self.tokens_generated < 0 or self.tokens_read < 0:
            raise ValueError(f"{self.stage}: token counts must be >= 0")

    @property
    def device_hours(self) -> float:
        return self.wall_seconds * self.device_count / 3600.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CostRecord:
        """Build and check a record from a stage's JSON; unknown or missing keys are errors."""
        fields = set(RECORD_SCHEMA)
        if set(obj) != fields:
            raise ValueError(f"cost record keys {sorted(obj)} differ from {sorted(fields)}")
        return cls(**obj)


class Meter:
    """Times one piece of a stage's work; the stage adds token counts as it goes.

    ``with meter: ...`` adds the elapsed wall time (several ``with`` blocks add up), and
    :meth:`record` turns the totals into a :class:`CostRecord`.
    """

    def __init__(
        self,
        stage: str,
        method: str,
        category: Category,
        *,
        device_kind: str,
        device_count: int = 1,
    ) -> None:
        self.stage, self.method, self.category = stage, method, category
        self.device_kind, self.device_count = device_kind, device_count
        self.wall_seconds = 0.0
        self.tokens_generated = 0
        self.tokens_read = 0
        self._start: float | None = None

    def __enter__(self) -> Meter:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._start is not None
        self.wall_seconds += time.perf_counter() - self._start
        self._start = None

    def record(self) -> CostRecord:
        return CostRecord(
            stage=self.stage,
            method=self.method,
            category=self.category,
            wall_seconds=round(self.wall_seconds, 3),
            device_kind=self.device_kind,
            device_count=self.device_count,
            tokens_generated=self.tokens_generated,
            tokens_read=self.tokens_read,
        )


def device_kind(device: str) -> str:
    """A readable name of the accelerator behind a torch device string ("cpu" for CPU)."""
    import torch  # only here: the rest of this module needs no torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(dev))
    return dev.type


def records_frame(records: Sequence[CostRecord]) -> pl.DataFrame:
    """Records as a table with ``RECORD_SCHEMA`` (one row per record)."""
    return pl.DataFrame([r.to_json() for r in records], schema=RECORD_SCHEMA)
