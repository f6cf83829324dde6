"""The exact bin masses and the histogram divergence against analytic cases."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from toydiff.distributions import GaussianMixture
from toydiff.histogram import bin_masses, bvn_cdf, class_grid, histogram_divergence, noise_floor


@pytest.mark.parametrize("rho", [0.0, 0.4, -0.8, 0.995, -0.9999])
def test_bvn_cdf_matches_scipy(rho):
    rng = np.random.default_rng(0)
    h, k = rng.normal(size=(2, 12)) * 2
    h[0], k[1] = 0.0, 0.0                                                 # the a = inf corner cases
    ref = [multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([a, b]) for a, b in zip(h, k)]
    np.testing.assert_allclose(bvn_cdf(h, k, rho), ref, atol=1e-7)
    assert bvn_cdf(0.0, 0.0, 0.5) == pytest.approx(0.25 + math.asin(0.5) / (2 * math.pi), abs=1e-14)


def test_bin_masses_of_a_correlated_gaussian():
    cov = torch.tensor([[[0.09, 0.05], [0.05, 0.04]]], dtype=torch.float64)
    mix = GaussianMixture(torch.ones(1), torch.tensor([[0.1, -0.2]]), cov, torch.zeros(1, dtype=torch.long), 1)
    ex, ey = torch.linspace(-0.5, 0.6, 7, dtype=torch.float64), torch.linspace(-0.6, 0.3, 5, dtype=torch.float64)
    p = bin_masses(mix, 0, ex, ey)
    dist = multivariate_normal(mean=[0.1, -0.2], cov=cov[0].numpy())
    for i in range(6):
        for j in range(4):
            ref = (dist.cdf([ex[i + 1], ey[j + 1]]) - dist.cdf([ex[i], ey[j + 1]]) - dist.cdf([ex[i + 1], ey[j]])
                   + dist.cdf([ex[i], ey[j]]))
            assert float(p[i * 4 + j]) == pytest.approx(ref, abs=1e-7)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and float(p[-1]) > 0


def test_divergence_analytic_cases(three):
    # every sample in one bin b: TV = 1 - p_b and KL(q || p) = -log p_b
    div = histogram_divergence(torch.zeros(50, 2), three, 0, bins=8)
    ex, ey = class_grid(three, 0, 8)
    p = bin_masses(three, 0, ex, ey)
    b = int((torch.searchsorted(ex, torch.tensor(0.0, dtype=torch.float64), right=True) - 1) * 8
            + torch.searchsorted(ey, torch.tensor(0.0, dtype=torch.float64), right=True) - 1)
    assert div["tv"] == pytest.approx(1 - float(p[b]), abs=1e-12)
    assert div["kl"] == pytest.approx(-math.log(float(p[b])), abs=1e-9)
    # samples far outside the box all land in the outside bin
    far = histogram_divergence(torch.full((10, 2), 50.0), three, 0, bins=8)
    assert far["tv"] == pytest.approx(1 - float(p[-1]), abs=1e-12)


def test_noise_floor_shrinks_like_one_over_root_n(three):
    small, large = noise_floor(three, 1, 1000, bins=16), noise_floor(three, 1, 16000, bins=16)
    assert 2.5 < small["tv"] / large["tv"] < 6                          # sqrt(16) = 4: exact masses, no bias
    assert histogram_divergence(three.sample(16000, cond=1, generator=torch.Generator().manual_seed(3))[0],
                                three, 0, bins=16)["tv"] > 0.5           # the wrong class is far off
