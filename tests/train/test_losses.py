"""Property tests for icon2.train.losses (CPU, small tensors, hand-computed expectations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icon2.steps.self_annotation import length_penalised_reward, prefer_first
from icon2.train.losses import (
    ConfidenceWindow,
    dpo_loss,
    dpo_margin,
    extrapolated_logps,
    sequence_logps,
    spa_loss,
)


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_matches_hand_computation() -> None:
    # beta=0.1: chosen reward 0.1*(-10+12)=0.2, rejected 0.1*(-11+10)=-0.1, delta=0.3.
    # Pair 2: chosen 0.1*(-5+4)=-0.1, rejected 0.1*(-3+5)=0.2, delta=-0.3.
    pol_w, ref_w = _t(-10.0, -5.0), _t(-12.0, -4.0)
    pol_l, ref_l = _t(-11.0, -3.0), _t(-10.0, -5.0)
    losses, chosen, rejected = dpo_loss(pol_w, pol_l, ref_w, ref_l, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.3)), math.log1p(math.exp(0.3))])
    assert chosen.tolist() == pytest.approx([0.2, -0.1])
    assert rejected.tolist() == pytest.approx([-0.1, 0.2])
    assert dpo_margin(pol_w, pol_l, ref_w, ref_l, 0.1).tolist() == pytest.approx([0.3, -0.3])


def test_dpo_gradient_and_detached_rewards() -> None:
    pol_w = _t(-10.0, -5.0).requires_grad_()
    pol_l = _t(-11.0, -3.0).requires_grad_()
    losses, chosen, rejected = dpo_loss(pol_w, pol_l, _t(-12.0, -4.0), _t(-10.0, -5.0), beta=0.1)
    losses.sum().backward()  # type: ignore[no-untyped-call]
    assert pol_w.grad is not None and pol_l.grad is not None
    assert (pol_w.grad < 0).all()  # raising log pi(y_w) lowers the loss
    assert (pol_l.grad > 0).all()
    assert not chosen.requires_grad and not rejected.requires_grad


def _loop_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> list[float]:
    out = []
    for b in range(logits.shape[0]):
        total = 0.0
        for t in range(logits.shape[1]):
            if mask[b, t]:
                total += float(torch.log_softmax(logits[b, t].double(), -1)[labels[b, t]])
        out.append(total)
    return out


def test_sequence_logps_matches_token_loop_and_ignores_masked() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (3, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    labels[~mask] = -100  # padding ids must not break the gather
    got = sequence_logps(logits, labels, mask)
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert got.tolist() == pytest.approx(_loop_logps(logits, labels, mask), abs=1e-5)
    # Changing logits at masked positions leaves the result unchanged; 0/1 masks work too.
    noisy = logits.clone()
    noisy[~mask] += 100.0
    assert torch.equal(sequence_logps(noisy, labels, mask.long()), got)


def _random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pol = torch.randn(2, 4, 6, generator=gen)
    ref = torch.randn(2, 4, 6, generator=gen)
    labels = torch.randint(0, 6, (2, 4), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    return pol, ref, labels, mask


def test_extrapolated_logps_properties() -> None:
    pol, ref, labels, mask = _random_case(1)
    base = sequence_logps(pol, labels, mask)
    assert torch.equal(extrapolated_logps(pol, ref, labels, mask, 0.0), base)
    for lam in (0.125, 0.5, 3.0):
        same = extrapolated_logps(pol, pol, labels, mask, lam)
        assert same.tolist() == pytest.approx(base.tolist(), abs=1e-5)
    manual = _loop_logps(1.5 * pol - 0.5 * ref, labels, mask)
    assert extrapolated_logps(pol, ref, labels, mask, 0.5).tolist() == pytest.approx(
        manual, abs=1e-5
    )


def test_extrapolated_logps_has_no_grad() -> None:
    pol, ref, labels, mask = _random_case(2)
    pol.requires_grad_()
    assert not extrapolated_logps(pol, ref, labels, mask, 0.25).requires_grad


def test_confidence_window_keeps_last_values_and_percentile() -> None:
    window = ConfidenceWindow(size=3, k_percent=10.0)
    assert window.threshold() is None
    window.push(torch.tensor([1.0, 2.0]))
    window.push(torch.tensor([3.0, 4.0]))
    window.push(torch.tensor([5.0], requires_grad=True))
    assert window.values == (3.0, 4.0, 5.0)
    assert window.threshold() == pytest.approx(3.2)  # 3 + 0.1 * (3 - 1) * (4 - 3)
    assert window.threshold() == pytest.approx(float(np.percentile([3.0, 4.0, 5.0], 10)))


def test_confidence_window_flags_push_before_compare() -> None:
    window = ConfidenceWindow(size=50, k_percent=10.0)
    # Empty window: the batch itself defines tau = 0.1 + 0.2 * 0.4 = 0.18.
    z = window.flags(torch.tensor([0.1, 0.5, 0.9]))
    assert z.tolist() == [1.0, 0.0, 0.0] and z.dtype == torch.float32
    assert len(window.values) == 3


def test_spa_loss_flags_low_confidence_pair_and_matches_eq10() -> None:
    beta, lam, alpha = 0.1, 0.5, 0.1
    gen = torch.Generator().manual_seed(3)
    b, t, v = 4, 3, 5
    ref_w, ref_l = torch.randn(b, t, v, generator=gen), torch.randn(b, t, v, generator=gen)
    lab_w, lab_l = (
        torch.randint(0, v, (b, t), generator=gen),
        torch.randint(0, v, (b, t), generator=gen),
    )
    mask = torch.ones(b, t)
    # The policy boosts the chosen labels by +2 everywhere, except pair 2 where it boosts the
    # rejected labels: that pair is the "noisy" one the detector must flag.
    pol_w, pol_l = ref_w.clone(), ref_l.clone()
    for i in range(b):
        target, lab = (pol_l, lab_l) if i == 2 else (pol_w, lab_w)
        target[i].scatter_add_(-1, lab[i].unsqueeze(-1), torch.full((t, 1), 2.0))
    logp = {
        k: sequence_logps(x, lab, mask)
        for k, x, lab in [
            ("pw", pol_w, lab_w),
            ("pl", pol_l, lab_l),
            ("rw", ref_w, lab_w),
            ("rl", ref_l, lab_l),
        ]
    }
    delta = dpo_margin(logp["pw"], logp["pl"], logp["rw"], logp["rl"], beta)
    tw = extrapolated_logps(pol_w, ref_w, lab_w, mask, lam)
    tl = extrapolated_logps(pol_l, ref_l, lab_l, mask, lam)
    conf = torch.sigmoid(beta * (tw - logp["rw"]) - beta * (tl - logp["rl"]))
    assert int(conf.argmin()) == 2

    window = ConfidenceWindow(size=50, k_percent=10.0)
    losses, z = spa_loss(delta, conf, window, alpha=alpha, active=True)
    assert z.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert window.threshold() == pytest.approx(float(np.percentile(conf.numpy(), 10)), abs=1e-6)
    expected = []
    for d, zi in zip(delta.tolist(), [0, 0, 1, 0], strict=True):
        expected.append(-((1 - alpha * zi) * _log_sigmoid(d) + alpha * zi * _log_sigmoid(-d)))
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    dpo, _, _ = dpo_loss(logp["pw"], logp["pl"], logp["rw"], logp["rl"], beta)
    assert torch.equal(losses[[0, 1, 3]], dpo[[0, 1, 3]])
    assert losses[2] != dpo[2]


def test_spa_loss_reduces_to_dpo_when_off() -> None:
    delta = _t(0.3, -1.2, 2.5, 0.0).requires_grad_()
    conf = torch.sigmoid(_t(0.1, -3.0, 1.0, 0.5))
    dpo = -F.logsigmoid(delta)
    window = ConfidenceWindow()
    losses, z = spa_loss(delta, conf, window, alpha=0.1, active=False)
    assert torch.equal(losses, dpo) and z.tolist() == [0.0] * 4
    assert len(window.values) == 4  # warm-up still pushes confidences
    # Fresh window: tau lies strictly between the two lowest confidences, so one pair is flagged.
    losses, z = spa_loss(delta, conf, ConfidenceWindow(), alpha=0.0, active=True)
    assert torch.equal(losses, dpo) and z.sum() == 1  # flagged, but alpha=0 changes nothing
    losses.sum().backward()  # type: ignore[no-untyped-call]
    assert delta.grad is not None and not z.requires_grad


def test_length_penalised_reward_and_prefer_first() -> None:
    r = length_penalised_reward(
        _t(-10.0, -20.0), _t(-12.0, -19.0), torch.tensor([5, 10]), 0.1, 0.01
    )
    assert r.tolist() == pytest.approx([0.2 - 0.05, -0.1 - 0.1])
    assert prefer_first(_t(1.0, 0.0, 2.0), _t(0.5, 0.0, 3.0)).tolist() == [True, False, False]
    assert prefer_first(_t(1e-12), _t(0.0)).tolist() == [True]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"size": 0}, "size"), ({"k_percent": 0.0}, "k_percent"), ({"k_percent": 100.0}, "k_percent")],
)
def test_confidence_window_rejects_bad_arguments(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ConfidenceWindow(**kwargs)  # type: ignore[arg-type]


def test_bad_arguments_raise() -> None:
    x, y = _t(1.0, 2.0), _t(1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        dpo_margin(x, y, x, x, beta=0.1)
    with pytest.raises(ValueError, match="alpha"):
        spa_loss(x, x, ConfidenceWindow(), alpha=1.5, active=True)
    with pytest.raises(ValueError, match="shape"):
        spa_loss(x, y, ConfidenceWindow(), alpha=0.1, active=True)
    pol, ref, labels, mask = _random_case(4)
    with pytest.raises(ValueError, match="lam"):
        extrapolated_logps(pol, ref, labels, mask, -0.5)
    with pytest.raises(ValueError, match="logits"):
        sequence_logps(pol, labels[:, :2], mask)
    with pytest.raises(ValueError, match="shape"):
        sequence_logps(pol, labels, mask[:1])
    with pytest.raises(ValueError, match="a must"):
        length_penalised_reward(x, x, x, beta=0.1, a=-1.0)
