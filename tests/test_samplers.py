"""Every sampler, run on the exact denoiser, must reproduce the data; schedules and seeds behave."""
import math

import pytest
import torch

from toydiff import samplers
from toydiff.core import flow
from toydiff.guidance import CFG, guided

# Heun is second order: 32 steps suffice. The first-order and stochastic samplers need more levels for
# their discretization error to fall under the 0.1-nat bar (measured, nats above the data: euler and ddim
# +0.13 at 32 steps, +0.03 at 128; ddpm +0.23 at 32, +0.07 at 128; euler_maruyama -0.13 at 32, -0.02 at 128;
# dpmpp_2m -0.16 at 16, -0.03 at 32).
STEPS = {"heun": 32, "euler": 128, "euler_maruyama": 128, "ddpm": 256, "ddim": 128, "dpmpp_2m": 32}
N = 20_000


@pytest.fixture(scope="module")
def reference(three):
    x, y = three.sample(N, generator=torch.Generator().manual_seed(0))
    ll = three.log_prob(x)
    return dict(ll=ll.mean().item(), threshold=torch.quantile(ll, 0.01).item())


# and two that are not a method: EDM's stochastic Heun (Alg. 2; measured -0.07 nats) and Euler on the flow
# schedule with SD3's shift 3 (+0.03)
EXTRA = {"heun_churn": ("heun", 32, dict(s_churn=10.0)), "flow_euler": ("euler", 128, dict(schedule="flow", shift=3.0))}


@pytest.mark.parametrize("method", sorted(samplers.METHODS) + sorted(EXTRA))
def test_sampler_reproduces_data(three, reference, method):
    method, steps, kwargs = EXTRA.get(method, (method, STEPS.get(method), {}))
    x = samplers.sample(three, (N, 2), method=method, steps=steps, generator=torch.Generator().manual_seed(1), **kwargs)
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
    every step with its sigma pair, the state after the step and the x0-hat D(x_i; sigma_i) the step used."""
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
        assert d["sigma_hat"] == d["sigma"]
        torch.testing.assert_close(d["denoised"], three(y[1][d["i"]], d["sigma"], None), rtol=0, atol=0)


@pytest.mark.parametrize("method", sorted(samplers.METHODS))
def test_callback_denoised_is_the_steps_x0_hat(three, method):
    """Every method reports the x0-hat it evaluated at x_i: D(x_i; sigma_hat) (sigma_hat = sigma but under churn)."""
    seen, cond = [], torch.arange(50) % 3
    kwargs = dict(s_churn=20.0) if method == "heun" else {}
    _, traj = samplers.sample(three, (50, 2), cond, method=method, steps=6, sigma_max=5.0, callback=seen.append,
                              return_trajectory=True, generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(seen) == 6
    for d in seen:
        if method != "heun":                     # under churn x_i gets noise first: D is evaluated at x_hat
            torch.testing.assert_close(d["denoised"], three(traj[d["i"]], d["sigma_hat"], cond), rtol=0, atol=0)
    if method == "heun":
        assert all(d["sigma_hat"] > d["sigma"] for d in seen)


def test_linear_beta_runs_the_steps_it_is_asked_for(three):
    """schedule="linear_beta" takes its own range (all DDPM time steps), not EDM's sigma_max = 80, which used to
    clip it: 10 steps run 10 levels from sigma_999 = 157 (docs/CONVENTIONS.md, section 5)."""
    seen = []
    samplers.sample(three, (8, 2), method="ddim", schedule="linear_beta", steps=10, callback=seen.append)
    assert len(seen) == 10
    torch.testing.assert_close(torch.tensor([d["sigma"] for d in seen] + [0.0], dtype=torch.float64),
                               samplers.linear_beta_sigmas(10), rtol=0, atol=0)
    assert 150 < seen[0]["sigma"] < 165


def test_schedule_defaults_are_the_schedules_own(three):
    """sample() leaves the schedule's arguments to the schedule: the same levels as calling it with steps only."""
    for name, fn in samplers.SCHEDULES.items():
        seen = []
        samplers.sample(three, (4, 2), method="euler", schedule=name, steps=7, callback=seen.append)
        assert [d["sigma"] for d in seen] == fn(7)[:-1].tolist(), name


def test_flow_schedule_is_sd3s_shift():
    """SD3's shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024) multiplies sigma = t / (1 - t) by s; unshifted,
    the levels are uniform in t between sigma_max / (1 + sigma_max) and sigma_min / (1 + sigma_min)."""
    base, shifted = samplers.flow_sigmas(20), samplers.flow_sigmas(20, shift=3.0)
    torch.testing.assert_close(shifted, 3.0 * base, rtol=1e-13, atol=0)
    t = base[:-1] / (1 + base[:-1])
    torch.testing.assert_close(t.diff(), torch.full((19,), t[1].item() - t[0].item(), dtype=torch.float64))
    torch.testing.assert_close(t[[0, -1]], torch.tensor([80 / 81, 0.002 / 1.002], dtype=torch.float64))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("model", ["denoiser", "velocity model"])
def test_euler_on_the_flow_schedule_is_euler_in_t(tree_mix, shift, model):
    """Euler in sigma at the levels t_i IS Euler in t on the flow ODE dx_t/dt = v(x_t, t), x_t = (1 - t) x0 + t eps
    = x / (1 + sigma), with the mixture's exact velocity v = (x_t - D(x_t / (1 - t); t / (1 - t))) / t: sampling the
    exact denoiser, or that velocity as a flow model (flow.VelocityDenoiser), gives the update in t to float64
    rounding (measured: 1.3e-14 and 7.5e-15 with shift 3)."""
    velocity = flow.denoiser_to_velocity(tree_mix)
    denoiser = tree_mix if model == "denoiser" else flow.VelocityDenoiser(velocity)
    sigmas = samplers.flow_sigmas(24, shift=shift)
    cond = torch.arange(200) % 2
    eps = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = (sigmas / (1 + sigmas)).tolist()
    x_t, path = t[0] * eps, [t[0] * eps]                      # x_t at t_0, i.e. x = x_t / (1 - t_0) = sigma_0 eps
    for t_i, t_next in zip(t[:-1], t[1:]):
        x_t = x_t + (t_next - t_i) * velocity(x_t, t_i, cond)
        path.append(x_t)
    x0, traj = samplers.sample(denoiser, sigmas[0].item() * eps, cond, method="euler", sigmas=sigmas,
                               return_trajectory=True)
    torch.testing.assert_close(traj / (1 + sigmas).reshape(-1, 1, 1), torch.stack(path), rtol=0, atol=1e-13)
    torch.testing.assert_close(x0, x_t, rtol=0, atol=1e-13)


def gaussian_pf_ode(x_start, s_max, sd=0.5):
    """Exact PF-ODE end point for N(0, sd^2 I) data: D = sd^2 x / (s^2 + sd^2), so dx/ds = s x / (s^2 + sd^2)
    and x(s) = x(s_max) sqrt((s^2 + sd^2) / (s_max^2 + sd^2)); at s = 0, x_start * sd / sqrt(s_max^2 + sd^2)."""
    return x_start * sd / math.sqrt(s_max ** 2 + sd ** 2)


@pytest.mark.parametrize("method, steps, tol, order", [("heun", 32, 1e-2, 2), ("euler", 256, 1e-2, 1),
                                                     ("ddim", 256, 1e-2, 1), ("dpmpp_2m", 32, 1e-2, 2)])
def test_deterministic_samplers_solve_the_gaussian_ode(method, steps, tol, order):
    """Against the closed-form PF-ODE solution for Gaussian data (Karras et al. 2022, Eq. 4 with the exact D):
    close at the given steps, and the error falls by 2^order when the steps double (measured: heun 4.5x, euler 2.0x,
    dpmpp_2m 4.8x from 16 to 32 steps)."""
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
    """Euler-Maruyama, DDPM and EDM's churning Heun on N(0, sd^2 I) data end with std sd (exact D; 40000 values:
    the std's standard error is 0.002; measured 0.505, 0.494 and 0.503 with s_churn = 80, the rest is the discretization)."""
    def exact(x, sigma, cond):
        return 0.25 * x / (torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2 + 0.25)
    for method, kwargs in (("euler_maruyama", {}), ("ddpm", {}), ("heun", dict(s_churn=80.0))):
        out = samplers.sample(exact, (20000, 2), method=method, steps=256, sigma_max=10.0, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1), **kwargs)
        assert abs(float(out.std()) - 0.5) < 0.012, (method, float(out.std()))


def test_guided_sampling_runs_on_images():
    def den(x, sigma, cond):
        return x / (1 + torch.as_tensor(sigma).reshape(-1, 1, 1, 1) ** 2)
    out = samplers.sample(guided(den, CFG(2.0)), (3, 3, 8, 8), torch.tensor([0, 1, 2]), steps=4,
                          generator=torch.Generator().manual_seed(0))
    # den ignores the label, so D_1 = D_0 and CFG leaves it as it is: the unguided samples, image batch and all
    plain = samplers.sample(den, (3, 3, 8, 8), torch.tensor([0, 1, 2]), steps=4,
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, plain)
    assert (out - out[:1]).abs().max() > 0.1                  # the rows are distinct samples


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
    (dict(schedule="vp", rho=5.0), ValueError, "rho is not an argument of schedule 'vp'"),
    (dict(schedule="linear_beta", rho=5.0), ValueError, "rho is not an argument of schedule 'linear_beta'"),
    (dict(shift=3.0), ValueError, "shift is not an argument of schedule 'edm'"),
    (dict(schedule="flow", shift=0.0), ValueError, "shift must be > 0"),
    (dict(schedule="flow", shift=-2.0), ValueError, "shift must be >= 0"),
    (dict(schedule="flow", shift=float("nan")), ValueError, "shift must be finite"),
    (dict(schedule="flow", sigma_max=float("inf")), ValueError, "sigma_max = inf is t = 1"),
    (dict(method="dpmpp_2m", steps=1), ValueError, "steps must be >= 2 for method 'dpmpp_2m'"),
    (dict(method="dpmpp_2m", sigmas=torch.tensor([3.0, 0.0])), ValueError, "steps must be >= 2"),
    (dict(method="euler", s_churn=1.0), ValueError, "s_churn is a parameter of method 'heun' only"),
    (dict(method="heun", s_tmin=0.1), ValueError, "s_tmin: used only with s_churn > 0"),
    (dict(method="heun", s_churn=0.0, s_noise=1.003), ValueError, "s_noise: used only with s_churn > 0"),
    (dict(method="heun", s_churn=-1.0), ValueError, "s_churn must be >= 0"),
    (dict(method="heun", s_churn=1.0, s_tmin=2.0, s_tmax=1.0), ValueError, "s_tmin must be <= s_tmax"),
    (dict(sigmas=torch.tensor([2.0, 1.0, 0.0]), rho=7.0), ValueError, "do not also pass rho"),
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


def test_sample_starts_a_run_and_samples_with_it(three):
    """sample() calls start_run(levels) once (the schedule-dependent methods read them) and evaluates only what it
    returned: the per-run object, never the one passed in."""
    class Run:
        def __init__(self, got):
            self.got = got

        def __call__(self, x, sigma, cond=None):
            self.got.append("run")
            return three(x, sigma, cond)

    class WithRuns:
        def __init__(self):
            self.got = []

        def start_run(self, sigmas):
            self.got.append(sigmas)
            return Run(self.got)

        def __call__(self, x, sigma, cond=None):
            raise AssertionError("sample() called the object instead of its run")

    den = WithRuns()
    samplers.sample(den, (4, 2), 0, method="euler", steps=5, sigma_max=5.0)
    torch.testing.assert_close(den.got[0], samplers.edm_sigmas(5, 0.002, 5.0, 7.0))
    assert den.got[1:] == ["run"] * 5
