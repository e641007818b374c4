"""``directions.safetensors``: the A1 data model, its reader/writer and the steering vectors
built from it (A4 eq. 4).

One [N, d] float32 tensor per criterion (row l−1 = layer l) plus per-layer stats
``<criterion>:evr``, ``:contrastive_norm``, ``:hidden_norm``, ``:mean_projection`` ([N]).
Metadata: one sorted-JSON entry ``icon2`` with the model name, weights hash, criteria,
layers, prompt-text hash, feature-set hash, read position and the stage's provenance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from icon2.core.errors import InputError
from icon2.core.io import PROVENANCE_KEY, atomic_path, read_provenance
from icon2.core.layers import resolve_layers
from icon2.engines.base import Steering

STATS = ("evr", "contrastive_norm", "hidden_norm", "mean_projection")


@dataclass(frozen=True)
class CriterionDirections:
    """Per-layer results for one criterion; every tensor's first axis is the layer."""

    direction: torch.Tensor  # [L, d] unit rows
    evr: torch.Tensor  # [L]
    contrastive_norm: torch.Tensor  # [L] mean ||v||
    hidden_norm: torch.Tensor  # [L] mean ||h|| over positive and negative prompts
    mean_projection: torch.Tensor  # [L] mean v · u (> 0 by construction)


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
    """Read and check a directions file: readable safetensors, metadata with the criteria and
    layers, one [len(layers), d] tensor per criterion with its [len(layers)] stats, finite."""
    rerun = "expected the directions stage's output; rerun `dvc repro directions`"
    if not path.is_file():
        raise InputError(f"{path}: directions file not found; run `dvc repro directions`")
    try:
        meta = read_provenance(path)
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors/json raise several types for a corrupt file
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable safetensors file ({why}); {rerun}") from None
    criteria_names = meta.get("criteria")
    layers = meta.get("layers")
    if not isinstance(criteria_names, list) or not criteria_names:
        raise InputError(f"{path}: metadata has no 'criteria' list; {rerun}")
    if (
        not isinstance(layers, list)
        or not layers
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in layers)
        or len(set(layers)) != len(layers)
    ):
        raise InputError(
            f"{path}: metadata 'layers' must be a non-empty list of distinct layer numbers "
            f">= 1 (got {layers!r}); {rerun}"
        )
    criteria = {}
    width = None
    for name in criteria_names:
        names = [name, *(f"{name}:{s}" for s in STATS)]
        missing = [k for k in names if k not in tensors]
        if missing:
            raise InputError(f"{path}: metadata lists criterion {name!r} but has no {missing}")
        direction = tensors[name]
        if direction.ndim != 2 or direction.shape[0] != len(layers):
            raise InputError(
                f"{path}: tensor {name!r} has shape {list(direction.shape)}, expected "
                f"[{len(layers)}, hidden size] (one row per layer in {layers})"
            )
        if width is not None and direction.shape[1] != width:
            raise InputError(f"{path}: tensor {name!r} has width {direction.shape[1]}, not {width}")
        width = direction.shape[1]
        stats = {s: tensors[f"{name}:{s}"] for s in STATS}
        for stat, value in stats.items():
            if tuple(value.shape) != (len(layers),):
                raise InputError(
                    f"{path}: tensor '{name}:{stat}' has shape {list(value.shape)}, "
                    f"expected [{len(layers)}]"
                )
        if not all(bool(torch.isfinite(t).all()) for t in (direction, *stats.values())):
            raise InputError(f"{path}: criterion {name!r} holds NaN or infinite values")
        criteria[name] = CriterionDirections(direction=direction, **stats)
    return DirectionFile(layers=list(layers), criteria=criteria, meta=meta)


def hidden_size(dfile: DirectionFile) -> int:
    return int(next(iter(dfile.criteria.values())).direction.shape[1])


def check_same_model(dfile: DirectionFile, card: dict[str, Any], path: Path) -> None:
    """Refuse directions computed on other weights (or another width) than the model's.

    Needs only the model card, so stages call it before loading any weights."""
    width, want_width = hidden_size(dfile), card.get("hidden_size")
    if want_width is not None and width != want_width:
        raise InputError(
            f"{path}: directions have hidden size {width} but the configured model "
            f"{card.get('name')!r} has {want_width}; rerun `dvc repro directions`"
        )
    have, want = dfile.meta.get("weights_sha256"), card.get("weights_sha256")
    if have != want:
        raise InputError(
            f"{path}: directions were computed on model {dfile.meta.get('model')!r} "
            f"(weights {str(have)[:12]}…) but the configured model is {card.get('name')!r} "
            f"(weights {str(want)[:12]}…); rerun `dvc repro directions`"
        )
    top = max(dfile.layers)
    if card.get("num_layers") is not None and top > card["num_layers"]:
        raise InputError(
            f"{path}: directions name layer {top} but the model has {card['num_layers']} layers"
        )


def check_criteria(dfile: DirectionFile, wanted: list[str], where: str, path: Path) -> None:
    """Every criterion a table names must have a direction in the file."""
    missing = sorted(set(wanted) - set(dfile.criteria))
    if missing:
        raise InputError(
            f"{where}: criteria {missing} have no direction in {path} "
            f"(it has {list(dfile.criteria)}); rerun `dvc repro directions` or the filter"
        )


def controlled_layers(
    dfile: DirectionFile,
    requested: Sequence[int] | None,
    num_layers: int,
    path: Path,
    key: str = "pairs.layers",
) -> list[int]:
    """The controlled layers (A4): ``requested`` (``pairs.layers``), or by default the middle
    third of the model's ``num_layers``, each of which must be a row of the file at ``path``.

    Raises:
        ModelError: as :func:`~icon2.core.layers.resolve_layers`, naming ``key`` and ``path``.
    """
    return resolve_layers(
        requested, num_layers, key, default="middle", within=dfile.layers, source=str(path)
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


def steering_groups(
    dfile: DirectionFile,
    criteria: Sequence[str],
    gammas: Sequence[float],
    layers: list[int],
    scale: GammaScale,
) -> Steering:
    """Steering for rows b = 0 .. len(criteria)−1: row b gets gammas[b] · scale · u^l of
    criteria[b] at every layer l. One group per distinct (criterion, γ), in order of first
    appearance, so the tables hold a handful of vectors however many rows there are."""
    keys: dict[tuple[str, float], int] = {}
    groups = []
    for key in zip(criteria, gammas, strict=True):
        groups.append(keys.setdefault(key, len(keys)))
    if not keys:
        return Steering({}, ())
    table = {
        layer: torch.stack(
            [g * layer_scale(dfile, c, layer, scale) * dfile.direction(c, layer) for c, g in keys]
        )
        for layer in layers
    }
    return Steering(table, tuple(groups))


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """safetensors, atomically. The metadata is one sorted-JSON entry under ``icon2``:
    safetensors stores metadata in a hash map whose key order changes from run to run, so
    several entries would make identical runs produce different bytes."""
    flat = {PROVENANCE_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=flat)
