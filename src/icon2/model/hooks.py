"""The only code that reaches inside a model: decoder-layer lookup and forward hooks.

Three context managers, all removing their hooks in ``finally``:
- ``capture`` keeps the last-token residual-stream state of some decoder layers (and stops
  the forward pass after the deepest one);
- ``capture_weighted`` keeps a weighted sum over positions instead (e.g. a mean over an
  answer's tokens), stopping the same way;
- ``steer`` adds a per-layer (optionally per-row) vector to decoder-layer outputs at every
  position the layer computes: the prompt positions in the prefill and each new token
  afterwards (with a KV cache, later steps only compute the new position, whose earlier
  positions were already steered when they were computed). Rows may carry different
  vectors, so a batch can mix criteria and signs.

Layers are 1-based: layer l is the output of decoder block l (HF ``hidden_states[l]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.errors import ModelError


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of decoder blocks, for the architectures icon2 knows how to hook."""
    base = model.base_model
    for attr in ("layers", "h", "blocks"):
        layers = getattr(base, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    decoder = getattr(base, "decoder", None)
    if decoder is not None and isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        return decoder.layers  # type: ignore[no-any-return]
    raise ModelError(f"{type(model).__name__}: cannot find its decoder layers to hook")


class StopForward(Exception):
    """Raised by the deepest hook: nothing after it is needed."""


def layer_output(output: Any) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the residual stream."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[no-any-return]


@contextlib.contextmanager
def capture(
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
                raise StopForward

        return hook

    try:
        for layer in layers:
            handles.append(blocks[layer - 1].register_forward_hook(make_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_weighted(
    model: PreTrainedModel,
    layers: Sequence[int],
    store: dict[int, torch.Tensor],
    weights: torch.Tensor,
) -> Iterator[None]:
    """Hook ``layers``; keep Σ_t weights[b, t] · state[b, t] of each row (float32 [b, d]),
    so a mean over chosen positions never holds every position's states at once."""
    blocks = decoder_layers(model)
    deepest = max(layers)
    handles = []

    def make_hook(layer: int) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            hs = layer_output(output)
            store[layer] = torch.einsum("bt,btd->bd", weights.to(hs.device), hs.float())
            if layer == deepest:
                raise StopForward

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


@contextlib.contextmanager
def steer(model: PreTrainedModel, vectors: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Add ``vectors[layer]`` ([d] or [batch, d]) to the output of 1-based ``layer``."""
    blocks = decoder_layers(model)
    handles = []

    def make_hook(vec: torch.Tensor) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            hs = output[0] if isinstance(output, tuple) else output
            v = vec.to(dtype=hs.dtype, device=hs.device)
            v = v[:, None, :] if v.dim() == 2 else v
            if v.dim() == 3 and v.shape[0] != hs.shape[0]:
                raise ValueError(
                    f"steering vectors are for {v.shape[0]} rows, the batch has {hs.shape[0]}"
                )
            steered = hs + v
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    try:
        for layer, vec in vectors.items():
            handles.append(blocks[layer - 1].register_forward_hook(make_hook(vec)))
        yield
    finally:
        for h in handles:
            h.remove()
