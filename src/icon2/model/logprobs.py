"""Summed log-probabilities of responses under a model (SPA's implicit reward, eq. 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.model.chat import end_of_turn_ids, render_prompt


@torch.no_grad()
def response_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    responses: Sequence[str],
    *,
    ended: Sequence[bool] | None = None,
    system: str | None = None,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log π(y|x) over each response's tokens, plus its end-of-turn token when the
    response ended (``ended[i]``; default all) — a truncated response did not end its turn.

    Returns (log-probs [n] float64, response token counts [n]). The prompt is the chat
    template with the assistant header; right padding is safe for a causal model scored on
    its own tokens.
    """
    eot = end_of_turn_ids(tokenizer)[0]
    device = next(model.parameters()).device
    rows = []
    flags = [True] * len(responses) if ended is None else list(ended)
    for x, y, done in zip(instructions, responses, flags, strict=True):
        p = tokenizer(render_prompt(tokenizer, x, system), add_special_tokens=False)["input_ids"]
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
