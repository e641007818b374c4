"""The loss side of Wasserstein-DRO DPO (METHOD part C): −log ξ minorised by K affine
pieces, the tangents the worst-case LP (:mod:`icon2.train.dro`) works with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AffinePieces:
    """Affine minorants ℓ_k(ξ) = a_k ξ + b_k of −log ξ: slopes a, intercepts b, tangent points t."""

    a: FloatArray
    b: FloatArray
    t: FloatArray

    def __call__(self, xi: FloatArray) -> FloatArray:
        """Evaluate max_k ℓ_k at every entry of ``xi``."""
        return np.asarray(np.max(np.multiply.outer(xi, self.a) + self.b, axis=-1))


def tangent_pieces(k: int, t_min: float = 0.05) -> AffinePieces:
    """Tangents of −log ξ at K geometrically spaced points in [t_min, 1].

    Geometric spacing puts more tangents near 0, where −log curves most.

    Args:
        k: Number of pieces K (>= 1).
        t_min: Smallest tangent point, in (0, 1).

    Returns:
        Pieces with a = −1/t and b = 1 − log t, so ℓ_k(t_k) = −log t_k.

    Raises:
        ValueError: If ``k`` < 1 or ``t_min`` is not in (0, 1).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    t = np.geomspace(t_min, 1.0, k)
    return AffinePieces(a=-1.0 / t, b=1.0 - np.log(t), t=t)
