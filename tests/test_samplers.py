"""Every sampler, run on the exact denoiser, must reproduce the data; schedules and seeds behave."""
import math

import pytest
import torch

from toydiff import samplers
from toydiff.guidance import CFG, guided

# Heun is second order: 32 steps suffice. The first-order and stochastic samplers need more levels for
# their discretization error to fall under the 0.1-nat bar (measured, nats above the data: euler and ddim
# +0.13 at 32 steps, +0.03 at 128; ddpm +0.23 at 32, +0.07 at 128; euler_maruyama -0.13 at 32, -0.02 at 128).
STEPS = {"heun": 32, "euler": 128, "euler_maruyama": 128, "ddpm": 256, "ddim": 128}
N = 20_000


@pytest.fixture(scope="module")
def reference(three):
    x, y = three.sample(N, generator=torch.Generator().manual_seed(0))
    ll = three.log_prob(x)
    return dict(ll=ll.mean().item(), threshold=torch.quantile(ll, 0.01).item())


@pytest.mark.parametrize("method", sorted(samplers.METHODS))
def test_sampler_reproduces_data(three, reference, method):
    x = samplers.sample(three, (N, 2), method=method, steps=STEPS[method], generator=torch.Generator().manual_seed(1))
    ll = three.log_prob(x)
    # class proportions: E_x[p(c|x)] equals the class weights exactly under the data; 2 points tolerance
    proportions = three.class_posterior(x, 0.0).mean(0)
    assert (proportions - 1 / 3).abs().max() < 0.02, proportions
    # the standard error of a mean log-likelihood over 20k samples is ~0.01 nats
    assert abs(ll.mean().item() - reference["ll"]) < 0.1
    assert (ll < reference["threshold"]).float().mean().item() < 0.03


def test_conditional_sampling_hits_the_class(three):
    cond = torch.arange(3).repeat_interleave(2000)
    x = samplers.sample(three, (6000, 2), cond, generator=torch.Generator().manual_seed(2))
    # the classes of three_gaussians overlap: even true samples are classified right only ~82% of the time
    true = torch.cat([three.sample(2000, cond=c, generator=torch.Generator().manual_seed(3))[0] for c in range(3)])
    acc, true_acc = ((three.class_posterior(v, 0.0).argmax(1) == cond).float().mean().item() for v in (x, true))
    assert 0.75 < true_acc < 0.9 and abs(acc - true_acc) < 0.02


def test_same_seed_same_samples(three):
    for method in samplers.METHODS:
        a = samplers.sample(three, (100, 2), 1, method=method, steps=8, generator=torch.Generator().manual_seed(5))
        b = samplers.sample(three, (100, 2), 1, method=method, steps=8, generator=torch.Generator().manual_seed(5))
        c = samplers.sample(three, (100, 2), 1, method=method, steps=8, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_trajectory_and_tensor_start(three):
    noise = torch.randn(10, 2, generator=torch.Generator().manual_seed(0)) * 80
    x, traj = samplers.sample(three, noise, method="euler", steps=12, return_trajectory=True)
    assert traj.shape == (13, 10, 2)
    assert torch.equal(traj[0], noise) and torch.equal(traj[-1], x)


def test_ddim_eta0_is_euler_and_eta1_is_ddpm(three):
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 80
    euler = samplers.sample(three, noise, method="euler", steps=20)
    ddim = samplers.sample(three, noise, method="ddim", steps=20)
    torch.testing.assert_close(ddim, euler)
    a = samplers.sample(three, noise, method="ddim", eta=1.0, steps=20, generator=torch.Generator().manual_seed(1))
    b = samplers.sample(three, noise, method="ddpm", steps=20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_schedules():
    s = samplers.edm_sigmas(32, 0.002, 80.0, 7.0)
    assert s.shape == (33,) and s[-1] == 0
    torch.testing.assert_close(s[[0, 31]], torch.tensor([80.0, 0.002], dtype=torch.float64))
    v = samplers.vp_sigmas(10, 0.002, 80.0)
    torch.testing.assert_close(v[[0, 9]], torch.tensor([80.0, 0.002], dtype=torch.float64))
    d = samplers.linear_beta_sigmas(1000)
    # Ho et al.'s linear betas: abar_T ~ 4.0e-5 -> sigma_T ~ 157; beta_1 = 1e-4 -> sigma_1 ~ 0.01
    assert 150 < d[0] < 165 and abs(d[-2].item() - 0.01) < 1e-3
    for sig in (s, v, d):
        assert (sig.diff() < 0).all()


def test_explicit_sigmas_and_callback(three):
    """sigmas= runs exactly the given schedule (the default EDM one gives the default samples); the callback sees
    every step with its sigma pair and the state after the step."""
    seen = []
    x = samplers.sample(three, (500, 2), generator=torch.Generator().manual_seed(0))
    y = samplers.sample(three, (500, 2), sigmas=samplers.edm_sigmas(32), generator=torch.Generator().manual_seed(0),
                        callback=seen.append, return_trajectory=True)
    torch.testing.assert_close(y[0], x, rtol=0, atol=0)
    assert [d["i"] for d in seen] == list(range(32))
    assert [d["sigma"] for d in seen] == samplers.edm_sigmas(32)[:-1].tolist()
    assert seen[-1]["sigma_next"] == 0.0
    for d in seen:
        torch.testing.assert_close(d["x"], y[1][d["i"] + 1], rtol=0, atol=0)


def gaussian_pf_ode(x_start, s_max, sd=0.5):
    """Exact PF-ODE end point for N(0, sd^2 I) data: D = sd^2 x / (s^2 + sd^2), so dx/ds = s x / (s^2 + sd^2)
    and x(s) = x(s_max) sqrt((s^2 + sd^2) / (s_max^2 + sd^2)); at s = 0, x_start * sd / sqrt(s_max^2 + sd^2)."""
    return x_start * sd / math.sqrt(s_max ** 2 + sd ** 2)


@pytest.mark.parametrize("method, steps, tol, order", [("heun", 32, 1e-2, 2), ("euler", 256, 1e-2, 1),
                                                     ("ddim", 256, 1e-2, 1)])
def test_deterministic_samplers_solve_the_gaussian_ode(method, steps, tol, order):
    """Against the closed-form PF-ODE solution for Gaussian data (Karras et al. 2022, Eq. 4 with the exact D):
    close at the given steps, and the error falls by 2^order when the steps double (measured: heun 4.5x, euler 2.0x)."""
    def exact(x, sigma, cond):
        return 0.25 * x / (torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2 + 0.25)
    noise = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10.0
    truth = gaussian_pf_ode(noise, 10.0)

    def rel_error(n):
        return float((samplers.sample(exact, noise, method=method, steps=n, sigma_max=10.0) - truth).norm() / truth.norm())
    fine, coarse = rel_error(steps), rel_error(steps // 2)
    assert fine < tol, fine
    assert 0.8 * 2 ** order < coarse / fine < 1.3 * 2 ** order, (coarse, fine)


def test_stochastic_samplers_match_the_gaussian_marginal():
    """Euler-Maruyama and DDPM on N(0, sd^2 I) data end with std sd (exact D; 40000 values: the std's standard
    error is 0.002; measured 0.505 and 0.494, the rest is the discretization of 256 steps)."""
    def exact(x, sigma, cond):
        return 0.25 * x / (torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2 + 0.25)
    for method in ("euler_maruyama", "ddpm"):
        out = samplers.sample(exact, (20000, 2), method=method, steps=256, sigma_max=10.0, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1))
        assert abs(float(out.std()) - 0.5) < 0.012, (method, float(out.std()))


def test_guided_sampling_runs_on_images():
    def den(x, sigma, cond):
        return x / (1 + torch.as_tensor(sigma).reshape(-1, 1, 1, 1) ** 2)
    out = samplers.sample(guided(den, CFG(2.0)), (3, 3, 8, 8), torch.tensor([0, 1, 2]), steps=4,
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 8, 8)


@pytest.mark.parametrize("kwargs, err, word", [
    (dict(method="rk45"), ValueError, "method"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(sigma_min=-1.0), ValueError, "sigma_min"),
    (dict(sigma_min=5.0, sigma_max=1.0), ValueError, "sigma_min"),
    (dict(schedule="cosine"), ValueError, "schedule"),
    (dict(sigmas=torch.tensor([1.0, 2.0, 0.0])), ValueError, "sigmas must be a strictly decreasing"),
    (dict(sigmas=torch.tensor([2.0, 1.0, 0.0]), steps=8), ValueError, "do not also pass steps"),
    (dict(method="ddim", eta=float("nan")), ValueError, "eta must"),
    (dict(method="heun", eta=0.5), ValueError, "eta is a parameter of method 'ddim' only"),
    (dict(method="ddpm", eta=0.0), ValueError, "eta is a parameter of method 'ddim' only"),
])
def test_bad_arguments(three, kwargs, err, word):
    with pytest.raises(err, match=word):
        samplers.sample(three, (4, 2), **kwargs)


def test_bad_shape(three):
    with pytest.raises(ValueError, match="shape_or_noise"):
        samplers.sample(three, (0, 2))
    with pytest.raises(ValueError, match="cond"):
        samplers.sample(three, (4, 2), torch.tensor([0, 1]))


def test_divergence_is_reported():
    with pytest.raises(FloatingPointError, match="diverged"):
        samplers.sample(lambda x, s, c: x * 1e30, (4, 2), steps=8)


def test_sample_passes_its_levels_to_reset(three):
    """sample() starts a run with reset(levels) (the schedule-dependent methods read it); a reset() that takes
    no parameter, the contract's older form, is still called, without them."""
    class WithLevels:
        def __init__(self):
            self.got = []

        def reset(self, sigmas=None):
            self.got.append(sigmas)

        def __call__(self, x, sigma, cond=None):
            return three(x, sigma, cond)

    class Legacy(WithLevels):
        def reset(self):
            self.got.append("called")

    new, old = WithLevels(), Legacy()
    for den in (new, old):
        samplers.sample(den, (4, 2), 0, method="euler", steps=5, sigma_max=5.0)
    torch.testing.assert_close(new.got[0], samplers.edm_sigmas(5, 0.002, 5.0, 7.0))
    assert len(new.got) == 1 and old.got == ["called"]
