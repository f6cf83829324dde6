"""mlp_jacobian: the forward-mode divergence of an MLPDenoiser equals autograd's, and D is the forward's, bit for bit."""
import pytest
import torch

from toydiff import density, nets, zoo
from toydiff.toy import mlp_jacobian


def _net(dtype, **kwargs):
    """An MLPDenoiser with every weight random (the zero output layer of a fresh one has a trivial Jacobian)."""
    net = nets.MLPDenoiser(seed=3, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.4)
    return net


def _autograd_divergence(net, x, sigma, cond):
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        d = net(xg, sigma, cond)
        rows = [torch.autograd.grad(d[:, j].sum(), xg, retain_graph=True)[0][:, j] for j in range(x.shape[1])]
    return d.detach(), sum(rows)


@pytest.mark.parametrize("kwargs", [dict(num_classes=1, position_freqs=8), dict(num_classes=0, position_freqs=8),
                                    dict(num_classes=2), dict(num_classes=0, width=16, depth=2)])
def test_divergence_equals_autograd(kwargs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64) * 0.7
    cond = torch.randint(-1, max(kwargs["num_classes"], 1), (200,), generator=g) if kwargs["num_classes"] else None
    net64, net32 = _net(torch.float64, **kwargs), _net(torch.float32, **kwargs)
    for sigma in (0.002, 0.03, 0.4, 5.0, torch.rand(200, generator=g, dtype=torch.float64) * 3):
        d, div = mlp_jacobian.denoise_and_divergence(net64, x, sigma, cond)
        d_ref, div_ref = _autograd_divergence(net64, x, sigma, cond)
        assert torch.equal(d, d_ref)
        torch.testing.assert_close(div, div_ref, rtol=0, atol=1e-10)
        s32 = sigma.float() if isinstance(sigma, torch.Tensor) else sigma
        d32, div32 = mlp_jacobian.denoise_and_divergence(net32, x.float(), s32, cond)
        with torch.no_grad():
            assert torch.equal(d32, net32(x.float(), s32, cond))                  # the forward's bits
        torch.testing.assert_close(div32, _autograd_divergence(net32, x.float(), s32, cond)[1], rtol=1e-5, atol=1e-4)


def test_only_for_mlp_denoisers_own_forward():
    assert mlp_jacobian.has_exact_divergence(nets.MLPDenoiser())
    for other in (nets.EnergyMLPDenoiser(), nets.TwinHeadMLPDenoiser(), nets.VelocityMLP()):
        assert not mlp_jacobian.has_exact_divergence(other)
        with pytest.raises(TypeError, match="MLPDenoiser"):
            mlp_jacobian.denoise_and_divergence(other, torch.zeros(3, 2), 0.5)


def test_ode_log_density_takes_it_and_agrees_with_autograd(monkeypatch):
    """The PF-ODE density of an MLPDenoiser through the forward-mode divergence is the autograd one's to float32
    rounding (the demo's zoom maps moved by < 1e-6 nats)."""
    net = zoo.pretrained(progress=False).guide                      # a trained 4 x 32 with position features
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(2)) * 0.6 + torch.tensor([0.15, 0.92])
    cond = torch.zeros(64, dtype=torch.long)
    fast = density.ode_log_density(net, x, cond, sigma=0.03, sigma_max=5.0, steps=12)
    monkeypatch.setattr(density, "has_exact_divergence", lambda d: False)
    slow = density.ode_log_density(net, x, cond, sigma=0.03, sigma_max=5.0, steps=12)
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-5)
    assert not torch.equal(fast, slow)                      # the other path did run
