"""A1: per-layer preference directions from contrastive system prompts and uncentred PCA.

For criterion c and instruction d_i, v^l_i = h^l(P⁺_c ⊕ d_i) − h^l(P⁻_c ⊕ d_i); the
direction u^l_c is the top right-singular vector of the stacked v's (uncentred PCA), with
its sign chosen so that mean_i v^l_i · u^l_c > 0. Centred PCA would subtract the mean
difference, which is exactly the signal we want.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.core.io import sha256_json
from icon2.core.layers import middle_third
from icon2.core.params import DirectionsParams
from icon2.model.chat import pre_query_template, render_prompt
from icon2.model.states import last_token_states
from icon2.steps.direction_file import CriterionDirections, save_directions


def first_component(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Unit top principal direction of ``v`` [n, d] without centring, sign-fixed.

    Returns the direction [d] and its explained-variance ratio S₀² / ΣS² (the share of
    the uncentred second moment it carries).
    """
    v64 = v.double()
    _, s, vh = torch.linalg.svd(v64, full_matrices=False)
    u = vh[0]
    if float((v64 @ u).mean()) < 0:
        u = -u
    total = float((s**2).sum())
    evr = float(s[0] ** 2) / total if total > 0 else 0.0
    return u.float(), evr


def centred_first_component(v: torch.Tensor) -> torch.Tensor:
    """Ordinary (centred) PCA, kept only to show in tests why it is the wrong tool here."""
    centred = v.double() - v.double().mean(0, keepdim=True)
    top: torch.Tensor = torch.linalg.svd(centred, full_matrices=False)[2][0]
    return top.float()


def directions_from_states(pos: torch.Tensor, neg: torch.Tensor) -> CriterionDirections:
    """Directions from paired states ``pos``/``neg`` of shape [n, L, d]."""
    v = pos - neg
    dirs, evrs, proj = [], [], []
    for layer in range(v.shape[1]):
        u, evr = first_component(v[:, layer])
        dirs.append(u)
        evrs.append(evr)
        proj.append(float((v[:, layer].double() @ u.double()).mean()))
    hidden = torch.cat([pos, neg]).norm(dim=-1).mean(0)
    return CriterionDirections(
        direction=torch.stack(dirs),
        evr=torch.tensor(evrs, dtype=torch.float32),
        contrastive_norm=v.norm(dim=-1).mean(0),
        hidden_norm=hidden,
        mean_projection=torch.tensor(proj, dtype=torch.float32),
    )


def extract(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: list[str],
    prompts: dict[str, tuple[str, str]],
    *,
    layers: list[int] | None = None,
    read_position: str = "generation_prompt",
    batch_size: int = 16,
) -> dict[str, CriterionDirections]:
    """Run the contrastive reads for every criterion in ``prompts`` (name → (P⁺, P⁻))."""
    out = {}
    for name, (positive, negative) in prompts.items():
        states = []
        for polarity, system in (("+", positive), ("-", negative)):
            texts = [
                render_prompt(tokenizer, d, system, read_position)  # type: ignore[arg-type]
                for d in instructions
            ]
            states.append(
                last_token_states(
                    model,
                    tokenizer,
                    texts,
                    layers=layers,
                    batch_size=batch_size,
                    shared_prefix=pre_query_template(tokenizer, system),
                    desc=f"directions {name}{polarity}",
                )
            )
        out[name] = directions_from_states(states[0], states[1])
    return out


def extract_and_save(
    out: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: list[str],
    cfg: DirectionsParams,
    layers: list[int],
    meta: dict[str, Any],
) -> dict[str, CriterionDirections]:
    """Extract every criterion's directions and write them with their metadata to ``out``."""
    prompts = {c: (cfg.prompts[c].positive, cfg.prompts[c].negative) for c in cfg.criteria}
    dirs = extract(
        model,
        tokenizer,
        instructions,
        prompts,
        layers=layers,
        read_position=cfg.read_position,
        batch_size=cfg.batch_size,
    )
    meta = {
        **meta,
        "criteria": list(cfg.criteria),
        "layers": layers,
        "read_position": cfg.read_position,
        "prompts_sha256": sha256_json(prompts),
        "features_sha256": meta["inputs"]["features"],
        "num_features": len(instructions),
    }
    save_directions(out, dirs, meta)
    return dirs


def direction_metrics(
    dirs: dict[str, CriterionDirections], layers: list[int], num_layers: int, n: int
) -> dict[str, Any]:
    """Headline numbers: the mean explained-variance ratio of the first component per
    criterion over the paper's middle layers (``middle_third``; over every layer when the
    directions cover none of them). The per-layer series go to the plot files."""
    middle = [i for i, layer in enumerate(layers) if layer in set(middle_third(num_layers))]
    rows = middle or list(range(len(layers)))
    key = "mean_evr_middle" if middle else "mean_evr"
    out: dict[str, Any] = {"features": n, "layers": len(layers)}
    for c, d in dirs.items():
        out[c] = {key: round(float(d.evr[rows].mean()), 4)}
    return out


def layer_frames(
    dirs: dict[str, CriterionDirections], layers: list[int]
) -> dict[str, pl.DataFrame]:
    """Per criterion, one row per layer: EVR, mean contrastive and hidden-state norms."""
    return {
        c: pl.DataFrame(
            {
                "layer": layers,
                "explained_variance": d.evr.tolist(),
                "contrastive_norm": d.contrastive_norm.tolist(),
                "hidden_norm": d.hidden_norm.tolist(),
            }
        )
        for c, d in dirs.items()
    }
