"""toydiff.optimal_weight: the least-squares guidance weight against the exact denoiser."""
from __future__ import annotations

import math

import pytest
import torch

from toydiff import datasets
from toydiff.guidance import CFG, guided
from toydiff.optimal_weight import WeightProfile, optimal_weight, oracle_schedule, weight_profile


def _preds(seed: int, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_matches_a_brute_force_search_over_w(seed):
    d1, d0, exact = _preds(seed)
    best = optimal_weight(d1, d0, exact)
    ws = torch.linspace(-30, 30, 120001, dtype=torch.float64)                     # step 5e-4
    err = ((d0[None] + ws[:, None, None] * (d1 - d0)[None] - exact[None]) ** 2).sum(2)   # [W, N]
    per_point = ws[err.argmin(0)]
    inside = best.w.abs() < 29                                                   # the search's range
    assert inside.sum() > 55 and torch.allclose(best.w[inside], per_point[inside], atol=1e-3)
    pooled = ws[err.sum(1).argmin()]
    assert abs(best.w_pooled - float(pooled)) < 1e-3
    e1 = float(((d1 - exact) ** 2).sum())
    assert math.isclose(best.fraction, (e1 - float(err.sum(1).min())) / e1, rel_tol=1e-5)
    assert torch.allclose(best.removable, best.error - err.min(0).values, atol=1e-6)


def test_removable_share_is_the_squared_cosine_of_error_and_guidance_direction():
    d1, d0, exact = _preds(3)
    best = optimal_weight(d1, d0, exact)
    cos = torch.nn.functional.cosine_similarity(d1 - exact, d1 - d0, dim=1)
    assert torch.allclose(best.fraction_per_point, cos ** 2, atol=1e-12)


def test_extremes_exact_main_model_and_exact_guide():
    d1, d0, exact = _preds(4)
    same = optimal_weight(exact, d0, exact)                         # D_1 = D*: no guidance is best
    assert torch.allclose(same.w, torch.ones(64, dtype=torch.float64)) and same.fraction == 0
    guide_exact = optimal_weight(d1, exact, exact)                  # D_0 = D*: w = 0, the whole error removed
    assert torch.allclose(guide_exact.w, torch.zeros(64, dtype=torch.float64), atol=1e-12)
    assert math.isclose(guide_exact.fraction, 1.0, rel_tol=1e-12)


def test_bad_input_is_refused_with_the_argument_named():
    d1, d0, exact = _preds(5)
    with pytest.raises(ValueError, match="share one shape"):
        optimal_weight(d1, d0[:3], exact)
    with pytest.raises(ValueError, match="no guidance direction"):
        optimal_weight(d1, d1, exact)
    with pytest.raises(ValueError, match="finite"):
        optimal_weight(d1, d0, exact * float("nan"))


def _overshooting(tree, a: float):
    """D_1 = D* + a (D* - D_marginal): a main model that overshoots its class by a factor 1 + a along CFG's
    direction; its null label gives the exact marginal, so w* = 1 / (1 + a) removes all of its error."""
    def main(x, sigma, cond):
        exact, marginal = tree(x.double(), sigma, cond), tree(x.double(), sigma, None)
        return (exact + a * (exact - marginal)).to(x.dtype)
    return main


@pytest.mark.parametrize("a", [0.0, 0.5, -0.3])
def test_profile_recovers_the_weight_that_undoes_a_known_overshoot(a):
    tree = datasets.tree()
    sigmas = [0.01, 0.1, 1.0]
    p = weight_profile(_overshooting(tree, a), CFG(), tree, 0, sigmas, n=256, seed=1)
    assert torch.allclose(p.w, torch.full((3,), 1 / (1 + a), dtype=torch.float64), atol=1e-4)
    assert torch.allclose(p.quartiles, p.w[:, None].expand(3, 3), atol=1e-4)
    if a == 0:
        assert torch.allclose(p.error, torch.zeros(3, dtype=torch.float64), atol=1e-8)
    else:
        assert torch.allclose(p.fraction, torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_profile_on_given_points_and_bad_points():
    tree = datasets.tree()
    x = tree.sample(100, cond=0, generator=torch.Generator().manual_seed(0))[0]
    p = weight_profile(_overshooting(tree, 1.0), CFG(), tree, 0, [0.05, 0.5], points=torch.stack([x, x]))
    assert torch.allclose(p.w, torch.full((2,), 0.5, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ValueError, match="points must be a tensor"):
        weight_profile(tree, CFG(), tree, 0, [0.05, 0.5], points=x[None])
    with pytest.raises(ValueError, match="sigmas"):
        weight_profile(tree, CFG(), tree, 0, [0.0, 0.5])


def test_oracle_schedule_interpolates_in_log_sigma_floors_and_drives_a_guidance():
    one = torch.zeros(3, dtype=torch.float64)
    profile = WeightProfile(torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64), torch.tensor([1.0, 3.0, -1.0],
                            dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64), one, one)
    w = oracle_schedule(profile)
    sig = torch.tensor([5.0, 1.0, math.sqrt(0.1), 0.1, 0.01, 1e-4])
    assert torch.allclose(w(sig), torch.tensor([1.0, 1.0, 2.0, 3.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(oracle_schedule(profile, w_min=0.5)(sig)[-1], torch.tensor(0.5))
    tree = datasets.tree()
    x = torch.zeros(2, 2)
    guided_out = guided(tree, CFG(w))(x, torch.tensor([0.1, 0.1]), torch.zeros(2, dtype=torch.long))
    assert torch.allclose(guided_out, guided(tree, CFG(3.0))(x, 0.1, torch.zeros(2, dtype=torch.long)))
