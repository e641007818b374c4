"""Tests for icon2.train.dro (tangent pieces, the worst-case LP) and the DPO loss under its
solution (icon2.train.losses.dro_pair_losses)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import OptimizeResult

from icon2.train import dro
from icon2.train.dro import (
    DROError,
    WorstCase,
    pair_weights,
    solve_in_groups,
    solve_worst_case,
)
from icon2.train.dro_pieces import AffinePieces, tangent_pieces
from icon2.train.losses import dro_pair_losses

EPS_GRID = (0.0, 0.01, 0.05, 0.2, 0.6)
# Pieces with an increasing slope exercise the general branch of the LP (s >= |q|, q free).
MIXED = AffinePieces(a=np.array([-3.0, -1.0, 0.5]), b=np.array([2.0, 1.2, 0.3]), t=np.zeros(3))


def _envelope(y: np.ndarray, pieces: AffinePieces) -> np.ndarray:
    return np.max(np.multiply.outer(y, pieces.a) + pieces.b, axis=-1)


def _dual_value(xi: np.ndarray, eps: float, pieces: AffinePieces, lo: float = 0.0) -> float:
    """inf_{λ>=0} λε + (1/N) Σ_i sup_{ξ∈[lo,1]} [max_k ℓ_k(ξ) − λ|ξ − ξ_i|], evaluated exactly.

    The inner sup of a piecewise-linear function sits at lo, 1, ξ_i or a kink (pairwise piece
    crossings form a superset of kinks). As a function of λ each inner sup is a max of lines, so
    the convex outer objective attains its minimum at λ = 0 or where two such lines cross.
    All ξ_i must already lie in [lo, 1].
    """
    a, b = pieces.a, pieces.b
    kinks = [
        (b[j] - b[i]) / (a[i] - a[j])
        for i, j in itertools.combinations(range(a.size), 2)
        if a[i] != a[j]
    ]
    base = np.array([lo, 1.0, *[z for z in kinks if lo <= z <= 1.0]])
    heights, slopes = [], []  # line c: L(c) − λ|c − ξ_i|
    for x in xi:
        cand = np.append(base, x)
        heights.append(_envelope(cand, pieces))
        slopes.append(np.abs(cand - x))
    lambdas = {0.0}
    for h, d in zip(heights, slopes, strict=True):
        for u, v in itertools.combinations(range(h.size), 2):
            if d[u] != d[v]:
                lam = (h[u] - h[v]) / (d[u] - d[v])
                if lam >= 0:
                    lambdas.add(float(lam))

    def g(lam: float) -> float:
        inner = [np.max(h - lam * d) for h, d in zip(heights, slopes, strict=True)]
        return lam * eps + float(np.mean(inner))

    return min(g(lam) for lam in lambdas)


def _knapsack_value(xi: np.ndarray, eps: float, pieces: AffinePieces) -> float:
    """Closed form for non-increasing pieces: move mass to ξ = 0, best gain per cost first."""
    base = _envelope(xi, pieces)
    top = float(_envelope(np.zeros(1), pieces)[0])
    budget, gain = eps * xi.size, 0.0
    pos = xi > 0
    order = np.argsort(-(top - base[pos]) / xi[pos], kind="stable")
    for cost, g in zip(xi[pos][order], (top - base[pos])[order], strict=True):
        frac = min(1.0, budget / cost)
        gain += frac * g
        budget -= frac * cost
        if budget <= 0:
            break
    return float(np.mean(base) + gain / xi.size)


def _assert_feasible(
    sol: WorstCase, xi: np.ndarray, eps: float, tol: float = 1e-8, lo: float = 0.0
) -> None:
    n = xi.size
    assert sol.alpha.shape == sol.q.shape == (n, sol.alpha.shape[1])
    assert np.all(sol.alpha >= 0)
    np.testing.assert_allclose(sol.alpha.sum(axis=1), 1.0, atol=tol)
    assert np.abs(sol.q).sum() / n <= eps + tol
    moved = sol.alpha * xi[:, None] - sol.q  # α ξ − q must lie in [α lo, α]
    assert np.all(moved >= sol.alpha * lo - tol)
    assert np.all(moved <= sol.alpha + tol)


def _primal_objective(sol: WorstCase, xi: np.ndarray, pieces: AffinePieces) -> float:
    moved = sol.alpha * xi[:, None] - sol.q
    return float(np.mean(np.sum(pieces.a * moved + pieces.b * sol.alpha, axis=1)))


def test_tangent_pieces_minorise_and_touch_neg_log() -> None:
    pieces = tangent_pieces(5, t_min=0.05)
    assert pieces.t[0] == pytest.approx(0.05) and pieces.t[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(np.log(pieces.t)), np.log(20.0) / 4)  # geometric
    grid = np.linspace(1e-4, 1.0, 20001)
    lines = np.multiply.outer(grid, pieces.a) + pieces.b
    assert np.all(lines <= -np.log(grid)[:, None] + 1e-12)
    np.testing.assert_allclose(pieces.a * pieces.t + pieces.b, -np.log(pieces.t), atol=1e-14)
    np.testing.assert_allclose(pieces(pieces.t), -np.log(pieces.t), atol=1e-14)
    assert tangent_pieces(1).a.shape == (1,)


def test_eps_zero_is_plain_dpo() -> None:
    rng = np.random.default_rng(0)
    xi = rng.uniform(0.01, 0.99, size=64)
    pieces = tangent_pieces(5)
    sol = solve_worst_case(xi, 0.0, pieces)
    assert np.all(sol.q == 0.0)
    assert sol.value == pytest.approx(sol.empirical, abs=1e-8)
    np.testing.assert_allclose(sol.shifted(xi), np.repeat(xi[:, None], 5, axis=1))
    for dtype in (torch.float32, torch.float64):
        delta = torch.randn(64, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 4
        d1 = delta.clone().requires_grad_(True)
        d2 = delta.clone().requires_grad_(True)
        loss = dro_pair_losses(d1, torch.from_numpy(sol.alpha), torch.from_numpy(sol.q))
        ref = -F.logsigmoid(d2)
        assert loss.dtype == dtype and torch.equal(loss, ref)
        weights = torch.linspace(0.5, 2.0, 64, dtype=dtype)
        (loss * weights).sum().backward()
        (ref * weights).sum().backward()
        assert d1.grad is not None and d2.grad is not None
        assert torch.equal(d1.grad, d2.grad)


@pytest.mark.parametrize("pieces", [tangent_pieces(5), tangent_pieces(3, 0.2), MIXED])
@pytest.mark.parametrize("n", [3, 4, 6])
def test_lp_matches_dual_and_is_feasible(pieces: AffinePieces, n: int) -> None:
    rng = np.random.default_rng(100 + n)
    for trial in range(3):
        xi = rng.uniform(size=n)
        if trial == 2:
            xi[0], xi[-1] = 0.0, 1.0  # boundary points of Ξ
        values = []
        for eps in EPS_GRID:
            sol = solve_worst_case(xi, eps, pieces)
            _assert_feasible(sol, xi, eps)
            assert sol.value == pytest.approx(_dual_value(xi, eps, pieces), rel=1e-6, abs=1e-9)
            assert sol.value == pytest.approx(_primal_objective(sol, xi, pieces), abs=1e-8)
            assert sol.empirical == pytest.approx(float(np.mean(_envelope(xi, pieces))))
            assert sol.value >= sol.empirical - 1e-9
            values.append(sol.value)
        assert np.all(np.diff(values) >= -1e-9)


def test_lp_matches_closed_form_on_larger_n() -> None:
    rng = np.random.default_rng(7)
    xi = rng.beta(2.0, 1.0, size=300)
    pieces = tangent_pieces(5)
    for eps in (0.005, 0.05, 0.3):
        sol = solve_worst_case(xi, eps, pieces)
        _assert_feasible(sol, xi, eps)
        assert sol.value == pytest.approx(_knapsack_value(xi, eps, pieces), rel=1e-7)


def test_worst_case_moves_mass_towards_small_xi() -> None:
    rng = np.random.default_rng(3)
    xi = rng.uniform(0.05, 0.95, size=50)
    pieces = tangent_pieces(5)
    for eps in (0.01, 0.05, 0.2):
        sol = solve_worst_case(xi, eps, pieces)
        shifted = sol.shifted(xi)
        assert np.all((shifted >= 0) & (shifted <= 1))
        assert np.all(shifted <= xi[:, None] + 1e-9)  # no copy moves up
        mean_q = float(np.sum(sol.alpha * shifted) / xi.size)
        assert mean_q < xi.mean() - 0.5 * eps  # budget is (nearly) spent moving mass down
        assert sol.value > sol.empirical


def test_dro_pair_losses_shifted_and_zero_alpha() -> None:
    delta = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.5]], dtype=torch.float64)
    q = torch.tensor([[0.05, 0.0, 0.0], [0.0, 0.0, 0.0], [0.6, 0.0, 0.0]], dtype=torch.float64)
    loss = dro_pair_losses(delta, alpha, q)
    p = torch.sigmoid(delta.detach())
    expected = torch.stack(
        [
            -0.25 * torch.log(p[0] - 0.2) - 0.75 * torch.log(p[0]),
            -torch.log(p[1]),
            -0.5 * np.log(1e-6) - 0.5 * torch.log(p[2]),  # σ(2) − 1.2 < 0 is clamped
        ]
    )
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    assert delta.grad is not None and torch.all(torch.isfinite(delta.grad))
    assert delta.grad[0] < 0  # larger margin lowers the loss; shifted copies steepen the slope
    assert delta.grad[0] < -(1 - p[0])


def test_solve_in_groups() -> None:
    rng = np.random.default_rng(5)
    xi = rng.uniform(size=7)
    pieces = tangent_pieces(4)
    full = solve_worst_case(xi, 0.1, pieces)
    one = solve_in_groups(xi, 0.1, pieces, group_size=10)
    np.testing.assert_allclose(one.alpha, full.alpha)
    np.testing.assert_allclose(one.q, full.q)
    assert one.value == pytest.approx(full.value) and one.empirical == pytest.approx(full.empirical)

    ragged = solve_in_groups(xi, 0.1, pieces, group_size=3)  # groups of 3, 3, 1
    parts = [solve_worst_case(xi[s : s + 3], 0.1, pieces) for s in (0, 3, 6)]
    np.testing.assert_allclose(ragged.alpha, np.concatenate([p.alpha for p in parts]))
    np.testing.assert_allclose(ragged.q, np.concatenate([p.q for p in parts]))
    assert ragged.value == pytest.approx(
        (3 * parts[0].value + 3 * parts[1].value + parts[2].value) / 7
    )
    assert ragged.empirical == pytest.approx(full.empirical)
    _assert_feasible(ragged, xi, 0.1)  # per-group budgets add up to the global one
    assert ragged.value <= full.value + 1e-9
    with pytest.raises(ValueError, match="group_size"):
        solve_in_groups(xi, 0.1, pieces, group_size=0)


@pytest.mark.parametrize("pieces", [tangent_pieces(5), MIXED])
def test_support_min_keeps_shifted_points_above_floor(pieces: AffinePieces) -> None:
    rng = np.random.default_rng(11)
    lo = 0.05
    xi = np.concatenate([[0.0, 0.01, lo, 1.0], rng.uniform(size=4)])  # some below the floor
    raised = np.maximum(xi, lo)
    for eps in EPS_GRID:
        sol = solve_worst_case(xi, eps, pieces, support_min=lo)
        assert sol.support_min == lo
        # Feasible for the LP over Ξ = [lo, 1] around the raised empirical points ...
        _assert_feasible(sol, raised, eps, lo=lo)
        # ... with shifts that never take a copy below the floor, not even before clipping.
        pos = sol.alpha > 0
        raw = raised[:, None] - np.divide(sol.q, sol.alpha, out=np.zeros_like(sol.q), where=pos)
        assert np.all(raw[pos] >= lo - 1e-7)
        assert np.all(sol.shifted(xi) >= lo)
        # Strong duality still holds once the dual's support is [lo, 1] as well.
        assert sol.value == pytest.approx(_dual_value(raised, eps, pieces, lo), rel=1e-6, abs=1e-9)
        assert sol.value == pytest.approx(_primal_objective(sol, raised, pieces), abs=1e-8)
        assert sol.empirical == pytest.approx(float(np.mean(_envelope(raised, pieces))))
        grouped = solve_in_groups(xi, eps, pieces, group_size=3, support_min=lo)
        assert grouped.support_min == lo
        assert np.all(grouped.shifted(xi) >= lo)
    # support_min = 0 is the old behaviour.
    default, zero = (
        solve_worst_case(xi, 0.2, pieces),
        solve_worst_case(xi, 0.2, pieces, support_min=0.0),
    )
    np.testing.assert_array_equal(default.alpha, zero.alpha)
    np.testing.assert_array_equal(default.q, zero.q)
    for bad in (-0.1, 1.0, np.nan):
        with pytest.raises(ValueError, match="support_min"):
            solve_worst_case(xi, 0.1, pieces, support_min=bad)
        with pytest.raises(ValueError, match="support_min"):
            solve_in_groups(xi, 0.1, pieces, 4, support_min=bad)


def test_support_min_gives_moved_pairs_a_gradient() -> None:
    """The flaw support_min fixes: copies moved to ξ = 0 sit on the clamp and get no gradient."""
    delta = torch.tensor([-2.0, -1.5, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    xi = torch.sigmoid(delta).numpy()
    pieces = tangent_pieces(5)
    grads = {}
    for lo in (0.0, 0.05):
        sol = solve_worst_case(xi, 0.05, pieces, support_min=lo)
        d = delta.clone().requires_grad_(True)
        dro_pair_losses(d, torch.from_numpy(sol.alpha), torch.from_numpy(sol.q)).sum().backward()
        assert d.grad is not None
        grads[lo] = d.grad
    plain = torch.sigmoid(delta) - 1.0  # d/dΔ of −log σ(Δ)
    # With Ξ = [0, 1] the least confident pair is moved to ξ ≈ 0 entirely: its gradient
    # explodes (the loss point sits at the last-resort clamp, 1e-6).
    assert grads[0.0][0] < 1e4 * plain[0]
    # With a floor it keeps a gradient, steeper than plain DPO's (it is up-weighted).
    assert torch.all(torch.isfinite(grads[0.05]))
    assert grads[0.05][0] < plain[0] < 0


def test_input_errors() -> None:
    pieces = tangent_pieces(3)
    with pytest.raises(ValueError, match="eps"):
        solve_worst_case(np.array([0.5]), -0.1, pieces)
    with pytest.raises(ValueError, match="eps"):
        solve_in_groups(np.array([0.5]), -0.1, pieces, 2)
    with pytest.raises(ValueError, match=r"xi\[2\]"):
        solve_worst_case(np.array([0.1, 0.5, 1.5]), 0.05, pieces)
    with pytest.raises(ValueError, match=r"xi\[0\]"):
        solve_worst_case(np.array([-1e-3, 0.5]), 0.05, pieces)
    with pytest.raises(ValueError, match=r"xi\[1\]"):
        solve_worst_case(np.array([0.1, np.nan]), 0.05, pieces)
    with pytest.raises(ValueError, match="non-empty"):
        solve_worst_case(np.array([]), 0.05, pieces)
    with pytest.raises(ValueError, match="1-D"):
        solve_worst_case(np.full((2, 2), 0.5), 0.05, pieces)
    with pytest.raises(ValueError, match="k"):
        tangent_pieces(0)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="t_min"):
            tangent_pieces(3, t_min=bad)


def test_solver_failure_raises_dro_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> OptimizeResult:
        return OptimizeResult(status=2, x=None, fun=None, message="infeasible")

    monkeypatch.setattr(dro, "linprog", failing)
    with pytest.raises(DROError, match=r"'batch7'.*eps=0.05"):
        solve_worst_case(np.array([0.5, 0.2]), 0.05, tangent_pieces(3), group="batch7")
    with pytest.raises(DROError, match=r"'0:2'"):
        solve_in_groups(np.array([0.5, 0.2, 0.9]), 0.05, tangent_pieces(3), group_size=2)
    assert issubclass(DROError, ValueError)


def test_equal_xi_get_equal_rows_at_the_delta_zero_start() -> None:
    """Step 0 of every run: policy = reference, so Δ ≡ 0 and every ξ = 1/2. The LP's optimum
    is then a face, and HiGHS alone returns an arbitrary vertex of it (a few index-scattered
    pairs take the whole budget); the symmetrised solution treats every pair alike."""
    pieces = tangent_pieces(5)
    xi = np.full(256, 0.5)
    sol = solve_worst_case(xi, 0.05, pieces, support_min=0.05)
    np.testing.assert_allclose(sol.alpha, np.broadcast_to(sol.alpha[0], sol.alpha.shape))
    np.testing.assert_allclose(sol.q, np.broadcast_to(sol.q[0], sol.q.shape))
    weights = pair_weights(xi, sol)
    assert np.ptp(weights) < 1e-9
    assert sol.value > sol.empirical  # still a worst case: it costs more than the data


def test_symmetrise_is_order_invariant_and_keeps_the_optimum() -> None:
    pieces = tangent_pieces(4)
    xi = np.array([0.3, 0.5, 0.5, 0.7, 0.5, 0.3, 0.9])
    sol = solve_worst_case(xi, 0.08, pieces, support_min=0.05)
    perm = np.array([6, 2, 0, 5, 1, 4, 3])
    other = solve_worst_case(xi[perm], 0.08, pieces, support_min=0.05)
    np.testing.assert_allclose(other.alpha, sol.alpha[perm], atol=1e-9)
    np.testing.assert_allclose(other.q, sol.q[perm], atol=1e-9)
    assert other.value == pytest.approx(sol.value, rel=1e-9)
    # Feasible: budget and support still hold after averaging.
    assert np.abs(sol.q).sum() / xi.size <= 0.08 + 1e-9
    assert np.all(sol.shifted(xi) >= 0.05 - 1e-9)


def test_loss_uses_the_lp_support_and_keeps_a_gradient_between_solves() -> None:
    """The loss shifts σ(Δ) within the same support the LP solved on: at the solve it sits on
    the LP's points; when σ(Δ) later falls, the shift shrinks so the point stays ≥ the floor
    with a gradient; a pair below the floor trains as plain DPO (the LP cannot move it)."""
    lo = 0.05
    pieces = tangent_pieces(5)
    delta = torch.tensor([-3.5, -1.0, 0.0, 1.0, 2.5], dtype=torch.float64)  # σ(−3.5) < lo
    xi = torch.sigmoid(delta).numpy()
    sol = solve_worst_case(xi, 0.1, pieces, support_min=lo)
    alpha, q = torch.from_numpy(sol.alpha), torch.from_numpy(sol.q)
    at_solve = dro_pair_losses(delta, alpha, q, support_min=lo)
    expected = (sol.alpha * -np.log(sol.shifted(xi))).sum(axis=1)
    moved = np.any(sol.q > 0, axis=1)
    assert moved.any()
    np.testing.assert_allclose(at_solve.numpy()[moved], expected[moved], rtol=1e-9)
    # Below the floor: untouched by the LP, plain DPO in the loss, with its gradient.
    assert not moved[0]
    # Later, every pair's σ(Δ) has dropped by 0.2: a fixed shift would push moved pairs
    # below the floor onto the clamp; the capped shift keeps a finite, non-zero gradient.
    later = (delta - 1.2).clone().requires_grad_(True)
    dro_pair_losses(later, alpha, q, support_min=lo).sum().backward()
    assert later.grad is not None
    assert torch.all(torch.isfinite(later.grad)) and torch.all(later.grad < 0)


def test_pair_weights_follow_confusion() -> None:
    """Measured property of part C: the worst case up-weights low-confidence pairs."""
    xi = np.linspace(0.15, 0.95, 64)
    sol = solve_worst_case(xi, 0.05, tangent_pieces(5), support_min=0.05)
    w = pair_weights(xi, sol)
    assert np.all(w >= 1.0 - 1e-9)
    assert np.corrcoef(w, 1.0 - xi)[0, 1] > 0.3
