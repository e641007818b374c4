from __future__ import annotations

import pytest
import torch

from icon2.engines.base import Steering, as_steering


def test_per_row_vectors_become_groups_of_identical_rows() -> None:
    up, down = torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1.0])
    rows = {
        3: torch.stack([up, down, up, up, down]),
        5: torch.stack([2 * up, down, 2 * up, up, down]),
    }
    s = as_steering(rows, 5)
    assert s is not None
    # Row 3 equals row 0 at layer 3 but not at layer 5: a group of its own.
    assert s.groups == (0, 1, 0, 2, 1) and s.size == 3
    for layer, dense in rows.items():
        torch.testing.assert_close(s.rows(range(5))[layer], dense)
    assert s.members() == [[0, 2], [1, 4], [3]]
    # Rows that differ below float32's precision stay apart (bf16 rows group too).
    fine = torch.tensor([[1.0], [1.0 + 1e-12]], dtype=torch.float64)
    assert as_steering({1: fine}, 2).groups == (0, 1)  # type: ignore[union-attr]
    half = torch.tensor([[0.5], [0.5], [0.25]], dtype=torch.bfloat16)
    assert as_steering({1: half}, 3).groups == (0, 0, 1)  # type: ignore[union-attr]


def test_groups_pick_their_rows_and_a_swap_shows() -> None:
    table = {2: torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    s = Steering(table, (1, 0, 1))
    torch.testing.assert_close(
        s.rows([0, 1, 2])[2], torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    )
    swapped = Steering(table, (0, 1, 0))
    assert not torch.equal(swapped.rows([0])[2], s.rows([0])[2])


def test_no_steering_and_bad_shapes() -> None:
    assert as_steering(None, 3) is None and as_steering({}, 3) is None
    assert as_steering(Steering({}, (0, 0, 0)), 3) is None  # no layers: nothing to add
    with pytest.raises(ValueError, match="3 prompts"):
        as_steering({2: torch.zeros(4, 8)}, 3)
    with pytest.raises(ValueError, match="2 prompts"):
        as_steering(Steering({2: torch.zeros(1, 8)}, (0, 0, 0)), 2)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        Steering({2: torch.zeros(2, 8)}, (0, 2))
    with pytest.raises(ValueError, match="alike"):
        Steering({2: torch.zeros(2, 8), 3: torch.zeros(3, 8)}, (0,))
