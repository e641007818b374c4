"""Win rates of a trained model's answers against the starting model's, from judge preferences.

``p_first[i]`` is a judge's probability that the trained model's answer ("first") beats the
starting model's ("second") on prompt i. Pure functions; the judging is done elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from icon2.evaluate.bootstrap import mean_ci

L2_LENGTH = 1e-3  # ridge on the length coefficient: keeps the fit finite when p is separable


def _rates(p: np.ndarray, tie_margin: float) -> dict[str, float]:
    wins = float(np.sum(p > 0.5 + tie_margin))
    losses = float(np.sum(p < 0.5 - tie_margin))
    ties = p.size - wins - losses
    return {
        "win_rate": (wins + 0.5 * ties) / p.size,
        "strict_win_rate": wins / p.size,
        "tie_rate": ties / p.size,
        "loss_rate": losses / p.size,
        "mean_preference": float(p.mean()),
    }


def length_controlled(
    p_first: np.ndarray, len_first: np.ndarray, len_second: np.ndarray
) -> tuple[float, float]:
    """Fit p ≈ σ(b0 + b1·x), x = tanh((len_first − len_second)/s); return (σ(b0), b1).

    s is the standard deviation of the length differences (1 when they are all equal), so
    x is scale-free and bounded: a few very long answers cannot dominate the fit. The soft
    outcomes p are used as Bernoulli labels; the mean log-likelihood minus 1e-3·b1² is
    maximised with L-BFGS. σ(b0) is the predicted preference when both answers have the
    same length (x = 0), i.e. the preference with the judge's length bias removed.
    """
    diff = np.asarray(len_first, dtype=np.float64) - np.asarray(len_second, dtype=np.float64)
    s = float(diff.std())
    x = np.tanh(diff / (s if s > 0 else 1.0))
    p = np.asarray(p_first, dtype=np.float64)

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = b[0] + b[1] * x
        # −log σ(z) = log(1 + e^−z) and −log(1 − σ(z)) = log(1 + e^z), overflow-free.
        nll = np.mean(p * np.logaddexp(0.0, -z) + (1.0 - p) * np.logaddexp(0.0, z))
        r = expit(z) - p
        grad = np.array([r.mean(), (r * x).mean() + 2 * L2_LENGTH * b[1]])
        return float(nll + L2_LENGTH * b[1] ** 2), grad

    # Start from the intercept-only optimum (logit of the mean preference, clipped).
    m = float(np.clip(p.mean(), 1e-6, 1 - 1e-6))
    fit = minimize(loss, np.array([np.log(m / (1 - m)), 0.0]), jac=True, method="L-BFGS-B")
    b0, b1 = (float(v) for v in fit.x)
    return float(expit(b0)), b1


def summarize(
    p_first: np.ndarray,
    len_first: np.ndarray,
    len_second: np.ndarray,
    *,
    tie_margin: float = 0.05,
    groups: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Win/tie/loss rates, mean lengths and a length-controlled win rate.

    An outcome is a win when p > 0.5 + tie_margin, a loss when p < 0.5 − tie_margin and a
    tie otherwise. ``win_rate`` counts a tie as half a win, (wins + 0.5·ties)/n, the
    AlpacaEval convention; ``strict_win_rate`` is wins/n. ``win_rate_low`` /
    ``win_rate_high`` bound it with a percentile-bootstrap 95 % interval over the prompts
    (scores 1 / 0.5 / 0; resampled with ``seed``).

    The length-controlled win rate ``lc_win_rate`` comes from a logistic regression of the
    soft outcome p on x = tanh((len_first − len_second)/s), s being the standard deviation
    of the length differences (s = 1 when it is 0): p ≈ σ(b0 + b1·x), fitted by maximising
    the Bernoulli log-likelihood with p as soft labels and a small L2 penalty (1e-3) on b1.
    lc_win_rate = σ(b0) is the predicted preference at equal length; ``lc_coef_length`` is
    b1, the judge's pull towards the longer answer.

    Args:
        p_first: [n] judge probabilities that the trained model's answer is better.
        len_first: [n] lengths of the trained model's answers (any unit, e.g. tokens).
        len_second: [n] lengths of the starting model's answers, same unit.
        tie_margin: half-width of the band around 0.5 counted as a tie, in [0, 0.5).
        groups: optional [n] labels (e.g. criterion names); adds ``by_group`` with n,
            win_rate, tie_rate and mean_preference per label.

    Returns:
        n, win_rate (with win_rate_low, win_rate_high), strict_win_rate, tie_rate, loss_rate,
        mean_preference, mean_len_first,
        mean_len_second, lc_win_rate, lc_coef_length and, with ``groups``, by_group.

    Raises:
        ValueError: no rows, arrays (or groups) of different lengths, p outside [0, 1],
            or tie_margin outside [0, 0.5).
    """
    p = np.asarray(p_first, dtype=np.float64).reshape(-1)
    lf = np.asarray(len_first, dtype=np.float64).reshape(-1)
    ls = np.asarray(len_second, dtype=np.float64).reshape(-1)
    sizes = [p.size, lf.size, ls.size] + ([] if groups is None else [len(groups)])
    if len(set(sizes)) != 1:
        raise ValueError(f"p_first, len_first, len_second (and groups) differ in length: {sizes}")
    if p.size == 0:
        raise ValueError("no preferences to summarize (n = 0)")
    if not np.all((p >= 0.0) & (p <= 1.0)):  # also rejects NaN
        raise ValueError("p_first must be probabilities in [0, 1]")
    if not 0.0 <= tie_margin < 0.5:
        raise ValueError(f"tie_margin must be in [0, 0.5), got {tie_margin}")
    lc, coef = length_controlled(p, lf, ls)
    out: dict[str, Any] = {"n": int(p.size), **_rates(p, tie_margin)}
    scores = np.where(p > 0.5 + tie_margin, 1.0, np.where(p < 0.5 - tie_margin, 0.0, 0.5))
    _, out["win_rate_low"], out["win_rate_high"] = mean_ci(scores, seed=seed)
    out.update(
        mean_len_first=float(lf.mean()),
        mean_len_second=float(ls.mean()),
        lc_win_rate=lc,
        lc_coef_length=coef,
    )
    if groups is not None:
        labels = np.asarray(list(groups), dtype=object)
        out["by_group"] = {}
        for g in sorted(set(groups)):
            sub = p[labels == g]
            r = _rates(sub, tie_margin)
            out["by_group"][g] = {
                "n": int(sub.size),
                "win_rate": r["win_rate"],
                "tie_rate": r["tie_rate"],
                "mean_preference": r["mean_preference"],
            }
    return out
