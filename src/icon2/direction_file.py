"""``directions.safetensors``: one [N, d] float32 tensor per criterion plus per-layer stats.

Tensor keys: ``<criterion>`` (the unit directions, row l−1 = layer l) and
``<criterion>:evr``, ``:contrastive_norm``, ``:hidden_norm``, ``:mean_projection`` ([N]).
Metadata: model name, weights hash, criteria, prompt-text hash, feature-set hash, read
position, layers, and the provenance record of the stage that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from icon2.directions import CriterionDirections
from icon2.errors import InputError
from icon2.io import read_provenance, write_tensors

STATS = ("evr", "contrastive_norm", "hidden_norm", "mean_projection")


@dataclass(frozen=True)
class DirectionFile:
    layers: list[int]  # 1-based layer of each row
    criteria: dict[str, CriterionDirections]
    meta: dict[str, Any]

    def direction(self, criterion: str, layer: int) -> torch.Tensor:
        return self.criteria[criterion].direction[self.layers.index(layer)]


def save(path: Path, dirs: dict[str, CriterionDirections], meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, cd in dirs.items():
        tensors[name] = cd.direction.float()
        for stat in STATS:
            tensors[f"{name}:{stat}"] = getattr(cd, stat).float()
    write_tensors(path, tensors, meta)


def load(path: Path) -> DirectionFile:
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
