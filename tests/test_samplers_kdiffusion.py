"""toydiff's DPM-Solver++(2M) and EDM stochastic sampler against k-diffusion's `sample_dpmpp_2m` and `sample_heun`
(with s_churn) on the same sigmas, the same start and the same noise, with the exact mixture as the denoiser.

k-diffusion is not a test extra: its wheel requires wandb, kornia, clip-anytorch, accelerate, clean-fid,
scikit-image and torchvision, and its package __init__ imports them all (pip's resolver even wants to replace torch).
The README's test command installs its wheel with `--no-deps`, with the two pure-Python packages its sampling module
imports (torchdiffeq, torchsde), and `_k_diffusion_sampling` loads that module, k-diffusion's real
`k_diffusion/sampling.py`, without the package __init__; the one helper it takes from `k_diffusion.utils`,
`append_dims`, is given by a three-line stand-in. Without the wheel the tests skip and say so.
"""
import importlib.metadata
import importlib.util
import sys
import types

import pytest
import torch

from toydiff import samplers


def _k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's own sampling module: from a full install, else its file loaded from the `--no-deps` wheel."""
    try:
        import k_diffusion.sampling
        return k_diffusion.sampling
    except ImportError:                                    # its __init__ imports wandb, kornia, ...
        pass
    try:
        path = importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion/sampling.py")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("k-diffusion is not installed: the README's test command installs it (--no-deps)",
                    allow_module_level=True)
    package, utils = types.ModuleType("_kdiffusion"), types.ModuleType("_kdiffusion.utils")
    package.__path__, package.utils = [], utils
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]   # k_diffusion.utils.append_dims
    sys.modules.update({"_kdiffusion": package, "_kdiffusion.utils": utils})
    spec = importlib.util.spec_from_file_location("_kdiffusion.sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kd = _k_diffusion_sampling()


def _model(mixture, cond):
    """k-diffusion's model(x, sigma [N]) on the exact mixture with fixed labels."""
    return lambda x, sigma: mixture(x, sigma, cond)


def _start(n, sigma_max, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigma_max


@pytest.mark.parametrize("schedule", [dict(), dict(schedule="vp", sigma_max=20.0), dict(schedule="flow", shift=3.0)])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_dpmpp_2m_equals_k_diffusion(tree_mix, schedule, dtype, atol):
    """Same sigmas (edm, vp, flow): equal to float rounding (measured: 2e-13 in float64, 2e-6 in float32, with
    |x| up to 2; k-diffusion forms sigma'/sigma as exp(-t')/exp(-t))."""
    schedule = dict(schedule)
    sigmas = samplers.SCHEDULES[schedule.pop("schedule", "edm")](12, **schedule)
    cond = torch.arange(300) % 2
    x0 = _start(300, sigmas[0].item()).to(dtype)
    seen = []
    ours = samplers.sample(tree_mix, x0, cond, method="dpmpp_2m", sigmas=sigmas, callback=seen.append)
    theirs_seen = []
    theirs = kd.sample_dpmpp_2m(_model(tree_mix, cond), x0.clone(), sigmas, callback=theirs_seen.append,
                                disable=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)
    # the callback's x0-hat is the one k-diffusion reports for the same step
    for a, b in zip(seen, theirs_seen, strict=True):
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=0, atol=atol)
    assert (ours - samplers.sample(tree_mix, x0, cond, method="euler", sigmas=sigmas)).abs().max() > 1e-3


@pytest.mark.parametrize("churn", [dict(s_churn=10.0), dict(s_churn=40.0, s_tmin=0.05, s_tmax=5.0, s_noise=1.007)])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_edm_stochastic_sampler_equals_k_diffusion_heun(three, churn, dtype, atol):
    """EDM Alg. 2 = k-diffusion's sample_heun with s_churn: the same generator seed gives the same noise (both draw
    one N(0, I) per step, also where gamma = 0 outside [s_tmin, s_tmax]). Measured: identical in float64, 5e-7
    apart in float32."""
    sigmas = samplers.edm_sigmas(16, sigma_max=10.0)
    cond = torch.arange(400) % 3
    x0 = _start(400, 10.0, seed=1).to(dtype)
    ours = samplers.sample(three, x0, cond, method="heun", sigmas=sigmas, generator=torch.Generator().manual_seed(7),
                           **churn)
    torch.manual_seed(7)                                             # k-diffusion draws with torch.randn_like
    theirs = kd.sample_heun(_model(three, cond), x0.clone(), sigmas.to(dtype), disable=True, **churn)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)
    plain = samplers.sample(three, x0, cond, method="heun", sigmas=sigmas)
    assert (ours - plain).abs().max() > 0.1                          # the churn does act
