"""A4: bidirectional inherent control — add γ·scale·u to decoder-layer outputs.

The hooks add a per-row vector to the residual stream output of each controlled layer at
every position the layer computes: the prompt positions in the prefill and each new token
afterwards (with a KV cache, later steps only compute the new position, whose earlier
positions were already steered when they were computed). Rows may carry different
vectors, so a batch can mix criteria and signs. Hooks live inside a context manager and
are removed in ``finally``, also when generation raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from icon2.direction_file import DirectionFile
from icon2.models import decoder_layers

GammaScale = Literal["contrastive_norm", "hidden_norm", "unit"]


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


def layer_scale(dfile: DirectionFile, criterion: str, layer: int, scale: GammaScale) -> float:
    """What γ = 1 means at ``layer``.

    ``contrastive_norm`` (default): γ is relative to the mean norm of the layer's contrastive
    vectors, i.e. to how far the positive vs negative system prompt moves the state. Hidden
    state norms are dominated by a few outlier dimensions (on SmolLM2 they are ~10× the
    contrastive norms in the middle layers), so ``hidden_norm`` pushes much harder.
    ``unit`` uses the raw unit vector (γ = 0.1 then does nearly nothing).
    """
    if scale == "unit":
        return 1.0
    cd = dfile.criteria[criterion]
    row = dfile.layers.index(layer)
    stat = cd.contrastive_norm if scale == "contrastive_norm" else cd.hidden_norm
    return float(stat[row])


def steering_vectors(
    dfile: DirectionFile,
    criteria: list[str],
    gammas: list[float],
    layers: list[int],
    scale: GammaScale,
) -> dict[int, torch.Tensor]:
    """Per-layer [batch, d] vectors: row b = gammas[b] · scale · u^l_{criteria[b]}."""
    out = {}
    for layer in layers:
        rows = [
            g * layer_scale(dfile, c, layer, scale) * dfile.direction(c, layer)
            for c, g in zip(criteria, gammas, strict=True)
        ]
        out[layer] = torch.stack(rows)
    return out


def middle_third(num_layers: int) -> list[int]:
    """The paper's best controlled layers: the middle third (10..20 of 30)."""
    lo = num_layers // 3
    hi = (2 * num_layers) // 3
    return list(range(max(lo, 1), hi + 1))
