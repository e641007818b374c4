"""Read the last-token residual-stream state of decoder layers, batched and left-padded.

Forward hooks keep only position −1 of each hooked layer's output, so memory is
O(batch × layers × d) instead of every position's states. A hook on the deepest
requested layer stops the forward pass early: layers past it and the LM head never run.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.models import check_layers, decoder_layers


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after it is needed."""


def layer_output(output: Any) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the residual stream."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[no-any-return]


@contextlib.contextmanager
def _capture(
    model: PreTrainedModel,
    layers: Sequence[int],
    store: dict[int, torch.Tensor],
    last: torch.Tensor | None = None,
) -> Iterator[None]:
    """Hook ``layers``; keep position −1 of each (or position ``last[b]`` of row b)."""
    blocks = decoder_layers(model)
    deepest = max(layers)
    handles = []

    def make_hook(layer: int) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            hs = layer_output(output)
            if last is None:
                store[layer] = hs[:, -1, :].float()
            else:
                store[layer] = hs[torch.arange(hs.shape[0], device=hs.device), last].float()
            if layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in layers:
            handles.append(blocks[layer - 1].register_forward_hook(make_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def tokenize_left(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """Left-padded batch of already-rendered chat texts (the template adds any BOS)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    # Positions count real tokens only, so a left-padded row sees the same positions as
    # the same text run alone.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": enc["input_ids"].to(device),
        "attention_mask": mask.to(device),
        "position_ids": position_ids.to(device),
    }


@torch.no_grad()
def last_token_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    shared_prefix: str | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """States ``[len(texts), len(layers), d]`` (float32) at each text's last token.

    Args:
        texts: fully rendered prompts (chat template applied).
        layers: 1-based decoder layers; None = all of them, in order.
        batch_size: texts per forward pass; texts are length-sorted to limit padding and
            the result is returned in input order.
        shared_prefix: a text every prompt starts with (e.g. the system turn). Its KV
            cache is computed once and reused for every batch, which is most of the work
            when the system prompt is long. Ignored when its tokens are not a token-level
            prefix of every text (then each text is read whole).
    """
    n_layers = int(model.config.num_hidden_layers)
    wanted = list(range(1, n_layers + 1)) if layers is None else list(layers)
    check_layers(wanted, n_layers, "layers")
    device = next(model.parameters()).device
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    prefix = _token_prefix(tokenizer, shared_prefix, ids)
    order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), i))
    out = torch.empty(len(texts), len(wanted), int(model.config.hidden_size))
    store: dict[int, torch.Tensor] = {}
    cache = None
    if prefix:
        cache = model.base_model(torch.tensor([prefix], device=device), use_cache=True)
        cache = cache.past_key_values
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, unit="batch"):
        idx = order[start : start + batch_size]
        store.clear()
        if cache is None:
            batch = tokenize_left(tokenizer, [texts[i] for i in idx], device)
            with _capture(model, wanted, store), contextlib.suppress(_StopForward):
                model.base_model(**batch, use_cache=False)
        else:
            batch, last = _suffix_batch(
                [ids[i][len(prefix) :] for i in idx],
                len(prefix),
                tokenizer.pad_token_id or 0,
                device,
            )
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(idx))
            with _capture(model, wanted, store, last), contextlib.suppress(_StopForward):
                model.base_model(**batch, past_key_values=past, use_cache=True)
        out[idx] = torch.stack([store[layer] for layer in wanted], dim=1).cpu()
    return out


def _token_prefix(
    tokenizer: PreTrainedTokenizerBase, prefix: str | None, ids: list[list[int]]
) -> list[int]:
    if not prefix:
        return []
    pids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    n = len(pids)
    # Every text needs at least one token of its own after the prefix.
    if n == 0 or any(len(row) <= n or row[:n] != pids for row in ids):
        return []
    return list(pids)


def _suffix_batch(
    rows: list[list[int]], prefix_len: int, pad_id: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded suffixes after a cached prefix; returns inputs and last-token index.

    Right padding is safe here: with causal attention a row's real tokens never see the
    padding after them, and the state is read at each row's own last real token.
    """
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), prefix_len + width, dtype=torch.long)
    mask[:, :prefix_len] = 1
    for b, r in enumerate(rows):
        input_ids[b, : len(r)] = torch.tensor(r)
        mask[b, prefix_len : prefix_len + len(r)] = 1
    positions = (prefix_len + torch.arange(width)).expand(len(rows), width)
    last = torch.tensor([len(r) - 1 for r in rows], device=device)
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    return {k: v.to(device) for k, v in batch.items()}, last
