"""Denoiser contract, EDM preconditioning, energy and twin heads, parametrization wrappers (toydiff.nets, toydiff.denoiser)."""
import math

import pytest
import torch

from toydiff.datasets import three_gaussians
from toydiff.denoiser import (EpsDenoiser, ScoreDenoiser, VDenoiser, VPEpsDenoiser, count_parameters, denoiser_to_eps,
                              denoiser_to_score, denoiser_to_v, denoiser_to_vp_eps)
from toydiff.nets import EnergyMLPDenoiser, MLPDenoiser, TwinHeadMLPDenoiser, build_model

VARIANTS = [MLPDenoiser, EnergyMLPDenoiser, TwinHeadMLPDenoiser]


def randomized(cls, **kw):
    """A model with random (non-zero) output layers, so tests see a non-trivial F."""
    model = cls(num_classes=3, width=16, depth=3, **kw)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if name.startswith("out"):
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("cls", VARIANTS)
def test_contract_shapes_sigma_forms_and_null(cls):
    model = randomized(cls)
    x = torch.randn(5, 2)
    cond = torch.tensor([0, 1, 2, -1, 0])
    out = model(x, torch.full((5,), 0.7), cond)
    assert out.shape == (5, 2) and out.dtype == x.dtype and torch.isfinite(out).all()
    torch.testing.assert_close(model(x, 0.7, cond), out)
    torch.testing.assert_close(model(x, torch.tensor(0.7), cond), out)
    torch.testing.assert_close(model(x, 0.7, None), model(x, 0.7, torch.full((5,), -1)))
    assert not torch.allclose(model(x, 0.7, torch.zeros(5, dtype=torch.long)), model(x, 0.7, None))
    with torch.no_grad():  # works (energy head: autograd inside) under no_grad callers
        torch.testing.assert_close(model(x, 0.7, cond), out.detach())


@pytest.mark.parametrize("cls", VARIANTS)
def test_contract_bad_input(cls):
    model = cls(num_classes=3, width=8, depth=2)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(4, 3), 1.0)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        model(x, -1.0)
    with pytest.raises(ValueError, match="sigma must be finite"):
        model(x, float("nan"))
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        model(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"cond labels must lie in \[-1, 2\]"):
        model(x, 1.0, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="cond must be an integer tensor"):
        model(x, 1.0, torch.zeros(4))
    with pytest.raises(ValueError, match="num_classes"):
        cls(num_classes=-1)


@pytest.mark.parametrize("cls", VARIANTS)
def test_sigma_to_zero_returns_x_and_init_is_wiener_filter(cls):
    model = randomized(cls)
    x = 3 * torch.randn(64, 2)
    torch.testing.assert_close(model(x, 0.0), x)
    assert (model(x, 1e-4) - x).abs().max() < 1e-3
    fresh = cls(num_classes=3)  # zero output layer: D = c_skip x, the denoiser of N(0, sd^2 I) data
    torch.testing.assert_close(fresh(x, 0.3, None), 0.25 / (0.09 + 0.25) * x)


def test_energy_denoiser_is_x_plus_sigma2_grad_log_density():
    model = randomized(EnergyMLPDenoiser)
    x = torch.randn(32, 2, dtype=torch.float64)
    model.double()
    sigma = torch.rand(32, dtype=torch.float64) * 2 + 0.01
    cond = torch.randint(-1, 3, (32,))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_density(xg, sigma, cond).sum(), xg)
    torch.testing.assert_close(model(x, sigma, cond), x + sigma[:, None] ** 2 * grad)
    assert model.log_density(x, 0.0, cond).isfinite().all()


def test_energy_training_graph_only_when_grad_enabled():
    model = randomized(EnergyMLPDenoiser)
    x = torch.randn(8, 2)
    assert model(x, 0.5).requires_grad  # training: second-order graph through the parameters
    with torch.no_grad():
        assert not model(x, 0.5).requires_grad


def test_twin_head_pair_matches_calls():
    model = randomized(TwinHeadMLPDenoiser)
    x, sigma = torch.randn(6, 2), torch.rand(6) + 0.1
    cond = torch.tensor([0, 1, 2, -1, 2, 0])
    d_cond, d_uncond = model.denoise_pair(x, sigma, cond)
    torch.testing.assert_close(d_cond, model(x, sigma, cond))
    torch.testing.assert_close(d_uncond, model(x, sigma, None))
    torch.testing.assert_close(d_cond[3], d_uncond[3])  # a null row is null in both
    assert not torch.allclose(d_cond[0], d_uncond[0])


def test_deterministic_construction_and_rebuild():
    a, b, c = MLPDenoiser(num_classes=2, seed=3), MLPDenoiser(num_classes=2, seed=3), MLPDenoiser(num_classes=2)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.inp.weight, c.inp.weight)
    state = torch.get_rng_state()
    d = build_model("TwinHeadMLPDenoiser", TwinHeadMLPDenoiser(num_classes=2, width=32).config)
    assert torch.equal(state, torch.get_rng_state())  # construction leaves the global RNG alone
    assert isinstance(d, TwinHeadMLPDenoiser) and d.config["width"] == 32
    # inp (2 + 4) * 8 + 8, embedding 3 * 8, one hidden 8 * 8 + 8, out 8 * 2 + 2
    assert count_parameters(MLPDenoiser(num_classes=2, width=8, depth=2, num_freqs=4)) == 56 + 24 + 72 + 18
    with pytest.raises(ValueError, match="unknown model class"):
        build_model("Nope", {})


SIGMAS = torch.tensor([0.01, 0.1, 0.5, 2.0, 20.0]).repeat_interleave(20)


@pytest.mark.parametrize("wrap,unwrap", [
    (EpsDenoiser, denoiser_to_eps),
    (ScoreDenoiser, denoiser_to_score),
    (lambda m: VDenoiser(m, 0.5), lambda d: denoiser_to_v(d, 0.5)),
])
def test_wrappers_round_trip_exact_denoiser(wrap, unwrap):
    mix = three_gaussians()
    x = torch.randn(100, 2, dtype=torch.float64) * (1 + SIGMAS[:, None].double())
    cond = torch.randint(-1, mix.num_classes, (100,))
    torch.testing.assert_close(wrap(unwrap(mix))(x, SIGMAS.double(), cond), mix.denoise(x, SIGMAS.double(), cond))


def test_v_prediction_sign_against_salimans_ho_definition():
    """Point-mass data y: D must be y exactly when v = alpha n - beta y / sd (Salimans & Ho 2022)."""
    sd, y = 0.5, torch.tensor([[0.3, -0.2]], dtype=torch.float64).repeat(100, 1)
    s = SIGMAS.double()[:, None]
    n = torch.randn(100, 2, dtype=torch.float64)
    alpha, beta = sd / (s ** 2 + sd ** 2).sqrt(), s / (s ** 2 + sd ** 2).sqrt()
    v = alpha * n - beta * y / sd
    torch.testing.assert_close(VDenoiser(lambda x, sigma, cond: v, sd)(y + s * n, SIGMAS.double()), y)


def test_vp_eps_denoiser_ddpm_view():
    """A DDPM eps-model of x_t = sqrt(abar) y + sqrt(1 - abar) eps, called at table sigmas, recovers D."""
    mix = three_gaussians()
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    sig_table = ((1 - abar) / abar).sqrt()
    t_idx = torch.tensor([0, 10, 100, 500, 999])
    sigma = sig_table[t_idx].repeat_interleave(4)
    x = torch.randn(20, 2, dtype=torch.float64)
    calls = []
    exact_eps = denoiser_to_vp_eps(mix.denoise, abar)        # the library's inverse of VPEpsDenoiser

    def eps_model(x_t, t, cond):  # x_t in the VP scale; t continuous
        calls.append(t)
        return exact_eps(x_t, t, cond)

    den = VPEpsDenoiser(eps_model, abar)
    torch.testing.assert_close(den(x, sigma, None), mix.denoise(x, sigma))
    torch.testing.assert_close(calls[0], t_idx.double().repeat_interleave(4))
    mid = den.sigma_to_t(((sig_table[10].log() + sig_table[11].log()) / 2).exp().reshape(1))
    assert math.isclose(float(mid), 10.5, abs_tol=1e-9)
    # the inverse by hand at a table step: x = x_t sqrt(1 + s^2), eps = (x - D(x; s)) / s
    x_t, s = x[:4] / (1 + sig_table[10] ** 2).sqrt(), sig_table[10]
    torch.testing.assert_close(exact_eps(x_t, torch.full((4,), 10.0, dtype=torch.float64), None),
                               (x[:4] - mix.denoise(x[:4], s)) / s)
    with pytest.raises(ValueError, match="alphas_cumprod must be a 1-d tensor"):
        VPEpsDenoiser(eps_model, abar.flip(0))


def test_position_features_are_their_mean_under_the_input_noise():
    model = MLPDenoiser(num_classes=1, width=16, depth=2, position_freqs=6, position_scale=3.0, seed=2)
    assert model.config["position_freqs"] == 6 and "position_freqs" not in MLPDenoiser().config
    assert "position_b" not in MLPDenoiser().state_dict()          # plain models (and their checkpoints) as before
    rebuilt = build_model("MLPDenoiser", model.config)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    sigma, sd, y = 0.04, model.sigma_data, torch.tensor([[0.3, -0.2]])
    c_in = (sigma ** 2 + sd ** 2) ** -0.5
    pos = slice(2 + 16, None)                                       # after x_in and the 16 noise features
    damped = model._features(c_in * y, torch.tensor([[math.log(sigma) / 4]]))[0, pos]
    # Monte Carlo: the undamped features (sigma 1e-9: damping 1) of the noisy input c_in (y + sigma n), averaged
    n = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    noisy = model._features(c_in * (y + sigma * n), torch.full((200_000, 1), math.log(1e-9) / 4))[:, pos].mean(0)
    torch.testing.assert_close(damped, noisy, rtol=0, atol=0.01)
    assert (damped.abs() < 0.9).any() and noisy.abs().max() > 0.05   # the damping is not trivially 1 or 0 here
    with pytest.raises(ValueError, match="position_freqs"):
        MLPDenoiser(position_freqs=-1)
    with pytest.raises(ValueError, match="position_scale"):
        MLPDenoiser(position_freqs=4, position_scale=0.0)
