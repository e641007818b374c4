"""Tests for icon2.train.dro_state: when the trainer solves, and the rows a batch gets."""

from __future__ import annotations

import numpy as np
import torch

from icon2.train.dro import solve_worst_case
from icon2.train.dro_pieces import tangent_pieces
from icon2.train.dro_state import DROState, correlation

PIECES = tangent_pieces(3)


def _record(state: DROState, step: int, xi: np.ndarray, index: np.ndarray) -> None:
    sol = solve_worst_case(xi, 0.1, PIECES, support_min=0.05)
    state.record(step, index, xi, sol, xi_seconds=0.5, solve_seconds=0.25)


def test_rows_are_plain_dpo_before_the_first_solve() -> None:
    alpha, q = DROState(pieces=3).rows(np.array([4, 0]))
    np.testing.assert_array_equal(alpha.numpy(), [[1, 0, 0], [1, 0, 0]])
    assert torch.count_nonzero(q) == 0


def test_due_waits_for_the_warmup_then_solves_once_or_every_n() -> None:
    once, every = DROState(pieces=3), DROState(pieces=3)
    assert not once.due(1, warmup_steps=2, resolve_every=0)
    assert once.due(2, warmup_steps=2, resolve_every=0)
    xi = np.array([0.2, 0.5, 0.9])
    _record(once, 2, xi, np.arange(3))
    _record(every, 2, xi, np.arange(3))
    assert not once.due(50, warmup_steps=2, resolve_every=0)
    assert not every.due(4, warmup_steps=2, resolve_every=3)
    assert every.due(5, warmup_steps=2, resolve_every=3)


def test_a_solve_on_equal_xi_is_not_informative_and_is_retried() -> None:
    state = DROState(pieces=3)
    _record(state, 3, np.full(4, 0.5), np.arange(4))  # policy = reference: ξ ≡ 1/2
    assert state.solves == 1 and not state.informative
    assert state.due(4, warmup_steps=3, resolve_every=0)
    assert state.weight_confusion_corr is None  # no spread in 1 − ξ


def test_record_places_rows_by_pair_index() -> None:
    state = DROState(pieces=3)
    index, xi = np.array([0, 1, 3]), np.array([0.3, 0.6, 0.9])
    _record(state, 1, xi, index)
    assert state.alpha is not None and state.q is not None and state.xi is not None
    assert state.solution is not None
    np.testing.assert_array_equal(state.alpha[index], state.solution.alpha)
    np.testing.assert_array_equal(state.alpha[2], [1, 0, 0])  # absent pair: plain DPO
    assert np.isnan(state.xi[2])
    alpha, q = state.rows(np.array([3, 0]))
    np.testing.assert_array_equal(alpha.numpy(), state.solution.alpha[[2, 0]])
    np.testing.assert_array_equal(q.numpy(), state.solution.q[[2, 0]])
    assert (state.solve_seconds, state.xi_seconds, state.solved_step) == (0.25, 0.5, 1)


def test_correlation_matches_numpy_and_is_none_without_spread() -> None:
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.1, 0.5, 0.2])
    assert correlation(a, b) == np.corrcoef(a, b)[0, 1]
    assert correlation(a, np.ones(3)) is None
