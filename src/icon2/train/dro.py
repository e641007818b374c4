"""Wasserstein-DRO reweighting of the DPO loss.

Pair i has ξ_i = σ(Δ_i) ∈ [0, 1] and loss −log ξ_i. With −log minorised by K tangents, the
worst case over a 1-Wasserstein ball of radius ε (Mohajerin Esfahani & Kuhn, 2018) is an LP whose
solution splits each pair into K weighted, shifted copies; training minimises DPO under it
(the loss of one batch under a solution: :func:`icon2.train.losses.dro_pair_losses`). This
module is the LP side only (NumPy/SciPy); the trainer holds the solution between solves.

The support is Ξ = [support_min, 1]. With support_min = 0 the worst case moves the least
confident pairs all the way to ξ = 0, where −log clamp(σ(Δ) − q/α) sits on its clamp and gives
no gradient at all, the opposite of up-weighting confusing pairs. A small positive floor keeps
every shifted copy at a finite, steeper point of −log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.optimize import linprog

from icon2.core.errors import Icon2Error
from icon2.train.dro_pieces import AffinePieces, FloatArray

# HiGHS returns tiny non-zero α from round-off; treating them as 0 avoids huge q/α shifts.
_ALPHA_TOL = 1e-12


@dataclass(frozen=True)
class WorstCase:
    """Solution of the worst-case LP.

    Attributes:
        alpha: Copy weights α_ik, shape [N, K]; rows sum to 1.
        q: Mass-weighted shifts q_ik, shape [N, K]; copy k of pair i sits at ξ_i − q_ik/α_ik.
        value: LP optimum, the worst-case expected (piecewise-linear) loss.
        empirical: (1/N) Σ_i max_k ℓ_k(ξ_i), the loss under the empirical distribution (of the
            ξ raised to ``support_min``).
        eps: Wasserstein radius used.
        support_min: Lower end of the support Ξ = [support_min, 1].
    """

    alpha: FloatArray
    q: FloatArray
    value: float
    empirical: float
    eps: float
    support_min: float = 0.0

    def shifted(self, xi: FloatArray) -> FloatArray:
        """Support points max(ξ_i, support_min) − q_ik/α_ik of Q, shape [N, K].

        Copies with α_ik = 0 stay at max(ξ_i, support_min). The result is clipped to
        [support_min, 1]: the LP meets the support constraint only up to solver tolerance.
        """
        lo = self.support_min
        xi_col = np.maximum(np.asarray(xi, dtype=np.float64), lo)[:, None]
        pos = self.alpha > 0
        shift = np.divide(self.q, self.alpha, out=np.zeros_like(self.q), where=pos)
        return np.asarray(np.clip(xi_col - shift, lo, 1.0))


class DROError(Icon2Error, ValueError):
    """The worst-case LP was infeasible, unbounded or the solver failed (a ``train.dro``
    setting the solver cannot handle); reported as one ``error:`` line by the stages."""


def _check_xi(xi: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(xi, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"xi must be a non-empty 1-D array, got shape {arr.shape}")
    bad = np.flatnonzero(~((arr >= 0.0) & (arr <= 1.0)))  # also catches NaN
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"xi[{i}] = {arr[i]} is outside [0, 1]")
    return arr


def _check_eps(eps: float) -> None:
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _check_support_min(support_min: float) -> None:
    if not 0.0 <= support_min < 1.0:  # also catches NaN
        raise ValueError(f"support_min must lie in [0, 1), got {support_min}")


def _build_lp(
    x: FloatArray, eps: float, pieces: AffinePieces, support_min: float
) -> tuple[FloatArray, sp.csr_matrix, FloatArray, sp.csr_matrix, FloatArray]:
    """LP data (c, A_ub, b_ub, A_eq, bounds) over variables [α, q, (s)], row-major in (i, k).

    ``x`` must already lie in the support [support_min, 1].
    """
    n, k = x.size, pieces.a.size
    nk = n * k
    xr = np.repeat(x, k)  # ξ_i repeated for each piece
    a = np.tile(pieces.a, n)
    eye = sp.identity(nk, format="csr")
    # If no piece increases, shifting mass upwards (q < 0) only spends budget, so q >= 0 loses
    # nothing. Then |q| = q, the s variables and the "shifted point <= 1" rows are redundant;
    # dropping them makes HiGHS ~4x faster (N = 1000: ~0.2 s instead of ~0.75 s). The argument
    # does not involve the lower end of the support, so it holds for any support_min.
    mono = bool(np.all(pieces.a <= 0))
    # Objective a_k(α ξ_i − q) + b_k α, negated because linprog minimises. It is kept as a sum,
    # not a mean: dividing by N would shrink costs towards HiGHS's tolerances.
    c = [-(a * xr + np.tile(pieces.b, n)), a]
    # α (ξ − support_min) − q >= 0 (shifted point >= support_min)
    rows = [sp.hstack([sp.diags(support_min - xr), eye])]
    lo = [np.zeros(nk), np.zeros(nk) if mono else np.full(nk, -np.inf)]
    if not mono:
        z = sp.csr_matrix((nk, nk))
        c.append(np.zeros(nk))
        lo.append(np.zeros(nk))
        rows = [
            sp.hstack([rows[0], z]),
            sp.hstack([sp.diags(xr - 1.0), -eye, z]),  # α ξ − q <= α (shifted point <= 1)
            sp.hstack([z, eye, -eye]),  # q − s <= 0
            sp.hstack([z, -eye, -eye]),  # −q − s <= 0
        ]
    nvar = len(c) * nk
    # Transport budget (1/N) Σ|q| <= ε, scaled by N; |q| is q or s depending on the branch.
    budget = sp.hstack([sp.csr_matrix((1, nvar - nk)), np.ones((1, nk))])
    a_ub = sp.vstack([budget, *rows], format="csr")
    b_ub = np.concatenate([[n * eps], np.zeros(a_ub.shape[0] - 1)])
    # Σ_k α_ik = 1: row i has ones at columns i*K .. i*K+K-1.
    a_eq = sp.hstack([sp.kron(sp.identity(n), np.ones((1, k))), sp.csr_matrix((n, nvar - nk))])
    bounds = np.stack([np.concatenate(lo), np.full(nvar, np.inf)], axis=1)
    return np.concatenate(c), a_ub, b_ub, a_eq.tocsr(), bounds


def symmetrise(
    x: FloatArray, alpha: FloatArray, q: FloatArray, decimals: int = 6
) -> tuple[FloatArray, FloatArray]:
    """Give pairs with equal ξ the same rows: the mean of their (α, q) rows.

    When several pairs share one ξ (above all at step 0, where policy = reference gives
    Δ ≡ 0 and ξ ≡ 1/2), the LP has many optimal vertices and HiGHS returns an arbitrary one:
    a few index-scattered pairs take the whole budget. Averaging the rows of each group of
    equal ξ keeps the point optimal — the per-pair constraints are the same for equal ξ,
    Σ|q| can only shrink, and the objective is linear — and makes the solution symmetric:
    it no longer depends on the order of the pairs. ξ equal to ``decimals`` places count as
    equal: the log-probabilities behind them are float32 sums, so a policy that has barely
    moved gives ξ that differ only by round-off, and those carry no preference either.
    """
    keys = np.round(x, decimals)
    _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if counts.max() == 1:
        return alpha, q
    sums_a = np.zeros((counts.size, alpha.shape[1]))
    sums_q = np.zeros_like(sums_a)
    np.add.at(sums_a, group, alpha)
    np.add.at(sums_q, group, q)
    return sums_a[group] / counts[group, None], sums_q[group] / counts[group, None]


def pair_weights(xi: FloatArray, sol: WorstCase) -> FloatArray:
    """How much harder each pair pulls under the worst case than under plain DPO.

    The gradient of copy k's loss −log(ξ − c_k) is 1/(ξ − c_k) times that of ξ; relative to
    plain DPO's 1/ξ, pair i's weight is Σ_k α_ik ξ'_i / (ξ'_i − c_ik) with ξ' = max(ξ,
    support_min). 1 = untouched; larger = moved towards the steep end of −log.
    """
    x = np.maximum(np.asarray(xi, dtype=np.float64), sol.support_min)
    points = sol.shifted(xi)
    return np.asarray(np.sum(sol.alpha * x[:, None] / np.maximum(points, 1e-12), axis=1))


def solve_worst_case(
    xi: FloatArray,
    eps: float,
    pieces: AffinePieces,
    *,
    group: str = "all",
    support_min: float = 0.0,
) -> WorstCase:
    """Solve the worst-case LP over the ε-Wasserstein ball around the empirical ξ.

    Variables are α >= 0, q and (when some piece increases) s >= |q| linearising the transport
    cost; α ℓ_k(ξ_i − q/α) = a_k(α ξ_i − q) + b_k α makes the objective linear.

    Args:
        xi: Preference probabilities, shape [N], in [0, 1].
        eps: Wasserstein radius (average transport budget per pair), >= 0.
        pieces: Affine minorants of −log.
        group: Label used in error messages.
        support_min: Lower end of the support Ξ = [support_min, 1], in [0, 1). ξ below it is
            raised to it before solving, so such pairs cannot be shifted further down.

    Returns:
        The worst-case solution (``value`` is the per-pair mean).

    Raises:
        ValueError: If ``xi``, ``eps`` or ``support_min`` is invalid.
        DROError: If the LP solve does not succeed.
    """
    x = _check_xi(xi)
    _check_eps(eps)
    _check_support_min(support_min)
    # The empirical distribution must lie in Ξ for the ball around it to be well defined.
    x = np.maximum(x, support_min)
    n, k = x.size, pieces.a.size
    c, a_ub, b_ub, a_eq, bounds = _build_lp(x, eps, pieces, support_min)
    res = linprog(
        c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(n), bounds=bounds, method="highs"
    )
    if res.status != 0 or res.x is None:
        raise DROError(
            f"worst-case LP failed for group {group!r} with eps={eps}: "
            f"status {res.status} ({res.message})"
        )
    alpha, q = symmetrise(x, res.x[: n * k].reshape(n, k), res.x[n * k : 2 * n * k].reshape(n, k))
    alpha = np.where(alpha > _ALPHA_TOL, alpha, 0.0)
    # With α = 0 the support constraint forces q = 0; zero it exactly to drop solver noise.
    q = np.where(alpha > 0, q, 0.0)
    return WorstCase(
        alpha=alpha,
        q=q,
        value=float(-res.fun) / n,
        empirical=float(np.mean(pieces(x))),
        eps=eps,
        support_min=support_min,
    )


def solve_in_groups(
    xi: FloatArray,
    eps: float,
    pieces: AffinePieces,
    group_size: int,
    *,
    support_min: float = 0.0,
) -> WorstCase:
    """Solve the LP independently on consecutive groups of pairs.

    Each group gets the same per-pair budget ε, so the result is a feasible (though in general
    not optimal) point of the full problem; grouping keeps each LP small.

    Args:
        xi: Preference probabilities, shape [N], in [0, 1].
        eps: Wasserstein radius, applied to every group, >= 0.
        pieces: Affine minorants of −log.
        group_size: Pairs per group (>= 1); the last group may be smaller.
        support_min: Lower end of the support, as for ``solve_worst_case``.

    Returns:
        Concatenated solution; ``value`` and ``empirical`` are group-size-weighted means.

    Raises:
        ValueError: On invalid inputs (as for ``solve_worst_case``) or ``group_size`` < 1.
        DROError: If any group's LP fails; the message names the group's index range.
    """
    x = _check_xi(xi)
    _check_eps(eps)
    _check_support_min(support_min)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    parts = [
        solve_worst_case(
            x[s : s + group_size],
            eps,
            pieces,
            group=f"{s}:{min(s + group_size, x.size)}",
            support_min=support_min,
        )
        for s in range(0, x.size, group_size)
    ]
    sizes = np.array([p.alpha.shape[0] for p in parts], dtype=np.float64)
    return WorstCase(
        alpha=np.concatenate([p.alpha for p in parts]),
        q=np.concatenate([p.q for p in parts]),
        value=float(np.dot(sizes, [p.value for p in parts]) / x.size),
        empirical=float(np.dot(sizes, [p.empirical for p in parts]) / x.size),
        eps=eps,
        support_min=support_min,
    )
