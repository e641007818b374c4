"""Summed log-probabilities of responses under a model (SPA's implicit reward, eq. 7)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.model.cache import cache_keyword, returned_cache
from icon2.model.chat import Message, end_of_turn_ids, render, render_prompt, system_turn

# A prompt: one user turn as text, or a conversation that ends with a user turn.
Prompt = str | Sequence[Message]


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, system: str | None) -> str:
    """The chat-template text after which the answer starts (the assistant header included).

    A string is one user turn; a message list is the conversation so far. ``system``, when
    given, is put first as the system turn.
    """
    if isinstance(prompt, str):
        return render_prompt(tokenizer, prompt, system)
    head = system_turn(system)
    return render(tokenizer, [*head, *prompt], add_generation_prompt=True)


@torch.no_grad()
def response_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[Prompt],
    responses: Sequence[str],
    *,
    ended: Sequence[bool] | None = None,
    system: str | None = None,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log π(y|x) over each response's tokens, plus its end-of-turn token when the
    response ended (``ended[i]``; default all) — a truncated response did not end its turn.

    ``instructions[i]`` is a user turn or a whole conversation (:func:`prompt_text`).
    Returns (log-probs [n] float64, response token counts [n]). The prompt is the chat
    template with the assistant header; right padding is safe for a causal model scored on
    its own tokens.
    """
    eot = end_of_turn_ids(tokenizer)[0]
    device = next(model.parameters()).device
    rows = []
    flags = [True] * len(responses) if ended is None else list(ended)
    for x, y, done in zip(instructions, responses, flags, strict=True):
        p = tokenizer(prompt_text(tokenizer, x, system), add_special_tokens=False)["input_ids"]
        r = tokenizer(y, add_special_tokens=False)["input_ids"] + ([eot] if done else [])
        rows.append((p, r))
    out = torch.zeros(len(rows), dtype=torch.float64)
    lengths = torch.tensor([len(r) - int(done) for (_, r), done in zip(rows, flags, strict=True)])
    for start in tqdm(range(0, len(rows), batch_size), desc="implicit reward", unit="batch"):
        chunk = rows[start : start + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for b, (p, r) in enumerate(chunk):
            ids[b, : len(p) + len(r)] = torch.tensor(p + r)
            mask[b, : len(p) + len(r)] = 1
            target[b, len(p) : len(p) + len(r)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok = logp.gather(-1, ids[:, 1:].to(device)[..., None])[..., 0]
        out[start : start + len(chunk)] = (tok * target[:, 1:].to(device)).sum(-1).double().cpu()
    return out, lengths


@torch.no_grad()
def pair_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log π(y|x) of both answers of each pair (their end-of-turn token included).

    The same numbers as :func:`response_logps` on (prompts, chosen) and (prompts, rejected)
    for less work: the tokens every prompt starts with (the template's system turn) are read
    once for all pairs; each prompt once for both answers, ``batch_size`` prompts per pass;
    then the pass's answers, shortest first, ``batch_size`` at a time, each continuing its
    prompt's key/value cache (so an answer is padded to answers of similar length, not to
    the longest of its pass). The LM head runs only where an answer token is predicted.
    Order the pairs by prompt length for the least padding.

    Returns (chosen log-probs [n], rejected log-probs [n], chosen token counts [n], rejected
    token counts [n]); log-probs float64, counts without the end-of-turn token.
    """
    eot = end_of_turn_ids(tokenizer)[0]
    pad = tokenizer.pad_token_id or 0
    device = next(model.parameters()).device
    kw = cache_keyword(model)
    rows = []
    for x, a, b in zip(prompts, chosen, rejected, strict=True):
        p = tokenizer(prompt_text(tokenizer, x, None), add_special_tokens=False)["input_ids"]
        answers = [tokenizer(y, add_special_tokens=False)["input_ids"] + [eot] for y in (a, b)]
        rows.append((p, answers))
    prefix = _common_prefix([p for p, _ in rows])
    shared = None
    if prefix:
        shared = returned_cache(
            model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        )
    sums = torch.zeros(len(rows), 2, dtype=torch.float64)
    counts = torch.tensor([[len(y) - 1 for y in ys] for _, ys in rows]).reshape(-1, 2)
    for start in tqdm(range(0, len(rows), batch_size), desc="pair log-probs", unit="batch"):
        chunk = rows[start : start + batch_size]
        # 1. Each prompt after the shared prefix, left-padded: its last position is real.
        own = torch.tensor([len(p) - len(prefix) for p, _ in chunk])
        width = int(own.max())
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, (p, _) in enumerate(chunk):
            ids[i, width - len(p) + len(prefix) :] = torch.tensor(p[len(prefix) :])
        own_mask = (torch.arange(width) >= width - own[:, None]).long()
        mask = torch.cat([torch.ones(len(chunk), len(prefix), dtype=torch.long), own_mask], 1)
        cache = {}
        if shared is not None:
            cache = {kw: copy.deepcopy(shared)}
            cache[kw].batch_repeat_interleave(len(chunk))
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=(len(prefix) + own_mask.cumsum(-1) - 1).clamp(min=0).to(device),
            use_cache=True,
            logits_to_keep=1,
            **cache,
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        past = returned_cache(out)
        # 2. The pass's answers, shortest first, each after its own prompt's cache.
        answers = [(i, k, y) for i, (_, ys) in enumerate(chunk) for k, y in enumerate(ys)]
        answers.sort(key=lambda t: len(t[2]))
        for sub in range(0, len(answers), batch_size):
            group = answers[sub : sub + batch_size]
            owner = torch.tensor([i for i, _, _ in group])
            total = _continue(
                model,
                copy.deepcopy(past),
                owner,
                [y for _, _, y in group],
                first=first[owner.to(device)],
                mask=mask[owner],
                offset=len(prefix) + own[owner],
                pad=pad,
            )
            for r, (i, k, _) in enumerate(group):
                sums[start + i, k] = total[r]
    return sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1]


def _continue(
    model: PreTrainedModel,
    cache: Any,
    owner: torch.Tensor,
    answers: list[list[int]],
    *,
    first: torch.Tensor,
    mask: torch.Tensor,
    offset: torch.Tensor,
    pad: int,
) -> torch.Tensor:
    """Summed log-probs [len(answers)] of answers that continue rows ``owner`` of a prompt
    pass's ``cache`` (consumed), right-padded.

    Args:
        first: [len(answers), vocab] log-probs at each owner prompt's last position, which
            predict the answer's first token.
        mask: [len(answers), cached length] the owner prompts' attention mask.
        offset: [len(answers)] the position of each answer's first token.
    """
    device = next(model.parameters()).device
    length = max(len(y) for y in answers)
    ids = torch.full((len(answers), length), pad, dtype=torch.long)
    hit = torch.zeros_like(ids, dtype=torch.bool)
    for r, y in enumerate(answers):
        ids[r, : len(y)] = torch.tensor(y)
        hit[r, : len(y)] = True
    cache.batch_select_indices(owner.to(device))
    logits = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([mask, hit.long()], 1).to(device),
        position_ids=(offset[:, None] + torch.arange(length)).to(device),
        use_cache=True,
        **{cache_keyword(model): cache},
    ).logits.float()
    # Token 0 is predicted by the prompt's last position, token j by answer token j - 1.
    logp = torch.cat([first[:, None], torch.log_softmax(logits[:, :-1], dim=-1)], dim=1)
    tok = logp.gather(-1, ids.to(device)[..., None])[..., 0]
    # where, not a product: a padded position's log-prob may be -inf or NaN
    return torch.where(hit.to(device), tok, 0.0).sum(-1).double().cpu()


def _common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest token prefix of every row that leaves each row a token of its own."""
    if not rows:
        return []
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        n = min(n, next((i for i in range(n) if r[i] != first[i]), n))
    return first[: max(n, 0)]
