"""The direction file's helpers that stages share: the controlled layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icon2.core.errors import ModelError
from icon2.steps.direction_file import CriterionDirections, DirectionFile, controlled_layers


def _dfile(layers: list[int], d: int = 4) -> DirectionFile:
    n = len(layers)
    cd = CriterionDirections(
        direction=torch.eye(n, d),
        evr=torch.ones(n),
        contrastive_norm=torch.ones(n),
        hidden_norm=torch.ones(n),
        mean_projection=torch.zeros(n),
    )
    return DirectionFile(layers=layers, criteria={"general": cd}, meta={})


def test_default_is_the_middle_third_the_file_holds() -> None:
    path = Path("dir.safetensors")
    assert controlled_layers(_dfile(list(range(1, 31))), None, 30, path) == list(range(10, 21))
    # Only the middle layers the file has rows for.
    assert controlled_layers(_dfile([1, 2, 12, 15]), None, 30, path) == [12, 15]
    assert controlled_layers(_dfile([1, 2, 3]), [3, 1], 3, path) == [1, 3]


def test_missing_layers_name_the_key_and_the_file() -> None:
    with pytest.raises(ModelError, match=r"pairs\.layers: layer\(s\) \[3\] are not in d\.st"):
        controlled_layers(_dfile([1, 2]), [2, 3], 4, Path("d.st"))
    with pytest.raises(ModelError, match=r"select\.x: .*outside the model"):
        controlled_layers(_dfile([1, 2]), [9], 4, Path("d.st"), key="select.x")
