"""Exact guided densities, ratios, and model densities by the probability-flow ODE."""
import math

import numpy as np
import pytest
import torch

from toydiff import datasets, density, nets
from toydiff.distributions import GaussianMixture


def _gaussian(mean, cov, label=0):
    return GaussianMixture(torch.ones(1), mean[None], cov[None], labels=[label])


def _gaussian_log_pdf(x, mean, cov):
    r = x - mean
    return -0.5 * (r @ torch.linalg.inv(cov) * r).sum(1) - math.log(2 * math.pi) - 0.5 * torch.logdet(cov)


@pytest.mark.parametrize("w, sigma", [(1.0, 0.0), (3.0, 0.0), (2.0, 0.3), (0.5, 0.1)])
def test_guided_density_is_the_closed_form_product_of_gaussians(w, sigma):
    m1, c1 = torch.tensor([0.4, -0.2], dtype=torch.float64), torch.tensor([[0.10, 0.03], [0.03, 0.05]], dtype=torch.float64)
    m0, c0 = torch.tensor([0.0, 0.1], dtype=torch.float64), torch.tensor([[0.30, -0.05], [-0.05, 0.20]], dtype=torch.float64)
    grid = density.make_grid((-3, 3, -3, 3), 240)
    logp = density.guided_log_density(_gaussian(m1, c1), 0, w, grid, sigma=sigma, negative=_gaussian(m0, c0))
    assert abs(float(logp.exp().sum() * grid.cell_area) - 1) < 1e-9                     # integrates to 1
    eye = torch.eye(2, dtype=torch.float64) * sigma ** 2
    mean, cov = density.gaussian_power_product(m1, c1 + eye, m0, c0 + eye, w)
    exact = _gaussian_log_pdf(grid.points, mean, cov)
    mask = exact > exact.max() - 10
    assert (logp - exact)[mask].abs().max() < 2e-3


def test_cfg_density_of_three_gaussians_integrates_to_one_and_sharpens():
    dist = datasets.three_gaussians()
    grid = density.make_grid((-3, 3, -3, 3), 150)
    for w in (0.0, 1.0, 2.0, 4.0):
        assert abs(float(density.guided_log_density(dist, 0, w, grid).exp().sum() * grid.cell_area) - 1) < 1e-9
    p1 = density.guided_log_density(dist, 0, 1.0, grid)
    assert torch.allclose(p1, dist.log_prob(grid.points, 0.0, 0), atol=1e-3)           # w = 1: p(x|c) itself
    assert density.guided_log_density(dist, 0, 4.0, grid).max() > p1.max()               # guidance sharpens


def test_gaussian_power_product_refuses_non_normalizable():
    c = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive definite"):
        density.gaussian_power_product(torch.zeros(2), c, torch.zeros(2), 0.1 * c, 3.0)


def test_ratio_gradient_and_log_ratio_of_mixtures():
    dist = datasets.three_gaussians()
    x = dist.sample(50, generator=torch.Generator().manual_seed(0))[0].double()
    cond = torch.zeros(50, dtype=torch.long)
    grad = density.ratio_gradient(lambda x, s, c: dist(x, s, c), lambda x, s, c: dist(x, s, None), x, 0.3, cond)
    assert torch.allclose(grad, dist.score(x, 0.3, cond) - dist.score(x, 0.3, None), atol=1e-9)
    uncond = GaussianMixture(dist.weights, dist.means, dist.covs)
    lr = density.log_ratio(dist, uncond, x, 0.3, cond)
    assert torch.allclose(lr, dist.log_prob(x, 0.3, cond) - dist.log_prob(x, 0.3, None), atol=1e-9)


@pytest.mark.parametrize("cond", [None, 1])
def test_pf_ode_density_of_exact_denoiser_matches_log_prob(cond):
    dist = datasets.three_gaussians()
    grid = density.make_grid((-2.2, 2.2, -2.2, 2.2), 24)
    sigma = 0.002
    ode = density.ode_log_density(dist, grid.points, cond, sigma=sigma, sigma_max=80.0, steps=128, data_std=0.84)
    exact = dist.log_prob(grid.points, sigma, cond)
    mask = exact > exact.max() - 8                                   # where the density is non-negligible
    assert (ode - exact)[mask].abs().mean() < 0.05


def test_pf_ode_density_of_networks_and_guided_networks():
    # at init (zero output layer) an EDM-preconditioned MLP is the exact denoiser of N(0, sigma_data^2 I), and
    # CFG / autoguidance of two such models change nothing: all must give log N(x; 0, (sd^2 + s^2) I)
    from toydiff.guidance import CFG, AutoGuidance, guided
    main, guide = nets.MLPDenoiser(num_classes=2, seed=0), nets.MLPDenoiser(num_classes=2, width=32, seed=1)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 0.6
    sigma = 0.01
    exact = _gaussian_log_pdf(x.double(), torch.zeros(2, dtype=torch.float64),
                              torch.eye(2, dtype=torch.float64) * (0.25 + sigma ** 2))
    for den in (main, guided(main, CFG(3.0)), guided(main, AutoGuidance(guide, 2.0))):
        ode = density.ode_log_density(den, x, torch.zeros(64, dtype=torch.long), sigma=sigma, sigma_max=80.0,
                                      steps=128)
        assert (ode - exact).abs().mean() < 0.005 and (ode - exact).abs().max() < 0.03


def test_pf_ode_density_starts_a_run_of_the_guidance():
    """ode_log_density starts the guidance's run along its own levels: LinearCFG, whose weight depends on the run's
    levels, gives the density of CFG with Wang et al.'s weight written out on those levels,
    w_t = 1 + 2 (w - 1) (1 - t), t = (s^(1/rho) - lo^(1/rho)) / (hi^(1/rho) - lo^(1/rho)) (EDM's Eq. 5), whether or not
    the object sampled before (a run of another schedule leaves nothing behind)."""
    from toydiff import samplers
    from toydiff.guidance import CFG, LinearCFG, guided
    three = datasets.three_gaussians()
    x, cond = three.sample(32, cond=1, generator=torch.Generator().manual_seed(0))[0], torch.ones(32, dtype=torch.long)
    lo, hi, rho, w = 0.01, 20.0, 7.0, 3.0
    t = lambda s: (s ** (1 / rho) - lo ** (1 / rho)) / (hi ** (1 / rho) - lo ** (1 / rho))          # noqa: E731
    written = guided(three, CFG(lambda s: 1 + 2 * (w - 1) * (1 - t(s))))
    linear = guided(three, LinearCFG(w))
    kwargs = dict(sigma=lo, sigma_max=hi, steps=24, rho=rho, dtype=torch.float64)
    expected = density.ode_log_density(written, x, cond, **kwargs)
    torch.testing.assert_close(density.ode_log_density(linear, x, cond, **kwargs), expected, rtol=0, atol=1e-9)
    samplers.sample(linear, (8, 2), 1, steps=5, sigma_max=3.0)
    torch.testing.assert_close(density.ode_log_density(linear, x, cond, **kwargs), expected, rtol=0, atol=1e-9)


def test_energy_head_density_is_gaussian_at_init():
    model = nets.EnergyMLPDenoiser(num_classes=0, width=16, depth=2)   # zero output layer: N(0, (s^2+sd^2) I)
    grid = density.make_grid((-4, 4, -4, 4), 120)
    logp = density.energy_log_density(model, grid, 0.5)
    exact = _gaussian_log_pdf(grid.points, torch.zeros(2, dtype=torch.float64),
                              torch.eye(2, dtype=torch.float64) * (0.25 + 0.25))
    assert (logp - exact).abs().max() < 1e-3


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="extent"):
        density.make_grid((1, 0, 0, 1))
    with pytest.raises(ValueError, match="sigma"):
        density.ode_log_density(datasets.three_gaussians(), torch.zeros(3, 2), sigma=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma"):
        density.ratio_gradient(datasets.three_gaussians(), datasets.three_gaussians(), torch.zeros(3, 2), 0.0)
    with pytest.raises(TypeError, match="energy head"):
        density.energy_log_density(nets.MLPDenoiser(), density.make_grid(resolution=4), 0.5)


def test_sample_tv_exact_on_a_small_grid():
    """density.sample_tv against a hand count: 2 x 2 cells on [0, 2]^2, uniform density (1/4 per cell)."""
    grid = density.make_grid((0.0, 2.0, 0.0, 2.0), 2)
    uniform = torch.full((4,), math.log(0.25))
    x = torch.tensor([[0.5, 0.5], [0.5, 0.6], [1.5, 0.5], [1.5, 1.5], [5.0, 5.0]])   # cells 0, 0, 1, 3 and outside
    # histogram (2, 1, 0, 1)/5 vs 1/4 each: |0.4-0.25| + |0.2-0.25| + 0.25 + |0.2-0.25| = 0.5, plus 0.2 outside
    assert density.sample_tv(x, grid, uniform) == pytest.approx(0.5 * (0.5 + 0.2))
    assert density.sample_tv(torch.tensor([[0.5, 1.5]] * 4), grid, uniform) == pytest.approx(0.75)
    assert density.sample_tv(torch.tensor([[9.0, 9.0]]), grid, uniform) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="log_density"):
        density.sample_tv(x, grid, uniform[:3])


def test_sample_tv_lays_cells_out_as_the_grid_image():
    """A density that differs per cell: the samples' cell (x = 1, y = 0) is matched with the mass of that cell."""
    grid = density.make_grid((0.0, 2.0, 0.0, 2.0), 2)                  # cell area 1; image rows are y
    masses = torch.tensor([0.1, 0.2, 0.3, 0.4])                        # (x0,y0) (x1,y0) (x0,y1) (x1,y1)
    x = torch.tensor([[1.5, 0.5]] * 3)
    assert density.sample_tv(x, grid, masses.log()) == pytest.approx(0.5 * (0.8 + 0.1 + 0.3 + 0.4))


def test_cfg_figure_tv_counts_samples_off_the_grid():
    """The CFG figure's TV is density.sample_tv: at w = 8 some samples leave [-3, 3]^2 and count as outside the
    grid (they used to be clamped into the edge cells). Checked against numpy's histogram2d."""
    from toydiff import figures
    from toydiff.guidance import CFG, guided
    from toydiff.zoo import draw
    dist, n, w = datasets.three_gaussians(), 4000, 8.0
    _, numbers = figures.cfg_figure(n=n, ws=(w,), grid_res=20)
    hist_grid = density.make_grid((-3.0, 3.0, -3.0, 3.0), 40)
    tvs, outside = [], 0
    for c in range(3):
        x = draw(guided(dist, CFG(w)), n, c, c).double().numpy()
        counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=40, range=[[-3, 3], [-3, 3]])   # [x, y]
        mass = (density.guided_log_density(dist, c, w, hist_grid).exp() * hist_grid.cell_area).reshape(40, 40).T
        off = 1 - counts.sum() / n
        outside += off > 0
        tvs.append(0.5 * (np.abs(counts / n - mass.numpy()).sum() + off))
    assert outside >= 1                                                # the case the clamp got wrong
    assert numbers["tv_sampler_vs_exact"][str(w)] == pytest.approx(sum(tvs) / 3, abs=1e-12)
