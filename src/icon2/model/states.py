"""Read residual-stream states of decoder layers, batched.

:func:`last_token_states` reads a rendered prompt's last token (left-padded batches);
:func:`answer_token_means` the mean over an answer's tokens after its prompt (right-padded).
Forward hooks keep only what is asked for (position −1, or the weighted mean over the
answer's positions), so memory is O(batch × layers × d) instead of every position's states.
A hook on the deepest requested layer stops the forward pass early: layers past it and the
LM head never run.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.layers import check_layers
from icon2.model.cache import cache_keyword, returned_cache
from icon2.model.chat import render_prompt
from icon2.model.hooks import StopForward, capture, tokenize_left


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
        cache = returned_cache(
            model.base_model(torch.tensor([prefix], device=device), use_cache=True)
        )
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, unit="batch"):
        idx = order[start : start + batch_size]
        store.clear()
        if cache is None:
            batch = tokenize_left(tokenizer, [texts[i] for i in idx], device)
            with capture(model, wanted, store), contextlib.suppress(StopForward):
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
            with capture(model, wanted, store, last), contextlib.suppress(StopForward):
                model.base_model(**batch, **{cache_keyword(model.base_model): past}, use_cache=True)
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


@torch.no_grad()
def answer_token_means(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    layers: Sequence[int],
    system: str | None,
    batch_size: int,
) -> torch.Tensor:
    """States ``[n, len(layers), d]`` (float32): the mean over each answer's own tokens of
    layer l's output, the model reading ``prompts[i]`` (chat template, ``system`` turn
    first if any, then the assistant header) followed by ``answers[i]``.

    Only the answer's tokens count: not the prompt, not an end-of-turn token (a truncated
    answer has none, so none is added to any). A row whose answer has no token is NaN.
    Rows are right-padded: with causal attention a real token never sees the padding.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    n_layers = int(model.config.num_hidden_layers)
    wanted = list(layers)
    check_layers(wanted, n_layers, "layers")
    device = next(model.parameters()).device
    rows = [
        (
            tokenizer(render_prompt(tokenizer, x, system), add_special_tokens=False)["input_ids"],
            tokenizer(y, add_special_tokens=False)["input_ids"],
        )
        for x, y in zip(prompts, answers, strict=True)
    ]
    out = torch.full((len(rows), len(wanted), int(model.config.hidden_size)), float("nan"))
    order = [
        i for i in sorted(range(len(rows)), key=lambda i: sum(map(len, rows[i]))) if rows[i][1]
    ]
    store: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        weights = torch.zeros(len(idx), width)
        for b, i in enumerate(idx):
            p, a = rows[i]
            ids[b, : len(p) + len(a)] = torch.tensor(p + a)
            mask[b, : len(p) + len(a)] = 1
            weights[b, len(p) : len(p) + len(a)] = 1.0
        store.clear()
        with capture(model, wanted, store, weights=weights), contextlib.suppress(StopForward):
            model.base_model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            )
        out[idx] = torch.stack([store[layer] for layer in wanted], dim=1).cpu()
    return out
