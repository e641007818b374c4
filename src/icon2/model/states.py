"""Read residual-stream states of decoder layers, batched.

:func:`last_token_states` reads a rendered prompt's last token (left-padded batches);
:func:`answer_token_means` the mean over an answer's tokens after its prompt (right-padded).
Forward hooks keep only what is asked for (position −1, or the weighted sum over the
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
from icon2.model.chat import render_prompt
from icon2.model.hooks import StopForward, capture, capture_weighted, tokenize_left


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
    """Mean state over each answer's tokens, ``[len(answers), len(layers), d]`` (float32).

    Row i is ``prompts[i]`` rendered with the chat template and ``system`` (generation
    prompt included), then the tokens of ``answers[i]`` and no end-of-turn token: the answer
    read back by the model as it stands, without steering. Only the answer's positions enter
    the mean; the prompt's are context. Prompt and answer are tokenized separately, as the
    answer was generated after the prompt's tokens.

    Args:
        prompts: user messages (rendered here).
        answers: answer texts, each at least one token long.
        layers: 1-based decoder layers.
        batch_size: rows per forward pass; rows are length-sorted to limit padding and the
            result is returned in input order.

    Raises:
        ValueError: prompts and answers differ in length, or an answer has no tokens.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    wanted = list(layers)
    check_layers(wanted, int(model.config.num_hidden_layers), "layers")
    device = next(model.parameters()).device
    rows = []
    for i, (x, y) in enumerate(zip(prompts, answers, strict=True)):
        p = tokenizer(render_prompt(tokenizer, x, system), add_special_tokens=False)["input_ids"]
        a = tokenizer(y, add_special_tokens=False)["input_ids"]
        if not a:
            raise ValueError(f"answer {i} has no tokens: there is nothing to average")
        rows.append((list(p), list(a)))
    order = sorted(range(len(rows)), key=lambda i: (sum(map(len, rows[i])), i))
    out = torch.empty(len(rows), len(wanted), int(model.config.hidden_size))
    store: dict[int, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(sum(map(len, rows[i])) for i in idx)
        # Right padding is safe: with causal attention no real token sees the padding.
        ids = torch.full((len(idx), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        weights = torch.zeros(len(idx), width)
        for b, i in enumerate(idx):
            p, a = rows[i]
            ids[b, : len(p) + len(a)] = torch.tensor(p + a)
            mask[b, : len(p) + len(a)] = 1
            weights[b, len(p) : len(p) + len(a)] = 1.0 / len(a)
        store.clear()
        with (
            capture_weighted(model, wanted, store, weights.to(device)),
            contextlib.suppress(StopForward),
        ):
            model.base_model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            )
        out[idx] = torch.stack([store[layer] for layer in wanted], dim=1).cpu()
    return out
