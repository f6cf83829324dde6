"""CFG-Zero* (Fan et al. 2025) and the linear CFG schedule (Wang et al. 2024) against direct implementations of
their papers' formulas on fixed tensors, with the exact mixture as the denoiser."""
import pytest
import torch

from toydiff import guidance as G
from toydiff import samplers
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
    out = G.guided(three, CFGZeroStar(w))(x, sigma, cond)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    assert (s_star - 1).abs().max() > 1e-3                               # the optimized scale is not CFG's 1 here
    if w != 1:
        assert (out - G.guided(three, G.CFG(w))(x, sigma, cond)).abs().max() > 1e-3


def test_cfg_zero_star_zero_init_and_autoguidance_base(three, batch):
    x, sigma, cond = batch
    weak = lambda x, s, c: three(x, (torch.as_tensor(s, dtype=x.dtype) ** 2 + 0.09).sqrt(), c)   # noqa: E731
    out = G.guided(three, CFGZeroStar(3.0, on=G.AutoGuidance(weak), zero_init=1.0))(x, sigma, cond)
    first = sigma > 1.0
    torch.testing.assert_close(out[first], x[first] / (1 + sigma[first, None]))      # v = 0: z stays put
    expected, _ = _cfg_zero_star_reference(x, sigma, three(x, sigma, cond), weak(x, sigma, cond), 3.0)
    torch.testing.assert_close(out[~first], expected[~first], rtol=1e-9, atol=1e-9)


def test_cfg_zero_star_refuses_bad_settings():
    with pytest.raises(ValueError, match="rescale"):
        CFGZeroStar(2.0, rescale=0.5)
    with pytest.raises(TypeError, match="on"):
        CFGZeroStar(2.0, on=G.APG(2.0))
    with pytest.raises(ValueError, match="zero_init"):
        CFGZeroStar(2.0, zero_init=float("nan"))


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_linear_cfg_matches_formula(three, batch, w):
    x, sigma, cond = batch
    lo, hi, rho = 0.002, 10.0, 7.0
    t = (sigma ** (1 / rho) - lo ** (1 / rho)) / (hi ** (1 / rho) - lo ** (1 / rho))
    w_t = (1 + 2 * (w - 1) * (1 - t))[:, None]                          # Wang et al. 2024, linear, mean = static
    d_c, d_u = three(x, sigma, cond), three(x, sigma, torch.full_like(cond, -1))
    out = G.guided(three, LinearCFG(w, sigma_min=lo, sigma_max=hi, rho=rho))(x, sigma, cond)
    torch.testing.assert_close(out, d_u + w_t * (d_c - d_u), rtol=1e-9, atol=1e-9)


def test_linear_cfg_mean_strength_equals_static():
    sigmas = samplers.edm_sigmas(32, 0.002, 10.0, 7.0)[:-1]
    g = LinearCFG(4.0, sigma_min=0.002, sigma_max=10.0, rho=7.0)
    w_t = g.weight(sigmas)
    assert float(w_t[0]) == pytest.approx(1.0) and float(w_t[-1]) == pytest.approx(7.0)
    assert float((w_t - 1).mean()) == pytest.approx(3.0, abs=1e-9)
    with pytest.raises(ValueError, match="sigma_min"):
        LinearCFG(2.0, sigma_min=1.0, sigma_max=0.5)
