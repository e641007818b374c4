"""``directions.safetensors``: the A1 data model, its reader/writer and the steering vectors
built from it (A4 eq. 4).

One [N, d] float32 tensor per criterion (row l−1 = layer l) plus per-layer stats
``<criterion>:evr``, ``:contrastive_norm``, ``:hidden_norm``, ``:mean_projection`` ([N]).
Metadata: one sorted-JSON entry ``icon2`` with the model name, weights hash, criteria,
layers, prompt-text hash, feature-set hash, read position and the stage's provenance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from icon2.core.errors import InputError
from icon2.core.io import PROVENANCE_KEY, atomic_path, read_provenance
from icon2.steps.directions import CriterionDirections

STATS = ("evr", "contrastive_norm", "hidden_norm", "mean_projection")


@dataclass(frozen=True)
class DirectionFile:
    layers: list[int]  # 1-based layer of each row
    criteria: dict[str, CriterionDirections]
    meta: dict[str, Any]

    def direction(self, criterion: str, layer: int) -> torch.Tensor:
        return self.criteria[criterion].direction[self.layers.index(layer)]


def save_directions(path: Path, dirs: dict[str, CriterionDirections], meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, cd in dirs.items():
        tensors[name] = cd.direction.float()
        for stat in STATS:
            tensors[f"{name}:{stat}"] = getattr(cd, stat).float()
    write_tensors(path, tensors, meta)


def load_directions(path: Path) -> DirectionFile:
    if not path.is_file():
        raise InputError(f"{path}: directions file not found; run `dvc repro directions`")
    meta = read_provenance(path)
    tensors = load_file(str(path))
    criteria = {}
    for name in meta.get("criteria", []):
        if name not in tensors:
            raise InputError(f"{path}: metadata lists criterion {name!r} but has no tensor")
        stats = {s: tensors[f"{name}:{s}"] for s in STATS}
        criteria[name] = CriterionDirections(direction=tensors[name], **stats)
    return DirectionFile(layers=list(meta["layers"]), criteria=criteria, meta=meta)


def check_same_model(dfile: DirectionFile, card: dict[str, Any], path: Path) -> None:
    """Refuse directions computed on other weights than the configured model's."""
    have, want = dfile.meta.get("weights_sha256"), card.get("weights_sha256")
    if have != want:
        raise InputError(
            f"{path}: directions were computed on model {dfile.meta.get('model')!r} "
            f"(weights {str(have)[:12]}…) but the configured model is {card.get('name')!r} "
            f"(weights {str(want)[:12]}…); rerun `dvc repro directions`"
        )


GammaScale = Literal["contrastive_norm", "hidden_norm", "unit"]


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


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """safetensors, atomically. The metadata is one sorted-JSON entry under ``icon2``:
    safetensors stores metadata in a hash map whose key order changes from run to run, so
    several entries would make identical runs produce different bytes."""
    flat = {PROVENANCE_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=flat)
