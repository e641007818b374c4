"""Text generation behind a small backend interface (Hugging Face transformers today).

Stages talk to ``Backend`` only, so a faster engine (vLLM) can be added without touching
them. Steering is part of the request (:class:`~icon2.engines.base.Steering`): each batch
takes its rows' vectors from the groups' tables and adds them at every position.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.engines.base import (
    Generation,
    Sampling,
    Steering,
    SteeringInput,
    as_steering,
    to_generation,
)
from icon2.engines.decode import decode_dropping_finished, loop_fits
from icon2.engines.kv_cache import cache_argument, reserved_cache
from icon2.model.chat import end_of_turn_ids
from icon2.model.hooks import steer, tokenize_left


class HFBackend:
    """transformers ``generate`` in length-sorted, left-padded batches.

    ``kv_cache="reserved"`` (the default) hands ``generate`` a cache that reserves room for
    the answer and writes each token in place (:mod:`icon2.engines.kv_cache`); ``"dynamic"``
    leaves transformers' concatenating ``DynamicCache``. Both generate the same tokens.

    ``drop_finished`` (the default) decodes with :mod:`icon2.engines.decode`, which takes
    rows out of the batch as they end instead of computing padding for them until the
    longest row ends; greedy tokens are ``generate``'s. Models for which ``generate`` must
    build its own cache (see :func:`~icon2.engines.kv_cache.cache_argument`) use ``generate``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        stop_ids: Sequence[int],
        batch_size: int = 16,
        kv_cache: Literal["reserved", "dynamic"] = "reserved",
        drop_finished: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids)
        self.batch_size = batch_size
        self.kv_cache = kv_cache
        self._cache_argument = cache_argument(model) if kv_cache == "reserved" else None
        self._loop_argument = cache_argument(model) if drop_finished and loop_fits(model) else None

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        *,
        vectors: SteeringInput | None = None,
        desc: str | None = None,
    ) -> list[Generation]:
        steering = as_steering(vectors, len(prompts))
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
        out: list[Generation | None] = [None] * len(prompts)
        starts = range(0, len(order), self.batch_size)
        if desc is not None:  # what will happen, before the first batch starts
            print(
                f"{desc}: {len(prompts)} prompts x <= {sampling.max_new_tokens} new tokens, HF "
                f"engine ({self.model.dtype}, {len(starts)} batches of <= {self.batch_size}, "
                f"{torch.get_num_threads()} threads)",
                file=sys.stderr,
                flush=True,
            )
        with tqdm(total=len(prompts), desc=desc, disable=desc is None, unit="prompt") as bar:
            self._batches(prompts, sampling, steering, order, out, bar)
        return [g for g in out if g is not None]

    def _batches(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        steering: Steering | None,
        order: list[int],
        out: list[Generation | None],
        bar: tqdm,
    ) -> None:
        device = next(self.model.parameters()).device
        for n, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size]
            batch = tokenize_left(self.tokenizer, [prompts[i] for i in idx], device)
            batch.pop("position_ids")  # generate derives positions from the attention mask
            rows = {} if steering is None else steering.rows(idx)
            # One seed per batch index: identical requests give identical outputs.
            torch.manual_seed(sampling.seed + n)
            ended = bar.n
            for i, new in zip(idx, self._new_tokens(batch, sampling, rows, bar), strict=True):
                out[i] = to_generation(self.tokenizer, new, self.stop_ids)
            bar.update(len(idx) - (bar.n - ended))  # the rows that ran to the budget

    def _new_tokens(
        self,
        batch: dict[str, torch.Tensor],
        sampling: Sampling,
        rows: dict[int, torch.Tensor],
        bar: tqdm,
    ) -> list[list[int]]:
        if self._loop_argument is not None:
            return decode_dropping_finished(
                self.model,
                batch,
                sampling,
                stop_ids=self.stop_ids,
                cache=reserved_cache(self.model, sampling.max_new_tokens)
                if self.kv_cache == "reserved"
                else DynamicCache(config=self.model.config.get_text_config(decoder=True)),
                cache_argument=self._loop_argument,
                vectors=rows,
                on_finished=bar.update,  # progress as answers end, not only per batch
            )
        kwargs = self._kwargs(sampling)
        if self._cache_argument is not None:
            kwargs[self._cache_argument] = reserved_cache(self.model, sampling.max_new_tokens)
        with steer(self.model, rows):
            seqs = self.model.generate(**batch, **kwargs)  # type: ignore[operator]
        return [row.tolist() for row in seqs[:, batch["input_ids"].shape[1] :]]

    def _kwargs(self, s: Sampling) -> dict[str, object]:
        kw: dict[str, object] = {
            "max_new_tokens": s.max_new_tokens,
            "eos_token_id": self.stop_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
            "repetition_penalty": s.repetition_penalty,
        }
        if s.ignore_eos:
            kw["min_new_tokens"] = s.max_new_tokens
        if s.temperature > 0:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


def chat_backend(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_size: int
) -> HFBackend:
    """An HF backend that stops at the chat template's end-of-turn token (or EOS)."""
    return HFBackend(model, tokenizer, stop_ids=end_of_turn_ids(tokenizer), batch_size=batch_size)
