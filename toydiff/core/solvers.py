"""The sampling methods, each owning its loop (k-diffusion's habit), for any denoiser D(x, sigma, cond) in the EDM
formulation x = x0 + sigma n (Karras et al. 2022). `METHODS[name](denoiser, x, sigmas, cond, noise, **options)`
checks its keyword options and returns an iterator that runs the steps along the floats sigmas (decreasing, last 0),
keeping any history (DPM-Solver++'s previous x0-hat) in its own locals, and yields per step
(x at sigma_{i+1}, denoised = the x0-hat the step used, sigma_hat = the level it was evaluated at). `noise()` draws
N(0, I) like x. `toydiff.samplers.sample` is the entry point that drives them.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

from torch import Tensor

from .denoiser import Denoiser, renoise_of
from ..infra.validation import check_nonnegative

__all__ = ["METHODS", "RENOISE_METHODS", "heun", "euler", "euler_maruyama", "ddim", "ddpm", "dpmpp_2m"]

Steps = Iterator[tuple[Tensor, Tensor, float]]          # (x at sigma_{i+1}, denoised, sigma_hat) per step
Noise = Callable[[], Tensor]                            # draws N(0, I) shaped like x
# Euler, DDIM and DDPM re-noise with D_renoise where the denoiser offers `denoise_with_renoise` (CFG++,
# Chung et al. 2024: x0 from the guided D, noise eps = (x - D_renoise)/sigma from the unguided branch).
RENOISE_METHODS = ("euler", "ddim", "ddpm")


def _denoise(D, x, s, cond) -> tuple[Tensor, Tensor]:
    """(D_guided, D_renoise); one tensor twice for a plain denoiser."""
    pair = renoise_of(D)
    if pair is None:
        d = D(x, s, cond)
        return d, d
    return pair(x, s, cond)


def _heun_step(D, x, s, s_next, cond) -> tuple[Tensor, Tensor]:
    """EDM Algorithm 1, one step: Euler, then the trapezoidal correction (skipped on the last step to 0)."""
    denoised = D(x, s, cond)
    d = (x - denoised) / s                                        # dx/dsigma at sigma
    x_next = x + (s_next - s) * d
    if s_next > 0:
        d_next = (x_next - D(x_next, s_next, cond)) / s_next
        x_next = x + (s_next - s) * 0.5 * (d + d_next)
    return x_next, denoised


def heun(D: Denoiser, x: Tensor, sigmas: list[float], cond: Tensor | None, noise: Noise, *, s_churn: float = 0.0,
         s_tmin: float | None = None, s_tmax: float | None = None, s_noise: float | None = None) -> Steps:
    """EDM's sampler (Karras et al. 2022, arXiv 2206.00364): Algorithm 1 (deterministic Heun) with s_churn = 0,
    Algorithm 2 (stochastic) with s_churn > 0. Each step first raises the level by gamma (churn):

        gamma = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0,  sigma_hat = (1 + gamma) sigma_i
        x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise n,   then a Heun step from sigma_hat to sigma_{i+1}.

    With churn the noise n is drawn at every step, also where gamma = 0, as EDM's code and k-diffusion's
    `sample_heun` do, so the same generator gives the same samples. s_tmin (default 0), s_tmax (default inf) and
    s_noise (default 1) act only with s_churn > 0 and are refused without it."""
    s_churn = check_nonnegative(s_churn, "s_churn")
    extras = {k: v for k, v in (("s_tmin", s_tmin), ("s_tmax", s_tmax), ("s_noise", s_noise)) if v is not None}
    if extras and s_churn == 0:
        raise ValueError(f"{', '.join(extras)}: used only with s_churn > 0 (EDM Alg. 2); without churn it would be "
                         f"ignored")
    tmin = check_nonnegative(0.0 if s_tmin is None else s_tmin, "s_tmin")
    tmax = check_nonnegative(math.inf if s_tmax is None else s_tmax, "s_tmax", allow_inf=True)
    s_noise = check_nonnegative(1.0 if s_noise is None else s_noise, "s_noise")
    if tmin > tmax:
        raise ValueError(f"s_tmin must be <= s_tmax, got s_tmin={tmin:g}, s_tmax={tmax:g}")
    n = len(sigmas) - 1

    def run() -> Steps:
        nonlocal x
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            s_hat = s
            if s_churn > 0:
                eps = noise() * s_noise
                gamma = min(s_churn / n, math.sqrt(2) - 1) if tmin <= s <= tmax else 0.0
                s_hat = s * (gamma + 1)
                if gamma > 0:
                    x = x + eps * math.sqrt(s_hat ** 2 - s ** 2)         # x_hat: noise added up to sigma_hat
            x, denoised = _heun_step(D, x, s_hat, s_next, cond)
            yield x, denoised, s_hat
    return run()


def euler(D: Denoiser, x: Tensor, sigmas: list[float], cond: Tensor | None, noise: Noise) -> Steps:
    """Euler on the probability-flow ODE: x' = x + (sigma' - sigma)(x - D)/sigma = D + sigma' (x - D)/sigma;
    with CFG++ x' = D_guided + sigma' (x - D_renoise)/sigma. On `flow_sigmas` levels this is exactly Euler in t on the
    flow ODE, x_t' = x_t + (t' - t) v with v = (x_t - D)/t (the sampler of SD3 and Flux, Esser et al. 2024)."""
    def run() -> Steps:
        nonlocal x
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            d, d_renoise = _denoise(D, x, s, cond)
            x = x + (s_next - s) * (x - d) / s if d_renoise is d else d + s_next * (x - d_renoise) / s
            yield x, d, s
    return run()


def euler_maruyama(D: Denoiser, x: Tensor, sigmas: list[float], cond: Tensor | None, noise: Noise) -> Steps:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, Eq. 6 with sigma(t) = t; EDM Eq. 6 with beta = 1/sigma):
    x' = x + 2 (sigma - sigma')/sigma (D - x) + sqrt(2 sigma (sigma - sigma')) n.  The last step to 0 is the ODE's."""
    def run() -> Steps:
        nonlocal x
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            denoised = D(x, s, cond)
            if s_next == 0:
                x = denoised
            else:
                x = x + 2 * (s - s_next) / s * (denoised - x) + math.sqrt(2 * s * (s - s_next)) * noise()
            yield x, denoised, s
    return run()


def _ddim_update(x, denoised, s, s_next, eta, noise, renoise):
    """DDIM (Song et al. 2021, Eq. 12) in sigma space: keep the predicted noise eps = (x - D)/sigma for a part
    sigma_down of the next level and draw fresh noise for sigma_up, sigma_down^2 + sigma_up^2 = sigma'^2, with
    sigma_up = eta sigma' sqrt(1 - sigma'^2/sigma^2)  (eta = 1: DDPM ancestral sampling, Ho et al. 2020, Eq. 11).
    `renoise`: the prediction whose eps re-noises (CFG++; `denoised` itself otherwise)."""
    if s_next == 0:
        return denoised
    s_up = eta * s_next * math.sqrt(max(0.0, 1 - (s_next / s) ** 2))
    s_down = math.sqrt(s_next ** 2 - s_up ** 2)
    x_next = denoised + s_down * (x - renoise) / s
    return x_next + s_up * noise() if s_up > 0 else x_next


def ddim(D: Denoiser, x: Tensor, sigmas: list[float], cond: Tensor | None, noise: Noise, *, eta: float = 0.0) -> Steps:
    """DDIM with stochasticity eta >= 0 (0: deterministic, equal to Euler; 1: DDPM); see `_ddim_update`."""
    eta = check_nonnegative(eta, "eta")

    def run() -> Steps:
        nonlocal x
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            d, d_renoise = _denoise(D, x, s, cond)
            x = _ddim_update(x, d, s, s_next, eta, noise, d_renoise)
            yield x, d, s
    return run()


def ddpm(D: Denoiser, x: Tensor, sigmas: list[float], cond: Tensor | None, noise: Noise) -> Steps:
    """DDPM ancestral sampling (Ho et al. 2020, Eq. 11): DDIM with eta = 1."""
    return ddim(D, x, sigmas, cond, noise, eta=1.0)


def dpmpp_2m(D: Denoiser, x: Tensor, sigmas: list[float], cond: Tensor | None, noise: Noise) -> Steps:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2) in EDM's sigma (alpha = 1), as k-diffusion's
    `sample_dpmpp_2m`. With lambda = -log sigma and h_i = lambda_{i+1} - lambda_i = log(sigma_i / sigma_{i+1}):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h_i) D_hat,   D_hat = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1},
        r = h_{i-1} / h_i;  the first step and the last (to sigma = 0, where x_{N} = D_{N-1}) use D_hat = D_i.

    One denoiser evaluation a step; the previous D and h are the multistep history, locals of this run. Needs at
    least 2 steps (with 1 it is DDIM's single step)."""
    if len(sigmas) - 1 < 2:
        raise ValueError(f"steps must be >= 2 for method 'dpmpp_2m' (a multistep method; 1 step is DDIM's), "
                         f"got {len(sigmas) - 1}")

    def run() -> Steps:
        nonlocal x
        old_denoised, h_last = None, None
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            denoised = D(x, s, cond)
            if s_next == 0:
                x = denoised                                          # sigma' / sigma = 0, -expm1(-inf) = 1
            else:
                h = math.log(s / s_next)
                d_hat = denoised
                if old_denoised is not None:
                    r = h_last / h
                    d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = (s_next / s) * x - math.expm1(-h) * d_hat
                h_last = h
            old_denoised = denoised
            yield x, denoised, s
    return run()


METHODS: dict[str, Callable[..., Steps]] = {
    "heun": heun,
    "euler": euler,
    "euler_maruyama": euler_maruyama,
    "ddpm": ddpm,
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
}

