"""Cost records for stages that generate through a :class:`Backend` or read with a model.

:class:`MeteredBackend` wraps any engine: each ``generate`` call adds its wall time, the
tokens it generated and the prompt tokens it read to a :class:`~icon2.core.cost.Meter`,
so a stage records its cost by wrapping the backend it already builds, in one line.
:func:`write_cost` writes a stage's records as ``{"cost": [record, ...]}``, the file the
``cost`` stage sums (kept out of the metrics files so ``dvc metrics show`` stays short).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.cost import Category, Meter, device_kind
from icon2.core.io import write_json
from icon2.core.params import Params
from icon2.engines.base import Backend, Generation, Sampling, SteeringInput
from icon2.model.loading import pick_device


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> int:
    """Tokens in ``texts`` without special tokens (what a forward pass reads)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


class MeteredBackend:
    """A :class:`Backend` that meters the backend it wraps (time, tokens out, tokens in)."""

    def __init__(self, backend: Backend, meter: Meter, tokenizer: PreTrainedTokenizerBase) -> None:
        self.backend, self.meter, self.tokenizer = backend, meter, tokenizer

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: SteeringInput | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        with self.meter:
            out = self.backend.generate(prompts, sampling, vectors=vectors, desc=desc)
        self.meter.tokens_generated += sum(g.token_count for g in out)
        self.meter.tokens_read += count_tokens(self.tokenizer, prompts)
        return out


def stage_meter(
    stage: str, method: str, category: Category, device: str, devices: int = 1
) -> Meter:
    """A meter for one piece of a stage's work on ``devices`` of ``device`` (``base.device``)."""
    kind = device_kind(str(pick_device(device)))
    return Meter(stage, method, category, device_kind=kind, device_count=devices)


def engine_devices(p: Params) -> int:
    """Devices a generating engine holds: vLLM's tensor-parallel group, else one."""
    return p.vllm.tensor_parallel_size if p.base.engine == "vllm" else 1


def write_cost(path: Path | None, meters: Sequence[Meter]) -> None:
    """Write the meters' records as ``{"cost": [...]}``; nothing when ``path`` is None."""
    if path is not None:
        write_json(path, {"cost": [m.record().to_json() for m in meters]})
