"""Preference batches without padding: each pair's rows packed, their common prefix once.

A preference batch holds ``[chosen_1 … chosen_B, rejected_1 … rejected_B]``, each row the
prompt followed by an answer, right-padded to the longest row. The backbone then computes
every padding position (on the default pairs 1.4× the real tokens at 2 pairs a batch) and
the prompt twice per pair (the system turn and the instruction are a third of a row). On a
CPU, where a forward costs in proportion to the positions it computes, both are wall time.

:func:`pack_prefixes` makes the backbone of a model run such a batch packed: rows ``i``
and ``i + B`` become one row that holds their longest common prefix once (the prompt, and
any first answer tokens the two answers have in common), then each row's remainder, with a
4-D attention mask that lets a remainder see its prefix and itself, causally, and nothing
else, and the rows' own position ids. Pairs fill packed rows of up to 1,024 positions
(:data:`PACKED_WIDTH`; a longer pair gets a row of its own length), so a batch becomes one
or a few rows with little padding. Attention does not run the mask itself: the packed
backbone passes each row's calls (one causal SDPA call per answer, over its prefix and
itself) down to :func:`icon2.model.packed_attention.packed_sdpa`, which computes what the
mask allows without the blocks it forbids; the mask stays for any attention that does not
take the calls. By
causality the hidden state of a prefix position depends only on the prefix, so every real
position gets the state it gets in the padded batch (to float reordering); the states go
back into the padded ``[rows, T, d]`` layout (zeros at padding, which every loss masks), so
TRL's fused LM head and the SPA and DRO losses read them unchanged. Rows that are not
paired this way (an odd row count) are packed as groups of one, without their padding.

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

from icon2.model import packed_attention
from icon2.model.packed_attention import Call, RowCalls, group_calls

_INSTALLED = "_icon2_packed_prefixes"


@dataclass(frozen=True)
class Packing:
    """Where each real position of a right-padded batch sits in the packed batch: one row
    per pair (its shared prefix, then each answer's remainder), right-padded to the longest.

    Attributes:
        input_ids: [G, L] the packed rows (G pairs, or lone rows; padding repeats a token).
        position_ids: [G, L] each packed token's position in its original row.
        mask: [G, L, L] True where query q of a packed row may attend its key k (a padding
            query attends only itself, so that no softmax row is empty).
        source: [M] flat index ``g * L + j`` of each real position, rows in order (M = Σ
            lengths).
        dest: [M] flat index ``row * T + t`` of that real position in the padded batch.
        tokens: Real (unpadded) positions of the packed rows.
        calls: Per packed row, its causal attention calls (one per answer; see
            :mod:`icon2.model.packed_attention`), which give what ``mask`` allows.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor
    dest: torch.Tensor
    tokens: int
    calls: tuple[RowCalls, ...] = ()

    @property
    def packed_tokens(self) -> int:
        """Positions the backbone computes for the packed batch, its padding included."""
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


#: Length of a packed row when no pair is longer. Pairs share rows up to this length (few
#: padding positions), and no row grows past it (the masked attention of a row costs its
#: length squared; at 1,024 that is ~30 % of a SmolLM2 layer's work per position).
PACKED_WIDTH = 1024


@dataclass
class _Row:
    """One packed row: groups (a pair, or a lone row) one after another; a group is its
    shared prefix, then each member's remainder. A key is visible to a query if it comes no
    later, belongs to the same group and lies in the query's own segment or in the group's
    prefix."""

    ids: list[torch.Tensor] = field(default_factory=list)
    positions: list[torch.Tensor] = field(default_factory=list)
    group: list[torch.Tensor] = field(default_factory=list)
    segment: list[torch.Tensor] = field(default_factory=list)
    is_prefix: list[torch.Tensor] = field(default_factory=list)
    members: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (row, local idx)
    calls: list[Call] = field(default_factory=list)
    size: int = 0

    def add(self, ids: torch.Tensor, start: int, group: int, prefix: bool) -> int:
        """Appends tokens at row positions ``start, start + 1, …``; their first local index."""
        n = ids.numel()
        first = self.size
        self.ids.append(ids)
        self.positions.append(torch.arange(start, start + n))
        self.group.append(torch.full((n,), group))
        self.segment.append(torch.full((n,), len(self.segment)))
        self.is_prefix.append(torch.full((n,), prefix))
        self.size += n
        return first

    def add_group(self, group: int, shared: int, rows: list[tuple[int, torch.Tensor]]) -> None:
        """Adds batch rows that share their first ``shared`` tokens: the prefix once, then
        each row's remainder; records where each batch row's positions are."""
        at = self.add(rows[0][1][:shared], 0, group, prefix=True)
        remainders = []
        for row, seq in rows:
            rest_at = self.add(seq[shared:], shared, group, prefix=False)
            remainders.append((rest_at, seq.numel() - shared))
            local = torch.cat(
                [
                    torch.arange(at, at + shared),
                    torch.arange(rest_at, rest_at + seq.numel() - shared),
                ]
            )
            self.members.append((row, local))
        self.calls += group_calls(at, shared, remainders)

    def padded(self, parts: list[torch.Tensor], width: int) -> torch.Tensor:
        flat = torch.cat(parts)
        return torch.cat([flat, flat.new_zeros(width - flat.numel())])

    def mask(self, width: int) -> torch.Tensor:
        group, segment = torch.cat(self.group), torch.cat(self.segment)
        is_prefix = torch.cat(self.is_prefix)
        order = torch.arange(self.size)
        real = (
            (order[None, :] <= order[:, None])
            & (group[None, :] == group[:, None])
            & ((segment[None, :] == segment[:, None]) | is_prefix[None, :])
        )
        out = torch.eye(width, dtype=torch.bool)  # padding queries see only themselves
        out[: self.size, : self.size] = real
        return out


def plan_packing(input_ids: torch.Tensor, lengths: list[int], width: int = PACKED_WIDTH) -> Packing:
    """The packed batch for a right-padded batch whose row ``r`` has ``lengths[r]`` tokens.

    With an even row count, rows ``i`` and ``i + rows/2`` (a pair's chosen and rejected)
    form a group that holds their common prefix once; with an odd one every row is a group
    of its own (unpadded only). Groups fill packed rows of ``width`` positions (or the
    longest group's), longest first, each into the first row with room.
    """
    rows, padded_width = input_ids.shape
    ids = input_ids.detach().cpu()
    groups: list[tuple[int, list[tuple[int, torch.Tensor]]]] = []
    half = rows // 2 if rows % 2 == 0 else 0
    for i in range(half):
        a, b = ids[i, : lengths[i]], ids[i + half, : lengths[i + half]]
        groups.append((common_prefix(a, b), [(i, a), (i + half, b)]))
    groups += [(0, [(r, ids[r, : lengths[r]])]) for r in range(2 * half, rows)]
    sizes = [shared + sum(seq.numel() - shared for _, seq in members) for shared, members in groups]
    capacity = max(width, *sizes)
    packed: list[_Row] = []
    for g in sorted(range(len(groups)), key=lambda g: (-sizes[g], g)):
        row = next((r for r in packed if r.size + sizes[g] <= capacity), None)
        if row is None:
            row = _Row()
            packed.append(row)
        row.add_group(g, *groups[g])
    size = max(row.size for row in packed)
    device = input_ids.device
    return Packing(
        input_ids=torch.stack([row.padded(row.ids, size) for row in packed]).to(device),
        position_ids=torch.stack([row.padded(row.positions, size) for row in packed]).to(device),
        mask=torch.stack([row.mask(size) for row in packed]).to(device),
        source=torch.cat(
            [k * size + local for k, row in enumerate(packed) for _, local in row.members]
        ).to(device),
        dest=torch.cat(
            [
                r * padded_width + torch.arange(local.numel())
                for row in packed
                for r, local in row.members
            ]
        ).to(device),
        tokens=sum(row.size for row in packed),
        calls=tuple(RowCalls(tuple(row.calls), row.size) for row in packed),
    )


_NOT_PACKABLE = (
    "cache",  # transformers 5's name for the KV cache (past_key_values before)
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
            "input_ids": plan.input_ids,
            "position_ids": plan.position_ids,
            "attention_mask": plan.mask[:, None, :, :],
            packed_attention.KWARG: plan.calls,
        },
    )
    packed = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
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


def packable(model: PreTrainedModel) -> bool:
    """Whether :func:`pack_prefixes` can pack ``model``: a separate backbone, SDPA attention,
    and no sliding window (a caller's 4-D mask replaces the window the model would build)."""
    config = model.config
    sdpa = getattr(config, "_attn_implementation", None) == "sdpa"
    window = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return sdpa and not window and model.base_model is not model


def pack_prefixes(model: PreTrainedModel) -> PackingStats | None:
    """Make ``model``'s backbone pack right-padded, uncached batches (see the module doc).

    Returns:
        The counters the backbone adds to (the same object if already installed), or None
        if the model does not use SDPA attention or has no separate backbone.
    """
    if not packable(model):
        return None
    backbone = model.base_model
    stats: PackingStats | None = getattr(backbone, _INSTALLED, None)
    if stats is None:
        stats = PackingStats()
        setattr(backbone, _INSTALLED, stats)
        packed_attention.install()
        # A bound method, not a closure over this module: a deep copy rebinds it to the copy.
        backbone.forward = types.MethodType(_packed_forward, backbone)
    return stats
