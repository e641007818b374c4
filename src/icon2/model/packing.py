"""Preference batches without padding: each pair's rows packed, their common prefix once.

A preference batch holds ``[chosen_1 … chosen_B, rejected_1 … rejected_B]``, each row the
prompt followed by an answer, right-padded to the longest row. The backbone then computes
every padding position (on the default pairs 1.4× the real tokens at 2 pairs a batch) and
the prompt twice per pair (the system turn and the instruction are a third of a row). On a
CPU, where a forward costs in proportion to the positions it computes, both are wall time.

:func:`pack_prefixes` makes the backbone of a model run such a batch as one sequence:
rows ``i`` and ``i + B`` share their longest common prefix (the prompt, and any first
answer tokens the two answers have in common), then each row's remainder follows, with a
4-D attention mask that lets a remainder see its prefix and itself, causally, and nothing
else, and the rows' own position ids. By causality the hidden state of a prefix position
depends only on the prefix, so every real position gets the state it gets in the padded
batch (to float reordering); the states are put back into the padded ``[rows, T, d]``
layout (zeros at padding, which every loss masks) so that TRL's fused LM head and the SPA
and DRO losses read them unchanged. Rows that are not paired this way (an odd row count)
are packed without sharing, and are still not padded.

Only batches the backbone could take as they are go through the packing: ``input_ids`` and
a right-padded 2-D ``attention_mask``, no cache, no position ids or embeddings of the
caller's, and SDPA attention (the packed mask is SDPA's boolean one); anything else (e.g.
generation's left-padded, cached decoding) runs the backbone's own forward.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

_INSTALLED = "_icon2_packed_prefixes"


@dataclass(frozen=True)
class Packing:
    """Where each real position of a right-padded batch sits in one packed sequence.

    Attributes:
        input_ids: [N] the packed tokens.
        position_ids: [N] each packed token's position in its row.
        mask: [N, N] True where packed query q may attend key k.
        source: [M] packed index of each real position, rows in order (M = Σ lengths).
        dest: [M] flat index ``row * T + t`` of that real position in the padded batch.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor
    dest: torch.Tensor

    @property
    def packed_tokens(self) -> int:
        """Positions the backbone computes for the packed batch."""
        return int(self.input_ids.numel())


def right_padded_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    """Each row's length if ``attention_mask`` [rows, T] is ones then zeros in every row,
    else None (left padding, holes)."""
    if attention_mask.dim() != 2:
        return None
    lengths = attention_mask.sum(dim=1)
    width = attention_mask.shape[1]
    expected = torch.arange(width, device=attention_mask.device)[None, :] < lengths[:, None]
    if not torch.equal(attention_mask.bool(), expected) or bool((lengths == 0).any()):
        return None
    return [int(n) for n in lengths.tolist()]


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D token tensors."""
    n = min(a.numel(), b.numel())
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0, 0]) if differs.numel() else n


@dataclass
class _Builder:
    width: int
    ids: list[torch.Tensor] = field(default_factory=list)
    positions: list[torch.Tensor] = field(default_factory=list)
    # Per packed token: the group it belongs to (a pair, or a lone row), and its segment
    # (a shared prefix or one row's remainder); a key is visible to a query of the same
    # group if it is in the query's own segment or in the group's prefix.
    group: list[torch.Tensor] = field(default_factory=list)
    segment: list[torch.Tensor] = field(default_factory=list)
    is_prefix: list[torch.Tensor] = field(default_factory=list)
    source: list[torch.Tensor] = field(default_factory=list)
    dest: list[torch.Tensor] = field(default_factory=list)
    size: int = 0
    segments: int = 0

    def add(self, ids: torch.Tensor, start: int, group: int, prefix: bool) -> int:
        """Appends tokens at row positions ``start, start + 1, …``; their first packed index."""
        n = ids.numel()
        first = self.size
        self.ids.append(ids)
        self.positions.append(torch.arange(start, start + n))
        self.group.append(torch.full((n,), group))
        self.segment.append(torch.full((n,), self.segments))
        self.is_prefix.append(torch.full((n,), prefix))
        self.segments += 1
        self.size += n
        return first

    def place(self, row: int, prefix_at: int, prefix_len: int, rest_at: int, length: int) -> None:
        """Row ``row``'s positions: ``[0, prefix_len)`` from the prefix, the rest after it."""
        src = torch.cat(
            [
                torch.arange(prefix_at, prefix_at + prefix_len),
                torch.arange(rest_at, rest_at + length - prefix_len),
            ]
        )
        self.source.append(src)
        self.dest.append(row * self.width + torch.arange(length))

    def build(self, device: torch.device) -> Packing:
        group, segment = torch.cat(self.group), torch.cat(self.segment)
        is_prefix = torch.cat(self.is_prefix)
        order = torch.arange(self.size)
        mask = (
            (order[None, :] <= order[:, None])
            & (group[None, :] == group[:, None])
            & ((segment[None, :] == segment[:, None]) | is_prefix[None, :])
        )
        return Packing(
            input_ids=torch.cat(self.ids).to(device),
            position_ids=torch.cat(self.positions).to(device),
            mask=mask.to(device),
            source=torch.cat(self.source).to(device),
            dest=torch.cat(self.dest).to(device),
        )


def plan_packing(input_ids: torch.Tensor, lengths: list[int]) -> Packing:
    """The packed sequence for a right-padded batch whose row ``r`` has ``lengths[r]`` tokens.

    With an even row count, rows ``i`` and ``i + rows/2`` (a pair's chosen and rejected)
    share their common prefix; with an odd one every row stands alone.
    """
    rows, width = input_ids.shape
    ids = input_ids.detach().cpu()
    builder = _Builder(width=width)
    half = rows // 2 if rows % 2 == 0 else 0
    for i in range(half):
        j = i + half
        a, b = ids[i, : lengths[i]], ids[j, : lengths[j]]
        shared = common_prefix(a, b)
        at = builder.add(a[:shared], 0, group=i, prefix=True)
        for row, seq in ((i, a), (j, b)):
            rest_at = builder.add(seq[shared:], shared, group=i, prefix=False)
            builder.place(row, at, shared, rest_at, seq.numel())
    for row in range(2 * half, rows):
        seq = ids[row, : lengths[row]]
        at = builder.add(seq, 0, group=rows + row, prefix=False)
        builder.place(row, at, 0, at, seq.numel())
    return builder.build(input_ids.device)


_NOT_PACKABLE = (
    "past_key_values",
    "inputs_embeds",
    "position_ids",
    "cache_position",
    "output_attentions",
    "output_hidden_states",
)


def _packable(backbone: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if args or kwargs.get("input_ids") is None or kwargs.get("attention_mask") is None:
        return False
    if kwargs.get("use_cache") or any(kwargs.get(k) is not None for k in _NOT_PACKABLE):
        return False
    config = getattr(backbone, "config", None)
    return getattr(config, "_attn_implementation", None) == "sdpa"


def _packed_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(self).forward
    if not _packable(self, args, kwargs):
        return forward(self, *args, **kwargs)
    input_ids: torch.Tensor = kwargs["input_ids"]
    lengths = right_padded_lengths(kwargs["attention_mask"])
    if lengths is None:
        return forward(self, *args, **kwargs)
    plan = plan_packing(input_ids, lengths)
    stats: PackingStats = getattr(self, _INSTALLED)
    stats.padded_tokens += int(input_ids.numel())
    stats.packed_tokens += plan.packed_tokens
    out = forward(
        self,
        **{
            **kwargs,
            "input_ids": plan.input_ids[None, :],
            "position_ids": plan.position_ids[None, :],
            "attention_mask": plan.mask[None, None, :, :],
        },
    )
    packed = out.last_hidden_state[0]
    rows, width = input_ids.shape
    hidden = packed.new_zeros(rows * width, packed.shape[-1])
    hidden = hidden.index_copy(0, plan.dest, packed.index_select(0, plan.source))
    out.last_hidden_state = hidden.view(rows, width, -1)
    return out


@dataclass
class PackingStats:
    """Positions a packed backbone was given (padded) and computed (packed), summed."""

    padded_tokens: int = 0
    packed_tokens: int = 0

    @property
    def computed_fraction(self) -> float | None:
        """Packed over padded positions; None before any packed batch."""
        return self.packed_tokens / self.padded_tokens if self.padded_tokens else None


def pack_prefixes(model: PreTrainedModel) -> PackingStats | None:
    """Make ``model``'s backbone pack right-padded, uncached batches (see the module doc).

    Returns:
        The counters the backbone adds to (the same object if already installed), or None
        if the model does not use SDPA attention or has no separate backbone.
    """
    backbone = model.base_model
    if backbone is model or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return None
    stats: PackingStats | None = getattr(backbone, _INSTALLED, None)
    if stats is None:
        stats = PackingStats()
        setattr(backbone, _INSTALLED, stats)
        # A bound method, not a closure over this module: a deep copy rebinds it to the copy.
        backbone.forward = types.MethodType(_packed_forward, backbone)
    return stats
