"""Attention for packed pairs: one causal SDPA call per answer instead of a masked row.

A packed row (:mod:`icon2.model.packing`) holds groups ``[prefix | answer_1 | answer_2]``;
under its 4-D mask SDPA computes every query-key block of the row, so a group of ``P + C +
R`` positions costs ``(P + C + R)²`` — the second answer's queries against the first
answer's keys included, and the upper triangle — where causal attention per answer costs
about ``((P + C)² + (P + R)²) / 2``: on the default pairs (P ≈ 80, C ≈ R ≈ 270) three times
less. :func:`packed_sdpa` takes the row's calls from the ``icon2_packed_calls`` keyword the
packed backbone passes down (transformers hands a model's keyword arguments to each
attention call, gradient checkpointing's recomputation included): the first answer's call
reads ``prefix + answer_1`` and gives the prefix's outputs too; each later answer's reads
``prefix + answer_j`` and keeps its own outputs. Both run SDPA with ``is_causal`` and no
mask, the path whose kernels skip the blocks above the diagonal. Padding positions get
zeros (no real query sees them). Calls without the keyword, with dropout, or with an attention
argument the split calls do not apply (a window, sinks, soft-capping, a position bias, a
non-causal module) take the ``sdpa`` function that was registered before (transformers'
own) with the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

#: The keyword the packed backbone passes down to every attention call.
KWARG = "icon2_packed_calls"


@dataclass(frozen=True)
class Call:
    """One causal attention over the concatenation of ``spans`` ((start, length) in the
    packed row); its outputs from index ``keep`` on are the positions it owns."""

    spans: tuple[tuple[int, int], ...]
    keep: int


@dataclass(frozen=True)
class RowCalls:
    """A packed row's calls, in row order (their owned positions tile ``[0, size)``)."""

    calls: tuple[Call, ...]
    size: int


def group_calls(prefix_at: int, shared: int, remainders: Sequence[tuple[int, int]]) -> list[Call]:
    """The calls of one group: its prefix at ``prefix_at`` (``shared`` positions), each
    member's remainder at (start, length); the first remainder follows the prefix."""
    calls = []
    for j, (start, length) in enumerate(remainders):
        if j == 0:
            calls.append(Call(((prefix_at, shared + length),), 0))
        elif length:
            spans = ((prefix_at, shared), (start, length)) if shared else ((start, length),)
            calls.append(Call(spans, shared))
    return calls


def _take(x: torch.Tensor, spans: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """[H, n, D] positions of ``x`` [H, L, D] along the spans, concatenated."""
    parts = [x[:, start : start + length] for start, length in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        q[None], k[None], v[None], is_causal=True, scale=scale
    )[0]


def split_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: Sequence[RowCalls],
    scaling: float | None,
) -> torch.Tensor:
    """[B, H, L, D] attention outputs of packed rows, one causal call per answer.

    Args:
        query: [B, H, L, D].
        key, value: [B, H, L, D] (grouped heads already repeated).
        rows: Each row's calls (B of them).
        scaling: SDPA's ``scale``.
    """
    out = []
    for b, row in enumerate(rows):
        q, k, v = query[b], key[b], value[b]
        pieces = [
            _causal(_take(q, c.spans), _take(k, c.spans), _take(v, c.spans), scaling)[:, c.keep :]
            for c in row.calls
        ]
        pad = query.shape[2] - row.size
        if pad:
            pieces.append(value.new_zeros(value.shape[1], pad, value.shape[-1]))
        out.append(torch.cat(pieces, dim=1))
    return torch.stack(out)


_previous: list[Callable[..., Any]] = []

#: Attention arguments the split calls do not apply; a call with any of them set (a model
#: with a window, sinks, soft-capping or a position bias) runs the mask path instead.
_UNSUPPORTED = ("position_bias", "sliding_window", "s_aux", "softcap")


def _plain(kwargs: dict[str, Any]) -> bool:
    """Whether the call is plain causal attention, which the split calls compute."""
    if kwargs.get("is_causal") is False:
        return False
    return all(kwargs.get(name) is None for name in _UNSUPPORTED)


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: split calls when the packed backbone
    passed them (and no dropout), else the previously registered ``sdpa``."""
    rows = kwargs.pop(KWARG, None)
    if rows is None or dropout or len(rows) != query.shape[0] or not _plain(kwargs):
        return _previous[0](  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = split_attention(query, key, value, rows, scaling)
    return out.transpose(1, 2).contiguous(), None


def install() -> None:
    """Route transformers' ``sdpa`` attention through :func:`packed_sdpa` (once per
    process; calls without the keyword run as before)."""
    if _previous:
        return
    _previous.append(ALL_ATTENTION_FUNCTIONS["sdpa"])
    ALL_ATTENTION_FUNCTIONS["sdpa"] = packed_sdpa
