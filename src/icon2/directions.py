"""A1: per-layer preference directions from contrastive system prompts and uncentred PCA.

For criterion c and instruction d_i, v^l_i = h^l(P⁺_c ⊕ d_i) − h^l(P⁻_c ⊕ d_i); the
direction u^l_c is the top right-singular vector of the stacked v's (uncentred PCA), with
its sign chosen so that mean_i v^l_i · u^l_c > 0. Centred PCA would subtract the mean
difference, which is exactly the signal we want.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.chat import pre_query_template, render_prompt
from icon2.hidden import last_token_states


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


@dataclass(frozen=True)
class CriterionDirections:
    """Per-layer results for one criterion; every tensor's first axis is the layer."""

    direction: torch.Tensor  # [L, d] unit rows
    evr: torch.Tensor  # [L]
    contrastive_norm: torch.Tensor  # [L] mean ||v||
    hidden_norm: torch.Tensor  # [L] mean ||h|| over positive and negative prompts
    mean_projection: torch.Tensor  # [L] mean v · u (> 0 by construction)


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
