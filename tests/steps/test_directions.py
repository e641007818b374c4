from __future__ import annotations

import torch
import torch.nn.functional as F

from icon2.steps.directions import centred_first_component, directions_from_states, first_component


def _planted(n: int = 200, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Differences = a fixed mean direction + larger isotropic-ish noise along other axes."""
    g = torch.Generator().manual_seed(seed)
    mean_dir = F.normalize(torch.randn(d, generator=g), dim=0)
    noise = torch.randn(n, d, generator=g)
    noise -= (noise @ mean_dir)[:, None] * mean_dir  # noise orthogonal to the signal
    noise[:, 0] *= 3.0  # one dominant nuisance axis in the spread
    v = 2.0 * mean_dir + 0.4 * noise
    return v, mean_dir


def test_uncentred_pca_recovers_planted_mean_direction_with_sign() -> None:
    v, mean_dir = _planted()
    u, evr = first_component(v)
    assert F.cosine_similarity(u, mean_dir, dim=0) > 0.99
    assert 0.0 < evr <= 1.0
    # Centred PCA removes the mean difference and finds the nuisance axis instead.
    c = centred_first_component(v)
    assert abs(float(F.cosine_similarity(c, mean_dir, dim=0))) < 0.5


def test_sign_is_oriented_towards_the_mean_difference() -> None:
    v, mean_dir = _planted(seed=1)
    for flip in (1.0, -1.0):
        u, _ = first_component(flip * v)
        assert float((flip * v @ u).mean()) > 0
        assert F.cosine_similarity(u, flip * mean_dir, dim=0) > 0.99


def test_directions_from_states_per_layer_stats() -> None:
    v, mean_dir = _planted(n=400, d=16)
    neg = torch.randn(400, 3, 16)
    pos = neg + v[:, None, :]
    cd = directions_from_states(pos, neg)
    assert cd.direction.shape == (3, 16)
    assert torch.allclose(cd.direction.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (cd.mean_projection > 0).all()
    assert torch.allclose(cd.contrastive_norm, v.norm(dim=-1).mean().expand(3), rtol=1e-5)
    assert cd.hidden_norm.shape == (3,)
    for layer in range(3):
        assert F.cosine_similarity(cd.direction[layer], mean_dir, dim=0) > 0.99
