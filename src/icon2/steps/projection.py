"""A6's judge-free criterion: how far an answer reads along its criterion's direction.

The starting model re-reads each answer **without steering** — the instruction rendered with
the chat template (generation prompt included), then the answer's tokens, no end-of-turn
token — and the answer's projection is

    proj = mean over l ∈ L of  mean over the answer's tokens t of  h^l_t · u^l_c / s^l_c

with u^l_c the unit direction of the instruction's criterion c at layer l and s^l_c its mean
contrastive-vector norm (``<c>:contrastive_norm`` in the direction file): 1.0 is how far the
positive vs negative system prompt moves a state, the unit γ is measured in by default. A
pair's projection gap is proj(chosen) − proj(rejected).

L is one set for the whole grid (``select.projection_layers``; default the middle third of
the model, the default controlled layers of ``pairs``), not each setting's own range: the
model reads plain text, so the gap measures what the steering left in the answers, and one
yardstick keeps the settings' gaps comparable (a range's own layers would change the ruler
with the setting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from icon2.model.chat import render_prompt
from icon2.model.states import answer_token_means
from icon2.steps.direction_file import DirectionFile


def project(
    means: torch.Tensor, dfile: DirectionFile, criteria: Sequence[str], layers: Sequence[int]
) -> np.ndarray:
    """float64 [n]: row i's mean over ``layers`` of means[i, l] · u^l_c / s^l_c.

    Args:
        means: [n, len(layers), d] mean states over each answer's tokens.
        criteria: row i's criterion c (a direction in ``dfile``).
        layers: the 1-based layers of ``means``' second axis (rows of ``dfile``).
    """
    if means.shape[:2] != (len(criteria), len(layers)):
        raise ValueError(
            f"means have shape {list(means.shape)}, expected [{len(criteria)}, {len(layers)}, d]"
        )
    rows = [dfile.layers.index(layer) for layer in layers]
    out = np.empty(len(criteria))
    for c in set(criteria):
        cd = dfile.criteria[c]
        u = cd.direction[rows].float()  # [L, d]
        s = cd.contrastive_norm[rows].float()  # [L]
        mine = [i for i, x in enumerate(criteria) if x == c]
        out[mine] = ((means[mine].float() * u).sum(-1) / s).mean(-1).double().numpy()
    return out


class Projector:
    """:func:`project` of answers the model re-reads (``answer_token_means``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dfile: DirectionFile,
        *,
        layers: Sequence[int],
        system: str | None,
        batch_size: int,
    ) -> None:
        self.model, self.tokenizer, self.dfile = model, tokenizer, dfile
        self.layers, self.system, self.batch_size = list(layers), system, batch_size
        self.tokens_read = 0  # prompt + answer tokens read so far (cost accounting)

    def project(
        self, instructions: Sequence[str], answers: Sequence[str], criteria: Sequence[str]
    ) -> np.ndarray:
        """float64 [n] projections of answers[i] to instructions[i] on criteria[i]."""
        means = answer_token_means(
            self.model,
            self.tokenizer,
            instructions,
            answers,
            layers=self.layers,
            system=self.system,
            batch_size=self.batch_size,
        )
        tok = self.tokenizer
        self.tokens_read += sum(
            len(tok(render_prompt(tok, x, self.system) + y, add_special_tokens=False)["input_ids"])
            for x, y in zip(instructions, answers, strict=True)
        )
        return project(means, self.dfile, criteria, self.layers)
