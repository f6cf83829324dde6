"""Where toydiff's conventions differ from diffusers' and torch-fidelity's, measured on the same tensors.

Needs the peers (not project dependencies): `python -m pip install diffusers==0.42.1 torch-fidelity==0.3.0`.
Everything else (CFG's weight, EDM schedules and samplers) matched to float rounding when this was written; the
differences below are documented in docs/CONVENTIONS.md.

1. CFG rescale (Lin et al. 2023): toydiff rescales the denoised output D; diffusers' `rescale_noise_cfg` rescales
   the eps (or v) prediction. Same model, same x, sigma, w = 4, phi = 0.7: max |D_toydiff - D_diffusers|.
2. Rescale on 2D points: the per-sample std of two coordinates depends on the orientation of the plane. The exact
   three_gaussians() rotated by 45 degrees: max |R D(x) - D_rot(R x)| with and without rescale.
3. APG (Sadat et al. 2024): diffusers' defaults (eta 1, norm cap 15, on the model output, guided from D_0) vs
   toydiff's (eta 0, no cap, on D, guided from D_1); and the "sigma rose" momentum reset under a churning sampler.
4. Inception Score: toydiff's `inception_score` vs torch-fidelity's `isc_features_to_metric` (shuffle on/off).
5. linear_beta_sigmas time steps vs diffusers' DDIMScheduler timestep spacings.

    python benchmarks/conventions.py           # prints JSON; RESULTS.md quotes it
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from toydiff import datasets, guidance as G
from toydiff.distributions import GaussianMixture
from toydiff.denoiser import denoiser_to_eps, denoiser_to_v
from toydiff.samplers import linear_beta_sigmas


def _branches(den, x, s, c):
    """(D_1, D_0) of a class-conditional denoiser: the conditional and the null-label prediction."""
    return den(x, s, c), den(x, s, torch.full_like(c, -1))


def rescale_space(den, x: torch.Tensor, c: torch.Tensor, sigmas=(0.2, 1.0, 5.0), w=4.0, phi=0.7) -> dict:
    """max |D_toydiff - D_diffusers| when diffusers' rescale_noise_cfg acts on eps or on v (converted back to D)."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    out = {}
    for s in sigmas:
        xs = x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        sig = torch.full((x.shape[0],), s, dtype=x.dtype)
        with torch.no_grad():
            ours = G.CFG(w, rescale=phi)(den, xs, sig, c)
            plain = G.CFG(w)(den, xs, sig, c)
            row = {"D_range": float(plain.abs().max())}
            for space, to in (("eps", denoiser_to_eps), ("v", denoiser_to_v)):
                f = to(den)
                p1, p0 = f(xs, sig, c), f(xs, sig, torch.full_like(c, -1))
                guided = rescale_noise_cfg(p0 + w * (p1 - p0), p1, phi)
                # back to D: eps -> D = x - s eps; v -> D = c_skip x - c_out v (EDM, sigma_data 0.5)
                sd = 0.5
                d = xs - s * guided if space == "eps" else \
                    sd ** 2 / (s ** 2 + sd ** 2) * xs - s * sd / math.sqrt(s ** 2 + sd ** 2) * guided
                row[f"max_abs_diff_{space}"] = float((ours - d).abs().max())
            row["max_abs_rescale_effect"] = float((ours - plain).abs().max())
            out[f"sigma={s:g}"] = row
    return out


def _rotated(mix: GaussianMixture, angle: float) -> tuple[GaussianMixture, torch.Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    r = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return GaussianMixture(mix.weights, mix.means @ r.T, r @ mix.covs @ r.T, mix.labels), r


def _rescale_points(mix, x, s, c, w, phi, scale):
    """CFG rescale on points with a given per-sample scale (Lin et al. 2023, Eq. 15-16, applied to D)."""
    d1, d0 = _branches(mix, x, torch.full((x.shape[0],), s, dtype=x.dtype), c)
    dw = d0 + w * (d1 - d0)
    return phi * dw * scale(d1) / scale(dw).clamp_min(1e-12) + (1 - phi) * dw


def _std(t):
    return t.std(dim=1, unbiased=False, keepdim=True)             # Lin et al.'s image statistic, on 2 coordinates


def _rms(t):
    return t.square().mean(1, keepdim=True).sqrt()                # toydiff's statistic on points


def rescale_rotation(phi=0.7, w=4.0, sigmas=(0.1, 0.5, 2.0)) -> dict:
    """Rotation equivariance on the exact three_gaussians() (45 degrees) of CFG rescale with the std of the two
    coordinates and with the RMS, the largest |D| each produces, and toydiff's CFG(rescale=phi) vs the RMS one."""
    mix = datasets.three_gaussians()
    rot, r = _rotated(mix, math.pi / 4)
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.zeros(2000, dtype=torch.long)
    out = {}
    for s in sigmas:
        for name, scale in (("std", _std), ("rms", _rms)):
            a = _rescale_points(mix, x, s, c, w, phi, scale) @ r.T
            b = _rescale_points(rot, x @ r.T, s, c, w, phi, scale)
            out[f"{name} rescale {phi}, sigma={s:g}: rotation error"] = float((a - b).abs().max())
            out[f"{name} rescale {phi}, sigma={s:g}: max|D|"] = float(
                _rescale_points(mix, x, s, c, w, phi, scale).norm(dim=1).max())
        out[f"plain cfg, sigma={s:g}: max|D|"] = float(G.CFG(w)(mix, x, s, c).norm(dim=1).max())
        out[f"toydiff CFG(rescale) - rms, sigma={s:g}"] = float(
            (G.CFG(w, rescale=phi)(mix, x, s, c) - _rescale_points(mix, x, s, c, w, phi, _rms)).abs().max())
    return out


def apg_defaults(den, x, c, s=1.0, w=4.0) -> dict:
    """diffusers' normalized_guidance with its defaults vs toydiff's APG, both on D here (the space differs too)."""
    from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

    sig = torch.full((x.shape[0],), s, dtype=x.dtype)
    xs = x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    with torch.no_grad():
        d1, d0 = _branches(den, xs, sig, c)
        ref = lambda eta, r: normalized_guidance(d1, d0, w, None, eta, r)            # noqa: E731
        ours = lambda eta, r: G.APG(w, eta=eta, norm_threshold=r)(den, xs, sig, c)   # noqa: E731
        return {
            "eta1_nocap_max_abs_diff": float((ours(1.0, 0.0) - ref(1.0, 0.0)).abs().max()),
            "eta0_nocap_max_abs_diff (diffusers drops D_1's parallel part too)":
                float((ours(0.0, 0.0) - ref(0.0, 0.0)).abs().max()),
            "toydiff_defaults_vs_diffusers_defaults": float((ours(0.0, 0.0) - ref(1.0, 15.0)).abs().max()),
            "D_range": float(d1.abs().max()),
        }


def apg_churn_resets(steps=16, churn=0.2) -> dict:
    """How often a "sigma rose above the previous call's, so a new run" rule (toydiff's APG reset before issue 12)
    would clear the momentum inside ONE run of EDM's stochastic Heun sampler (Karras et al. 2022, Alg. 2:
    sigma_hat = sigma (1 + gamma), an Euler step to the next sigma, then Heun's correction there); gamma = 0 is the
    deterministic Heun sampler. The next step's sigma_hat exceeds the correction's sigma."""
    mix = datasets.three_gaussians()
    out = {"denoiser_calls_per_run": 2 * (steps - 1) - 1}
    for gamma in (0.0, churn):
        g = G.APG(4.0, momentum=-0.5).start_run(None)          # one run, as toydiff's samplers start it
        sig = torch.linspace(5.0, 0.05, steps, dtype=torch.float64).tolist() + [0.0]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(256, 2, generator=gen, dtype=torch.float64) * sig[0]
        c = torch.zeros(256, dtype=torch.long)
        cleared, last = 0, math.inf

        def den(x, s):
            nonlocal cleared, last
            cleared += s > last                                # the old rule: sigma above the previous call's
            last = s
            return g(mix, x, s, c)

        for i in range(steps - 1):
            s_hat = sig[i] * (1 + gamma)
            x = x + math.sqrt(s_hat ** 2 - sig[i] ** 2) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            d = (x - den(x, s_hat)) / s_hat
            x_next = x + (sig[i + 1] - s_hat) * d
            if sig[i + 1] > 0:
                x_next = x + (sig[i + 1] - s_hat) * (d + (x_next - den(x_next, sig[i + 1])) / sig[i + 1]) / 2
            x = x_next
        out[f"momentum_cleared_mid_run gamma={gamma:g}"] = int(cleared)
    return out


def _fidelity_isc():
    """torch-fidelity's `isc_features_to_metric`, its own source, compiled from metric_isc.py without importing the
    package (whose __init__ needs torchvision)."""
    import ast
    import importlib.util

    path = importlib.util.find_spec("torch_fidelity").submodule_search_locations[0] + "/metric_isc.py"
    tree = ast.parse(open(path).read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "isc_features_to_metric")
    ns = {"np": np, "torch": torch, "KEY_METRIC_ISC_MEAN": "mean", "KEY_METRIC_ISC_STD": "std"}
    exec(compile(ast.Module([fn], []), path, "exec"), ns)
    return ns["isc_features_to_metric"]


def inception_score_vs_fidelity() -> dict:
    from imagenet_ext.fid import inception_score

    isc_features_to_metric = _fidelity_isc()

    out = {}
    for n in (1000, 1003):
        logits = torch.randn(n, 1008, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
        ours = inception_score(logits.numpy())
        for shuffle in (False, True):
            ref = isc_features_to_metric(logits, splits=10, shuffle=shuffle)
            out[f"N={n} shuffle={shuffle}"] = {"ours": ours[0], "torch_fidelity": ref["mean"],
                                              "abs_diff": abs(ours[0] - ref["mean"])}
    return out


def ddpm_spacing(steps=10) -> dict:
    from diffusers import DDIMScheduler

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    all_sigmas = ((1 - torch.cumprod(1 - betas, 0)) / torch.cumprod(1 - betas, 0)).sqrt()
    ours = linear_beta_sigmas(steps)[:-1]
    t_ours = [int((all_sigmas - s).abs().argmin()) for s in ours]
    out = {"toydiff": t_ours}
    for spacing in ("linspace", "leading", "trailing"):
        sch = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing)
        sch.set_timesteps(steps)
        out[spacing] = [int(t) for t in sch.timesteps]
    out["equals"] = [k for k in ("linspace", "leading", "trailing") if out[k] == t_ours]
    return out


def main() -> None:
    torch.manual_seed(0)
    from imagenet_ext.checkpoint import load_denoiser
    from imagenet_ext.data import load_digits, to_float

    unet = load_denoiser("digits")
    digits = load_digits(16)
    x = to_float(digits.images[:64])
    c = digits.labels[:64]
    three = datasets.three_gaussians()
    px, py = three.sample(512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = {
        "rescale_space_digits_unet": rescale_space(unet, x, c),
        "rescale_space_three_gaussians": rescale_space(three, px, py),
        "rescale_rotation_45deg_three_gaussians": rescale_rotation(),
        "apg_digits_unet_sigma1": apg_defaults(unet, x, c),
        "apg_churn": apg_churn_resets(),
        "inception_score": inception_score_vs_fidelity(),
        "linear_beta_sigmas_timesteps_10": ddpm_spacing(),
    }
    print(json.dumps(res, indent=1, default=lambda v: round(v, 6) if isinstance(v, float) else str(v)))


if __name__ == "__main__":
    main()
