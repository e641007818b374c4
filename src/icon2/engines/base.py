"""The generation interface every engine implements (Hugging Face and vLLM).

Stages talk to ``Backend`` only. Steering is part of the request, as a :class:`Steering`:
a table of vectors per 1-based layer, one row per steering group (a criterion and a γ), and
each prompt's group. The vectors are added at every position while that prompt is
generated; an engine needs no knowledge of where they came from. A request's memory is
groups × layers × d, whatever the number of prompts: an engine takes the rows of one batch
at a time. A plain mapping of per-row vectors ``[len(prompts), d]`` is accepted too
(:func:`as_steering` turns it into groups of identical rows).
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


@dataclass(frozen=True)
class Steering:
    """Steering by group: ``table[layer]`` is [groups, d], one vector per group;
    ``groups[i]`` is prompt i's group (a row of every table)."""

    table: Mapping[int, torch.Tensor]
    groups: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = {layer: t.shape[0] for layer, t in self.table.items()}
        if len(set(sizes.values())) > 1 or any(t.dim() != 2 for t in self.table.values()):
            raise ValueError(f"steering tables must be [groups, d] alike, got rows {sizes}")
        count = self.size
        bad = [g for g in self.groups if not 0 <= g < count] if self.table else []
        if bad:
            raise ValueError(f"steering groups {sorted(set(bad))[:5]} are outside 0..{count - 1}")

    @property
    def size(self) -> int:
        """How many groups (rows of each table)."""
        return next(iter(self.table.values())).shape[0] if self.table else 0

    def rows(self, idx: Sequence[int]) -> dict[int, torch.Tensor]:
        """Per-layer [len(idx), d] vectors of prompts ``idx`` (one batch)."""
        pick = torch.tensor([self.groups[i] for i in idx], dtype=torch.long)
        return {layer: t[pick] for layer, t in self.table.items()}

    def members(self) -> list[list[int]]:
        """The prompts of each group, in prompt order."""
        out: list[list[int]] = [[] for _ in range(self.size)]
        for i, g in enumerate(self.groups):
            out[g].append(i)
        return out


SteeringInput = Steering | Mapping[int, torch.Tensor]


def as_steering(vectors: SteeringInput | None, n: int) -> Steering | None:
    """``vectors`` as groups for ``n`` prompts; per-row vectors are grouped by identical rows
    (in order of first appearance). None, an empty mapping or a steering without layers is
    no steering."""
    if vectors is None or not (vectors.table if isinstance(vectors, Steering) else vectors):
        return None
    if isinstance(vectors, Steering):
        if len(vectors.groups) != n:
            raise ValueError(f"steering for {len(vectors.groups)} prompts, {n} prompts given")
        return vectors
    layers = sorted(vectors)
    rows = {layer: vectors[layer].detach() for layer in layers}
    for layer, v in rows.items():
        if v.dim() != 2 or v.shape[0] != n:
            raise ValueError(f"layer {layer}: vectors of shape {tuple(v.shape)}, {n} prompts")
    keys: dict[bytes, int] = {}
    groups: list[int] = []
    firsts: list[int] = []
    for i in range(n):
        # float64 holds every 16- and 32-bit value exactly (numpy has no bfloat16).
        key = b"".join(rows[layer][i].double().cpu().numpy().tobytes() for layer in layers)
        if key not in keys:
            keys[key] = len(firsts)
            firsts.append(i)
        groups.append(keys[key])
    pick = torch.tensor(firsts, dtype=torch.long)
    return Steering({layer: rows[layer][pick] for layer in layers}, tuple(groups))


class Backend(Protocol):
    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: SteeringInput | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        """Continue each rendered prompt, steered by ``vectors`` (see the module)."""
        ...
