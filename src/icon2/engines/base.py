"""The generation interface every engine implements (Hugging Face and vLLM).

Stages talk to ``Backend`` only. Steering is part of the request: ``vectors`` maps a
1-based layer to per-row vectors ``[len(prompts), d]`` added at every position while that
batch is generated; an engine needs no knowledge of where the vectors came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

if TYPE_CHECKING:  # the module itself needs no transformers at import time
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    # Generate exactly max_new_tokens (benchmarks compare equal amounts of work).
    ignore_eos: bool = False


@dataclass(frozen=True)
class Generation:
    text: str
    token_count: int
    finish_reason: FinishReason


def to_generation(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], stop_ids: Sequence[int]
) -> Generation:
    """An answer's text and count cut at the first stop token; with none, the budget ran
    out ("length"; trailing pads cannot occur without a stop)."""
    stops = set(stop_ids)
    cut = next((j for j, t in enumerate(ids) if t in stops), None)
    kept = list(ids) if cut is None else list(ids[:cut])
    reason: FinishReason = "length" if cut is None else "stop"
    text = tokenizer.decode(kept, skip_special_tokens=True)
    assert isinstance(text, str)
    return Generation(text, len(kept), reason)


class Backend(Protocol):
    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: Mapping[int, torch.Tensor] | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        """Continue each rendered prompt; ``vectors[layer]`` is [len(prompts), d]."""
        ...
