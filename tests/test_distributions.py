"""GaussianMixture against independent ground truth: scipy densities, autograd, Monte Carlo posterior means."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from toydiff import datasets
from toydiff.distributions import GaussianMixture


def _scipy_log_prob(mix, x, sigma, cls=None):
    keep = np.ones(len(mix), bool) if cls is None else (mix.labels == cls).numpy()
    w = mix.weights.numpy()[keep]
    terms = [np.log(wk) + multivariate_normal(m, c + sigma ** 2 * np.eye(2)).logpdf(x)
             for wk, m, c in zip(w / w.sum(), mix.means.numpy()[keep], mix.covs.numpy()[keep])]
    return logsumexp(np.stack(terms), axis=0)


@pytest.mark.parametrize("name", ["three_gaussians", "moons", "tree"])
@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0])
def test_log_prob_matches_scipy(name, sigma, gen):
    mix = datasets.get(name)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(mix.log_prob(x, sigma).numpy(), _scipy_log_prob(mix, x.numpy(), sigma), rtol=1e-9, atol=1e-9)
    for c in range(mix.num_classes):
        got = mix.log_prob(x, sigma, torch.full((64,), c))
        np.testing.assert_allclose(got.numpy(), _scipy_log_prob(mix, x.numpy(), sigma, c), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", [0.0, 0.1, 1.0])
def test_log_prob_integrates_to_one(three, sigma):
    # trapezoid on [-7, 7]^2: the tails beyond are < 1e-9; 561^2 nodes put the quadrature error far below 1e-4
    t = torch.linspace(-7, 7, 561, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    for cond in (None, 1):
        dens = three.log_prob(pts, sigma, cond).exp().reshape(561, 561)
        total = torch.trapezoid(torch.trapezoid(dens, t, dim=1), t)
        assert abs(total.item() - 1) < 1e-4


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.7])
def test_score_is_gradient_of_log_prob(tree_mix, sigma, gen):
    x = (torch.randn(128, 2, generator=gen, dtype=torch.float64) * 0.6).requires_grad_()
    for cond in (None, torch.randint(-1, 2, (128,), generator=gen)):
        (grad,) = torch.autograd.grad(tree_mix.log_prob(x, sigma, cond).sum(), x)
        torch.testing.assert_close(tree_mix.score(x.detach(), sigma, cond), grad, rtol=1e-7, atol=1e-7)


def test_denoise_is_tweedie_and_call(three, gen):
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    sigma = torch.rand(50, generator=gen, dtype=torch.float64) * 2
    cond = torch.randint(-1, 3, (50,), generator=gen)
    expected = x + sigma[:, None] ** 2 * three.score(x, sigma, cond)
    torch.testing.assert_close(three.denoise(x, sigma, cond), expected)
    torch.testing.assert_close(three(x, sigma, cond), expected)


def test_denoise_matches_monte_carlo_posterior_mean(three):
    # E[x0 | x] by self-normalized importance sampling with the prior as proposal:
    # weights N(x; x0, sigma^2 I). With 10^6 draws the Monte Carlo error is ~1e-3 here.
    g = torch.Generator().manual_seed(0)
    x0, _ = three.sample(1_000_000, cond=2, generator=g, dtype=torch.float64)
    sigma = 0.6
    queries = torch.tensor([[0.0, 0.0], [0.8, -0.5], [-0.3, 0.4]], dtype=torch.float64)
    for q in queries:
        logw = -((x0 - q) ** 2).sum(1) / (2 * sigma ** 2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        exact = three.denoise(q[None], sigma, torch.tensor([2]))[0]
        assert (mc - exact).abs().max() < 0.01, (q, mc, exact)


def test_class_posterior_is_bayes(three, gen):
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    post = three.class_posterior(x, 0.3)
    torch.testing.assert_close(post.sum(1), torch.ones(40, dtype=torch.float64))
    joint = torch.stack([three.log_prob(x, 0.3, torch.full((40,), c)) for c in range(3)], 1) + math.log(1 / 3)
    torch.testing.assert_close(post.log(), joint - three.log_prob(x, 0.3)[:, None])


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_finite_far_from_data(name):
    mix = datasets.get(name)
    far = torch.tensor([[1e3, 1e3], [-1e3, 2e2], [0.0, -1e3]])
    for sigma in (0.0, 1e-3, 10.0):
        for out in (mix.log_prob(far, sigma), mix.score(far, sigma), mix.denoise(far, sigma, 0),
                    mix.class_posterior(far, sigma)):
            assert torch.isfinite(out).all(), (name, sigma)


def test_sample_is_exact_and_seeded(three):
    x, y = three.sample(50_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x2, y2 = three.sample(50_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # mean and covariance within ~5 standard errors of the exact moments
    torch.testing.assert_close(x.mean(0), three.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), three.covariance(), atol=0.03, rtol=0)
    assert abs((y == 1).double().mean().item() - 1 / 3) < 0.01
    xc, yc = three.sample(1000, cond=2, sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert (yc == 2).all() and xc.dtype == torch.float32


def test_mixed_conditions_in_one_batch(three, gen):
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    cond = torch.tensor([0, 1, 2, -1, 0, -1])
    batch = three.score(x, 0.4, cond)
    for i in range(6):
        single = three.score(x[i:i + 1], 0.4, None if cond[i] < 0 else cond[i:i + 1])
        torch.testing.assert_close(batch[i:i + 1], single)


def test_thin_tree_structure():
    t = datasets.thin_tree()
    assert t.num_classes == 2 and len(t) == 2 * 127 * 8
    assert (t.labels == 0).sum() == 1016
    assert abs(math.sqrt(t.covariance().trace().item() / 2) - 0.5) < 1e-9
    # class A grows towards +pi/4, class B towards 5pi/4
    assert (t.mean(0) > 0).all() and (t.mean(1) < 0).all()


@pytest.mark.parametrize("bad, err", [
    (dict(x=torch.zeros(3)), ValueError),
    (dict(x=torch.zeros(3, 3)), ValueError),
    (dict(x=torch.zeros(3, 2, dtype=torch.long)), TypeError),
    (dict(x=torch.full((3, 2), float("nan"))), ValueError),
    (dict(sigma=-0.1), ValueError),
    (dict(sigma=float("inf")), ValueError),
    (dict(sigma=torch.ones(4)), ValueError),
    (dict(cond=torch.tensor([0, 1, 3])), ValueError),
    (dict(cond=torch.tensor([0.0, 1.0, 2.0])), TypeError),
    (dict(cond=torch.tensor([0, 1])), ValueError),
])
def test_bad_input_is_named(three, bad, err):
    args = dict(x=torch.zeros(3, 2), sigma=0.1, cond=None) | bad
    name = next(iter(bad))
    with pytest.raises(err, match=name):
        three.score(**args)


def test_constructor_validation():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0], [[0.0, 0.0, 0.0]], np.eye(2)[None])
    with pytest.raises(ValueError, match="every class"):
        GaussianMixture([1.0], [[0.0, 0.0]], np.eye(2)[None], labels=[1], num_classes=2)


def test_denoiser_is_differentiable(three, gen):
    # autograd through the exact denoiser (PF-ODE divergences, classifier guidance) must work
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    (jac_row,) = torch.autograd.grad(three.denoise(x, 0.5, 1)[:, 0].sum(), x)
    eps = 1e-6
    fd = (three.denoise(x.detach() + torch.tensor([eps, 0.0], dtype=torch.float64), 0.5, 1)[:, 0]
          - three.denoise(x.detach() - torch.tensor([eps, 0.0], dtype=torch.float64), 0.5, 1)[:, 0]) / (2 * eps)
    torch.testing.assert_close(jac_row[:, 0], fd, rtol=1e-5, atol=1e-6)


def test_class_log_prob_matches_per_class_log_prob(tree_mix, gen):
    x = torch.randn(300, 2, generator=gen, dtype=torch.float64) * 0.6
    for sigma in (0.0, 0.2):
        all_classes = tree_mix.class_log_prob(x, sigma)
        for c in range(2):
            torch.testing.assert_close(all_classes[:, c], tree_mix.log_prob(x, sigma, c))


def test_mixed_batches_equal_their_rows(tree_mix, gen):
    """A batch of mixed sigmas and labels (per-point S_k, all components) gives what each row gives alone (one
    sigma and label: 1/det S_k folded into the weights, only the label's components), for every method."""
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 0.6
    sigma = torch.tensor([0.0, 0.01, 0.3, 2.0] * 10, dtype=torch.float64)
    cond = torch.tensor([-1, 0, 1, 0, 1] * 8)
    rows = [(x[i:i + 1], float(sigma[i]), int(cond[i])) for i in range(40)]
    for method in (tree_mix.log_prob, tree_mix.score, tree_mix.denoise):
        alone = torch.cat([method(xi, si, ci) for xi, si, ci in rows])
        torch.testing.assert_close(method(x, sigma, cond), alone, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tree_mix.class_log_prob(x, sigma),
                               torch.cat([tree_mix.class_log_prob(xi, si) for xi, si, _ in rows]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", [0.003, 0.3, 2.0])
def test_component_denoise_averages_to_the_exact_denoiser(three, sigma, gen):
    # E[x0 | x] = sum_k p(k | x) E[x0 | x, k], with p(k | x) from scipy's densities of each component
    x = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    logp = np.stack([np.log(w) + multivariate_normal(m, c + sigma ** 2 * np.eye(2)).logpdf(x.numpy()) for w, m, c in
                     zip(three.weights.numpy(), three.means.numpy(), three.covs.numpy())], 1)       # [N, K]
    post = torch.from_numpy(np.exp(logp - logsumexp(logp, axis=1, keepdims=True)))
    per_k = torch.stack([three.component_denoise(x, sigma, torch.full((32,), k)) for k in range(len(three))], 1)
    torch.testing.assert_close((post[:, :, None] * per_k).sum(1), three.denoise(x, sigma), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="k must be"):
        three.component_denoise(x, sigma, torch.full((32,), len(three)))


def test_sample_reports_the_components_it_drew(three):
    x, y, k = three.sample(500, generator=torch.Generator().manual_seed(0), components=True)
    x2, y2 = three.sample(500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(three.labels[k], y)
    assert k.unique().numel() == len(three)
