"""A6's judge-free criterion: answers projected on their criterion's direction."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from icon2.model.states import answer_token_means
from icon2.steps.direction_file import CriterionDirections, DirectionFile
from icon2.steps.projection import Projector, project
from tests.steps.test_pairs import _dfile


def test_project_is_the_layer_mean_of_scaled_dot_products() -> None:
    dfile = _dfile()  # honesty = e_0, general = e_1; contrastive norms [1, 2, 3] × (1, 2)
    means = torch.zeros(3, 2, 64)
    means[0, :, 0] = torch.tensor([2.0, 4.0])  # honesty: norms 2, 3 at layers 2, 3
    means[0, :, 1] = 100.0  # along general's direction: not honesty's
    means[1, :, 1] = torch.tensor([8.0, 12.0])  # general: norms 4, 6 at layers 2, 3
    means[2, :, 0] = -3.0
    out = project(means, dfile, ["honesty", "general", "honesty"], [2, 3])
    assert out.dtype == np.float64
    assert out == pytest.approx([(2 / 2 + 4 / 3) / 2, (8 / 4 + 12 / 6) / 2, (-3 / 2 - 3 / 3) / 2])
    with pytest.raises(ValueError, match="expected"):
        project(means, dfile, ["honesty"], [2, 3])


def _direction_between(
    model: Any, tok: Any, high: str, low: str, layers: list[int]
) -> DirectionFile:
    """A direction file whose honesty direction at ``layers`` points from the answer
    ``low``'s mean state to ``high``'s: ``high`` must project above ``low``."""
    means = answer_token_means(
        model,
        tok,
        ["Tell me about it.", "Tell me about it."],
        [high, low],
        layers=layers,
        system=None,
        batch_size=2,
    )
    diff = means[0] - means[1]
    n = int(model.config.num_hidden_layers)
    direction = torch.zeros(n, diff.shape[1])
    for row, layer in enumerate(layers):
        direction[layer - 1] = diff[row] / diff[row].norm()
    cd = CriterionDirections(
        direction=direction,
        evr=torch.full((n,), 0.5),
        contrastive_norm=torch.arange(1.0, n + 1),
        hidden_norm=torch.ones(n),
        mean_projection=torch.zeros(n),
    )
    return DirectionFile(layers=list(range(1, n + 1)), criteria={"honesty": cd}, meta={})


def test_projector_reads_the_answers_and_the_gap_flips_with_a_swap(tiny_model: Any) -> None:
    model, tok = tiny_model
    high, low = "I do not know; I would be guessing.", "Certainly! The answer is 42."
    dfile = _direction_between(model, tok, high, low, [1, 2])
    projector = Projector(model, tok, dfile, layers=[1, 2], system=None, batch_size=4)
    x = ["Tell me about it."] * 2
    chosen, rejected = projector.project(x, [high, low], ["honesty"] * 2)
    assert chosen > rejected  # by construction of the direction
    swapped = projector.project(x, [low, high], ["honesty"] * 2)
    assert swapped[0] - swapped[1] == pytest.approx(-(chosen - rejected))
    # The same numbers as project() on the means read by hand.
    means = answer_token_means(model, tok, x, [high, low], layers=[1, 2], system=None, batch_size=1)
    assert project(means, dfile, ["honesty"] * 2, [1, 2]) == pytest.approx([chosen, rejected])
    assert projector.tokens_read > 2 * len(tok(high, add_special_tokens=False)["input_ids"])
