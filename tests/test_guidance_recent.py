"""CFG-Zero* (Fan et al. 2025) and the linear CFG schedule (Wang et al. 2024) against direct implementations of
their papers' formulas on fixed tensors, with the exact mixture as the denoiser."""
import pytest
import torch

from toydiff import guidance as G
from toydiff import samplers
from toydiff.denoiser import start_run
from toydiff.guidance import CFGZeroStar, LinearCFG


def _cfg_zero_star_reference(x, sigma, d_c, d_u, w):
    """Fan et al. 2025, written out in flow-matching terms: z = x / (1 + sigma), t = sigma / (1 + sigma),
    v = eps - x0 with eps = (x - D) / sigma; s* = <v_c, v_u> / |v_u|^2; v = (1 - w) s* v_u + w v_c."""
    s = sigma[:, None]
    v_c, v_u = (x - d_c) / s - d_c, (x - d_u) / s - d_u
    s_star = (v_c * v_u).sum(1, keepdim=True) / (v_u * v_u).sum(1, keepdim=True)
    v = (1 - w) * s_star * v_u + w * v_c
    z, t = x / (1 + s), s / (1 + s)
    x0 = z - t * v                                                      # x0 = z_t - t v for z_t = (1 - t) x0 + t eps
    return x0, s_star


@pytest.mark.parametrize("w", [1.0, 2.5, 5.0])
def test_cfg_zero_star_matches_formula(three, batch, w):
    x, sigma, cond = batch
    d_c, d_u = three(x, sigma, cond), three(x, sigma, torch.full_like(cond, -1))
    expected, s_star = _cfg_zero_star_reference(x, sigma, d_c, d_u, w)
    out = G.guided(three, CFGZeroStar(w, zero_init=0))(x, sigma, cond)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    assert (s_star - 1).abs().max() > 1e-3                               # the optimized scale is not CFG's 1 here
    if w != 1:
        assert (out - G.guided(three, G.CFG(w))(x, sigma, cond)).abs().max() > 1e-3


def test_cfg_zero_star_zero_init_and_autoguidance_base(three, batch):
    x, sigma, cond = batch
    weak = lambda x, s, c: three(x, (torch.as_tensor(s, dtype=x.dtype) ** 2 + 0.09).sqrt(), c)   # noqa: E731
    den = start_run(G.guided(three, CFGZeroStar(3.0, on=G.AutoGuidance(weak))),
                    torch.tensor([3.0, 1.0, 0.5, 0.0]))                # a run whose second level is 1: zero above it
    out = den(x, sigma, cond)
    first = sigma > 1.0
    torch.testing.assert_close(out[first], x[first] / (1 + sigma[first, None]))      # v = 0: z stays put
    expected, _ = _cfg_zero_star_reference(x, sigma, three(x, sigma, cond), weak(x, sigma, cond), 3.0)
    torch.testing.assert_close(out[~first], expected[~first], rtol=1e-9, atol=1e-9)


class _Recorder:
    """A denoiser that records, per call, its sigma and whether the output is CFG-Zero*'s zero velocity."""

    def __init__(self, den, calls=None, runs=None):
        self.den, self.calls, self.runs = den, [] if calls is None else calls, [] if runs is None else runs

    def start_run(self, sigmas):
        self.runs.append(sigmas)
        return _Recorder(start_run(self.den, sigmas), self.calls, self.runs)

    def __call__(self, x, sigma, cond=None):
        out = self.den(x, sigma, cond)
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        self.calls.append((s, bool(torch.equal(out, x / (1 + torch.as_tensor(sigma, dtype=x.dtype))))))
        return out


@pytest.mark.parametrize("sigma_max", [5.0, 10.0])
@pytest.mark.parametrize("method,k", [("euler", 1), ("euler", 2), ("heun", 1)])
def test_cfg_zero_star_zero_init_fires_on_the_first_steps(three, sigma_max, method, k):
    """The registry's recipe (K = 1) and K = 2 under the toy's sigma_max 5 and the bench's old 10: the sampler's
    start_run(sigmas) puts zero-init on exactly the first K levels, whatever sigma_max; with Euler z = x / (1 + sigma)
    stays put through them and moves at the next step."""
    g = G.make("cfg_zero_star", 4.0) if k == 1 else CFGZeroStar(4.0, zero_init=k)
    den = _Recorder(G.guided(three, g))
    levels = samplers.edm_sigmas(12, 0.002, sigma_max, 7.0)
    _, traj = samplers.sample(den, (16, 2), 0, method=method, steps=12, sigma_max=sigma_max, return_trajectory=True,
                              generator=torch.Generator().manual_seed(0))
    zeroed = [s for s, z in den.calls if z]
    assert zeroed == pytest.approx(levels[:k].tolist(), rel=1e-6)       # the first K levels, each called once
    assert den.calls[0][0] == pytest.approx(sigma_max)
    if method == "euler":
        z = [traj[i] / (1 + levels[i].item()) for i in range(k + 2)]
        for i in range(1, k + 1):
            torch.testing.assert_close(z[i], z[0])
        assert (z[k + 1] - z[0]).abs().max() > 1e-3


def test_cfg_zero_star_refuses_bad_settings(three, batch):
    x, sigma, cond = batch
    with pytest.raises(ValueError, match="rescale"):
        CFGZeroStar(2.0, rescale=0.5)
    with pytest.raises(TypeError, match="on"):
        CFGZeroStar(2.0, on=G.APG(2.0))
    with pytest.raises(TypeError, match="zero_init"):
        CFGZeroStar(2.0, zero_init=float("nan"))
    with pytest.raises(ValueError, match="start_run"):                 # zero-init with no schedule: no silent guess
        G.guided(three, CFGZeroStar(2.0))(x, sigma, cond)
    with pytest.raises(ValueError, match="zero_init"):
        CFGZeroStar(2.0, zero_init=3).start_run(torch.tensor([2.0, 1.0, 0.5, 0.0]))


def _edm_time(sigma, lo, hi, rho):
    return (sigma ** (1 / rho) - lo ** (1 / rho)) / (hi ** (1 / rho) - lo ** (1 / rho))


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_linear_cfg_matches_formula(three, batch, w):
    """At the levels of an EDM run, t is Karras et al.'s Eq. 5 fraction; the weight is Wang et al.'s linear one."""
    x, _, cond = batch
    lo, hi, rho = 0.002, 10.0, 7.0
    levels = samplers.edm_sigmas(64, lo, hi, rho)
    sigma = levels[:-1]
    w_t = (1 + 2 * (w - 1) * (1 - _edm_time(sigma, lo, hi, rho)))[:, None]   # Wang et al. 2024, linear, mean = static
    d_c, d_u = three(x, sigma, cond), three(x, sigma, torch.full_like(cond, -1))
    den = start_run(G.guided(three, LinearCFG(w)), levels)
    torch.testing.assert_close(den(x, sigma, cond), d_u + w_t * (d_c - d_u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma_max", [5.0, 10.0])
def test_linear_cfg_starts_at_t_1_for_any_sigma_max(three, sigma_max):
    """The registry's recipe sampled from sigma_max 5 or 10: t = 1 (weight 1) at the first sigma, 0 (weight
    2w - 1) at the last, and the mean strength over the evaluated levels is the static w - 1."""
    g, den = G.make("linear_cfg", 4.0), _Recorder(G.guided(three, G.make("linear_cfg", 4.0)))
    samplers.sample(den, (8, 2), 0, method="euler", steps=32, sigma_max=sigma_max)
    (levels,) = den.runs                                                  # the levels the sampler started the run with
    run = g.start_run(levels)
    assert [s for s, _ in den.calls] == pytest.approx(levels[:-1].tolist(), rel=1e-6)    # euler: each level once
    seen = [float(run.weight(s.reshape(1))) for s in levels[:-1]]
    assert seen[0] == pytest.approx(1.0) and seen[-1] == pytest.approx(7.0)
    assert sum(w - 1 for w in seen) / len(seen) == pytest.approx(3.0, abs=1e-9)
    between = run.time(torch.tensor([0.5 * (sigma_max + levels[1].item())], dtype=torch.float64))
    assert 0 < 1 - float(between) < 1 / 31                               # between the first two levels' t


def test_linear_cfg_needs_the_schedule(three, batch):
    x, sigma, cond = batch
    with pytest.raises(ValueError, match="start_run"):
        G.guided(three, LinearCFG(2.0))(x, sigma, cond)
    with pytest.raises(ValueError, match="decreasing"):
        LinearCFG(2.0).start_run(torch.tensor([1.0, 2.0, 0.0]))


def test_no_run_state_outlives_its_run(three, batch):
    """A sampling run leaves the guidance as it was: after sampling with LinearCFG (whose last run ended at weight
    2w - 1 = 5 at the smallest level) the object still has no schedule and refuses a call outside a run, instead of
    weighting with the last run's levels; a second run from sigma_max 10 weights as a first one would."""
    x, _, cond = batch
    den = G.guided(three, LinearCFG(3.0))
    samplers.sample(den, (8, 2), 0, method="euler", steps=4, sigma_max=5.0)
    with pytest.raises(ValueError, match="start_run"):
        den(x, 1.0, cond)
    levels = samplers.edm_sigmas(6, 0.002, 10.0, 7.0)
    fresh = start_run(G.guided(three, LinearCFG(3.0)), levels)(x, 1.0, cond)
    torch.testing.assert_close(start_run(den, levels)(x, 1.0, cond), fresh)


def test_interleaved_runs_keep_their_own_state(three, batch):
    """Two runs of one guided denoiser stepped alternately (two samplers sharing a model) equal the same runs one
    after the other: APG's momentum lives in each run, not in the shared object."""
    x, _, cond = batch
    den = G.guided(three, G.APG(3.0, momentum=-0.5, norm_threshold=1.0))
    a_levels, b_levels = samplers.edm_sigmas(4, 0.002, 5.0, 7.0), samplers.edm_sigmas(4, 0.01, 2.0, 7.0)
    alone = [[run(x, s, cond) for s in levels[:-1]]
             for levels in (a_levels, b_levels) for run in [start_run(den, levels)]]
    a, b = start_run(den, a_levels), start_run(den, b_levels)
    for i in range(4):
        torch.testing.assert_close(a(x, a_levels[i], cond), alone[0][i], rtol=0, atol=0)
        torch.testing.assert_close(b(x, b_levels[i], cond), alone[1][i], rtol=0, atol=0)
