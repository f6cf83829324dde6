"""The rectified-flow parametrization (toydiff.core.flow): the maps both ways against the closed-form velocity of a Gaussian
mixture, round trips, bad t, the flow-matching loss, the toy trainer's objective, and CFG on v == CFG on D."""
import math

import pytest
import torch

from toydiff import guidance as G
from toydiff import nets, training
from toydiff.core.flow import (VelocityDenoiser, denoiser_to_velocity, flow_matching_loss, sigma_to_t, t_to_sigma)


def closed_form_velocity(mix, x_t, t, cond):
    """E[n - y | x_t] for x_t = (1 - t) y + t n, y ~ the mixture (restricted to class `cond`, or all), float64:
    component k is Gaussian in (y, n, x_t), so with C_k = (1 - t)^2 S_k + t^2 I and r = x_t - (1 - t) mu_k,
    E[n | x_t, k] = t C_k^-1 r,  E[y | x_t, k] = mu_k + (1 - t) S_k C_k^-1 r,  weighted by p(k | x_t)."""
    keep = torch.ones_like(mix.weights, dtype=torch.bool) if cond is None else mix.labels == cond
    w, mu, cov = mix.weights[keep], mix.means[keep], mix.covs[keep]                    # [K], [K, 2], [K, 2, 2]
    tt = t[:, None, None, None]                                                           # [N, 1, 1, 1]
    eye = torch.eye(2, dtype=torch.float64)
    c = (1 - tt) ** 2 * cov + tt ** 2 * eye                                               # [N, K, 2, 2]
    r = x_t[:, None, :] - (1 - t[:, None, None]) * mu                                     # [N, K, 2]
    sol = torch.linalg.solve(c, r.unsqueeze(-1))                                         # C^-1 r [N, K, 2, 1]
    logp = (w.log() - 0.5 * (r.unsqueeze(-2) @ sol)[..., 0, 0] - 0.5 * torch.logdet(c) - math.log(2 * math.pi))
    resp = logp.softmax(1)                                                                # [N, K]
    v_k = ((tt * eye - (1 - tt) * cov) @ sol)[..., 0] - mu                                # [N, K, 2]
    return (resp[..., None] * v_k).sum(1)


def _points(gen, n=256):
    x_t = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 1.2
    t = torch.rand(n, generator=gen, dtype=torch.float64) * 0.9 + 0.05                   # t in [0.05, 0.95)
    return x_t, t


@pytest.mark.parametrize("which", ["three", "tree_mix"])
@pytest.mark.parametrize("cond", [None, 0, 1])
def test_denoiser_to_velocity_is_the_exact_velocity(request, gen, which, cond):
    mix = request.getfixturevalue(which)
    x_t, t = _points(gen)
    labels = None if cond is None else torch.full((x_t.shape[0],), cond)
    got = denoiser_to_velocity(mix)(x_t, t, labels)
    torch.testing.assert_close(got, closed_form_velocity(mix, x_t, t, cond), rtol=1e-12, atol=1e-12)   # max 9e-14


def test_velocity_denoiser_recovers_the_exact_denoiser(tree_mix, gen):
    x_t, t = _points(gen)
    exact_v = lambda x_t, t, cond: closed_form_velocity(tree_mix, x_t, t, None)             # noqa: E731
    sigma = t_to_sigma(t)
    x = x_t / (1 - t[:, None])
    torch.testing.assert_close(VelocityDenoiser(exact_v)(x, sigma, None), tree_mix(x, sigma, None),
                               rtol=1e-10, atol=1e-10)


def test_round_trips(three, gen):
    x_t, t = _points(gen)
    sigma, x = t_to_sigma(t), x_t / (1 - t[:, None])
    labels = torch.randint(-1, 3, (x.shape[0],), generator=gen)
    # denoiser -> velocity -> denoiser
    torch.testing.assert_close(VelocityDenoiser(denoiser_to_velocity(three))(x, sigma, labels), three(x, sigma, labels),
                               rtol=1e-12, atol=1e-12)
    # velocity -> denoiser -> velocity, for a velocity that is no mixture's
    v = lambda x_t, t, cond: torch.sin(3 * x_t) * (1 + t[:, None]) + cond[:, None]          # noqa: E731
    torch.testing.assert_close(denoiser_to_velocity(VelocityDenoiser(v))(x_t, t, labels), v(x_t, t, labels),
                               rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t)), t, rtol=1e-15, atol=1e-15)


def test_the_ends_of_the_path(three):
    x = torch.tensor([[0.3, -2.0], [1.0, 4.0]], dtype=torch.float64)
    v = lambda x_t, t, cond: x_t * 7 + 1                                                      # noqa: E731
    assert torch.equal(VelocityDenoiser(v)(x, 0.0, None), x)                                 # sigma = 0: D = x
    assert torch.equal(denoiser_to_velocity(three)(x, 0.0, None), -x)                        # t = 0: v = E[n] - y


@pytest.mark.parametrize("t", [1.0, -0.1, float("nan"), torch.tensor([0.5, 1.0]), 1.5])
def test_t_outside_the_unit_interval_is_refused(three, t):
    x = torch.zeros(2, 2)
    for model in (denoiser_to_velocity(three), nets.VelocityMLP()):
        with pytest.raises(ValueError, match=r"^t must (lie in \[0, 1\)|be finite|be >= 0)"):
            model(x, t, None)
    with pytest.raises(TypeError, match="velocity"):
        VelocityDenoiser("net")


def test_flow_matching_loss_is_the_denoiser_error_over_t_squared(gen):
    y, n = torch.randn(64, 2, generator=gen, dtype=torch.float64), torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(64, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    v, target = torch.randn(64, 2, generator=gen, dtype=torch.float64), torch.randn(64, 2, generator=gen,
                                                                                    dtype=torch.float64)
    x_t = (1 - t[:, None]) * y + t[:, None] * n
    d = x_t - t[:, None] * v
    torch.testing.assert_close(flow_matching_loss(v, y, n, t, target), (d - target).square().sum(1) / t ** 2)
    torch.testing.assert_close(flow_matching_loss(v, y, n, t), (v - (n - y)).square().sum(1))
    torch.testing.assert_close(flow_matching_loss(v, y, n, t, y), flow_matching_loss(v, y, n, t))
    zero = flow_matching_loss(v, y, n, torch.zeros(64, dtype=torch.float64), target)        # t = 0: the plain target
    torch.testing.assert_close(zero, (v - (n - y)).square().sum(1))


def test_train_objective(three, tmp_path):
    with pytest.raises(ValueError, match="objective"):
        training.train(nets.MLPDenoiser(num_classes=3), three, steps=2, objective="flow", progress=False)
    with pytest.raises(ValueError, match="objective"):
        training.train(nets.VelocityMLP(num_classes=3), three, steps=2, progress=False)
    with pytest.raises(ValueError, match="objective"):
        training.train(nets.VelocityMLP(num_classes=3), three, steps=2, objective="rf", progress=False)
    runs = [training.train(nets.VelocityMLP(num_classes=3, width=16), three, steps=8, batch_size=64, pool_size=512,
                           objective=obj, loss="component", progress=False).ema for obj in ("flow", "flow", "flow_uniform")]
    same = [torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values())]
    assert all(same)                                                                      # seeded: bit-identical
    assert not all(torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[2].state_dict().values()))
    ck = tmp_path / "run.pt"
    training.train(nets.VelocityMLP(num_classes=3, width=16), three, steps=4, batch_size=64, pool_size=512,
                   objective="flow", checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="objective"):                                  # another objective: refused
        training.train(nets.VelocityMLP(num_classes=3, width=16), three, steps=8, batch_size=64, pool_size=512,
                       objective="flow_uniform", checkpoint=ck, resume=True, progress=False)


@pytest.mark.parametrize("w", [0.0, 2.0, 4.0])
def test_cfg_on_velocity_equals_cfg_on_the_denoiser(three, gen, w):
    """Guidance is affine in the prediction and, for fixed (x, sigma), so are both maps: the same CFG object gives
    the same guided denoiser whether it combines velocities or denoised points."""
    x_t, t = _points(gen, 128)
    sigma, x = t_to_sigma(t), x_t / (1 - t[:, None])
    labels = torch.randint(0, 3, (x.shape[0],), generator=gen)
    v = denoiser_to_velocity(three)
    on_v = VelocityDenoiser(G.guided(v, G.CFG(w)))                     # the guidance combines v_1, v_0 (t as its sigma)
    on_d = G.guided(VelocityDenoiser(v), G.CFG(w))
    torch.testing.assert_close(on_v(x, sigma, labels), on_d(x, sigma, labels), rtol=1e-10, atol=1e-10)
    # the modifiers that are not affine land elsewhere (benchmarks/flow_guidance_gap.py measures how far)
    for method in (G.CFG(4.0, rescale=0.7), G.APG(4.0)):
        gap = (VelocityDenoiser(G.guided(v, method))(x, sigma, labels) - G.guided(VelocityDenoiser(v), method)(x, sigma, labels))
        assert gap.norm(dim=1).max() > 1e-2


def test_a_guided_velocity_model_starts_its_run_in_t(three):
    """The sampler's start_run(sigmas) reaches a guidance applied to the velocity model as levels in t."""
    wrapped = VelocityDenoiser(G.guided(denoiser_to_velocity(three), G.LinearCFG(3.0)))
    run = wrapped.start_run(torch.tensor([5.0, 1.0, 0.2, 0.0], dtype=torch.float64))
    t = torch.tensor([5 / 6, 0.5, 0.2 / 1.2], dtype=torch.float64)
    assert run.velocity.guidance.time(t).tolist() == [1.0, 0.5, 0.0]   # t_i at level i of 3: 1 - i / 2
