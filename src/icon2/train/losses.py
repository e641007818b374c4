"""Pure loss functions for DPO, SPA self-refinement and DRO (a batch under a fixed worst case).

Everything here is stateless except :class:`ConfidenceWindow`, which holds the moving window of
recent noise-detection confidences. A trainer (e.g. a thin ``DPOTrainer`` subclass) computes the
logits and calls these functions; no trainer logic lives here.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sums per-token log-probabilities of ``labels`` over the response tokens.

    Args:
        logits: ``[B, T, V]`` logits already aligned with ``labels`` (position ``t`` predicts
            ``labels[:, t]``).
        labels: ``[B, T]`` token ids; entries outside ``mask`` may hold anything (e.g. -100).
        mask: ``[B, T]`` bool or 0/1 tensor marking the response tokens.

    Returns:
        ``[B]`` float32 summed log-probabilities.

    Raises:
        ValueError: If the shapes are inconsistent.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    _check_same_shape(labels=labels, mask=mask)
    keep = mask.bool()
    # Padding labels (often -100) are not valid indices for gather; they are zeroed out anyway.
    safe_labels = labels.long().masked_fill(~keep, 0)
    # Upcast before log_softmax: bf16 log-probs summed over hundreds of tokens lose the margin.
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = torch.gather(logp, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return (token_logp * keep.float()).sum(dim=-1)


def extrapolated_logps(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """``[B]`` log-probs under the extrapolated logits ``(1 + lam) h_pol - lam h_ref`` (eq. 12).

    Arguments are as in :func:`sequence_logps`, with ``lam >= 0``. Used only for decoupled noise
    detection, so the result is computed without gradient.

    Raises:
        ValueError: If ``lam`` is negative or the shapes are inconsistent.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    _check_same_shape(policy_logits=policy_logits, ref_logits=ref_logits)
    with torch.no_grad():
        mixed = (1.0 + lam) * policy_logits.float() - lam * ref_logits.float()
        return sequence_logps(mixed, labels, mask)


def dpo_margin(
    pol_w: torch.Tensor, pol_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO margin ``beta (pol_w - ref_w) - beta (pol_l - ref_l)`` of eq. (5), shape ``[B]``.

    Raises:
        ValueError: If ``beta <= 0`` or the shapes differ.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    _check_same_shape(pol_w=pol_w, pol_l=pol_l, ref_w=ref_w, ref_l=ref_l)
    return beta * (pol_w - ref_w) - beta * (pol_l - ref_l)


def dpo_loss(
    pol_w: torch.Tensor, pol_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss ``-log sigmoid(delta)`` (eq. 5).

    Returns:
        ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; the rewards
        ``beta (pol - ref)`` are detached because they are only logged.
    """
    delta = dpo_margin(pol_w, pol_l, ref_w, ref_l, beta)
    chosen = (beta * (pol_w - ref_w)).detach()
    rejected = (beta * (pol_l - ref_l)).detach()
    return -F.logsigmoid(delta), chosen, rejected


class ConfidenceWindow:
    """Moving window of recent confidences ``p~(y_w > y_l)`` and its K-th percentile."""

    def __init__(self, size: int = 50, k_percent: float = 10.0) -> None:
        """Creates an empty window.

        Args:
            size: Number of most recent confidences kept (``>= 1``).
            k_percent: Percentile used as the noise threshold, in ``(0, 100)``.

        Raises:
            ValueError: If ``size`` or ``k_percent`` is out of range.
        """
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0.0 < k_percent < 100.0:
            raise ValueError(f"k_percent must be in (0, 100), got {k_percent}")
        self.size = size
        self.k_percent = k_percent
        self._values: deque[float] = deque(maxlen=size)

    @property
    def values(self) -> tuple[float, ...]:
        """The stored confidences, oldest first."""
        return tuple(self._values)

    def threshold(self) -> float | None:
        """K-th percentile (linear interpolation) of the stored confidences, or None if empty."""
        if not self._values:
            return None
        stored = torch.tensor(list(self._values), dtype=torch.float64)
        return float(torch.quantile(stored, self.k_percent / 100.0))

    def push(self, conf: torch.Tensor) -> None:
        """Appends the (detached) values of ``conf``; the deque drops the oldest beyond ``size``."""
        self._values.extend(conf.detach().double().flatten().cpu().tolist())

    def flags(self, conf: torch.Tensor) -> torch.Tensor:
        """Pushes ``conf`` and returns ``z = 1[conf < threshold]`` as float 0/1 of ``conf``'s shape.

        The batch is pushed *before* the threshold is computed. Otherwise the very first batch
        would meet an empty window (no threshold at all), and a batch that is uniformly worse
        than the recent past would be flagged wholesale; including it keeps the flagged share
        close to K % from the first step on.
        """
        self.push(conf)
        tau = self.threshold()
        if tau is None:  # only reachable for an empty batch on an empty window
            return torch.zeros(conf.shape, dtype=torch.float32, device=conf.device)
        return (conf.detach().double() < tau).float()


def spa_loss(
    delta: torch.Tensor,
    conf_tilde: torch.Tensor,
    window: ConfidenceWindow,
    *,
    alpha: float,
    active: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPA self-refined loss ``-[(1 - alpha z) log p + alpha z log(1 - p)]``, eq. (10).

    ``p = sigmoid(delta)``; ``z`` flags pairs whose confidence falls below the window threshold.

    Args:
        delta: ``[B]`` DPO margins (with gradient).
        conf_tilde: ``[B]`` confidences from the extrapolated model (no gradient needed).
        window: Moving window; ``conf_tilde`` is always pushed into it.
        alpha: Label-smoothing weight for flagged pairs, in ``[0, 1]``.
        active: Whether refinement is switched on yet; when False, ``z = 0`` (plain DPO).

    Returns:
        ``(losses [B], z [B])`` with ``z`` a detached float 0/1 tensor.

    Raises:
        ValueError: If ``alpha`` is outside ``[0, 1]`` or the shapes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_same_shape(delta=delta, conf_tilde=conf_tilde)
    if active:
        z = window.flags(conf_tilde).to(device=delta.device, dtype=delta.dtype)
    else:
        # Warm-up still feeds the window so the threshold is meaningful when refinement starts.
        window.push(conf_tilde)
        z = torch.zeros_like(delta).detach()
    # logsigmoid(+-delta) rather than log(sigmoid) keeps both terms finite for large margins.
    weight = alpha * z
    losses = -((1.0 - weight) * F.logsigmoid(delta) + weight * F.logsigmoid(-delta))
    return losses, z


def dro_pair_losses(
    delta: torch.Tensor,
    alpha: torch.Tensor,
    q: torch.Tensor,
    support_min: float = 0.0,
    min_prob: float = 1e-6,
) -> torch.Tensor:
    """Per-pair DPO loss under the worst-case distribution (α, q held fixed).

    Copy k of pair i sits at σ(Δ_i) − c_ik with c_ik = q_ik/α_ik, the shift the LP chose.
    The LP keeps every point in the support [support_min, 1]; between solves σ(Δ) moves, so
    the shift is capped by the current distance to the floor, min(c, max(σ(Δ) − floor, 0))
    (computed without gradient): the point never leaves the support, never lands on the
    clamp where −log has no gradient, and a pair below the floor trains as plain DPO —
    exactly where the LP put it (raised to the floor, it cannot be shifted further down).
    At the moment of the solve the points are the LP's support points.

    Args:
        delta: DPO margins Δ_i, shape [B]; gradients flow through it.
        alpha: Fixed copy weights, shape [B, K].
        q: Fixed mass-weighted shifts, shape [B, K].
        support_min: Lower end of the support Ξ, as used by the solve.
        min_prob: Last-resort lower clamp keeping −log finite.

    Returns:
        Σ_k α_ik · (−log(σ(Δ_i) − c_ik)), shape [B].
    """
    alpha = alpha.to(device=delta.device, dtype=delta.dtype)
    q = q.to(device=delta.device, dtype=delta.dtype)
    pos = alpha > 0
    # Divide by a safe denominator so α = 0 gives shift 0 rather than a NaN from 0/0.
    shift = torch.where(pos, q / torch.where(pos, alpha, torch.ones_like(alpha)), 0.0)
    d = delta.unsqueeze(-1)
    p = torch.sigmoid(d)
    room = torch.clamp(p.detach() - max(support_min, min_prob), min=0.0)
    shift = torch.minimum(shift, room)
    # Unshifted copies use logsigmoid so that ε = 0 reproduces plain DPO bit for bit
    # (and stays accurate for very negative Δ, where σ(Δ) underflows).
    plain = -F.logsigmoid(d).expand_as(shift)
    shifted = -torch.log(torch.clamp(p - shift, min=min_prob, max=1.0))
    per_k = torch.where(shift == 0, plain, shifted)
    return (alpha * per_k).sum(dim=-1)
