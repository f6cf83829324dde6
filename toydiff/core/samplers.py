"""Noise schedules and samplers for any denoiser D(x, sigma, cond), in the EDM formulation x = x0 + sigma n.

All samplers integrate from sigma_max down to 0 along a decreasing schedule sigma_0 > ... > sigma_{N-1} > sigma_N = 0
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Sec. 3-4):

    probability-flow ODE   dx/dsigma = (x - D(x; sigma)) / sigma                              (EDM Eq. 3)
    reverse SDE            dx = -2 sigma s(x; sigma) dsigma + sqrt(2 sigma) dw,  s = (D - x) / sigma^2

The VP/DDPM view (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps) is the same process with sigma = sqrt((1 - abar)/abar)
and x scaled by sqrt(abar), so DDPM and DDIM run here on sigmas too; `linear_beta_sigmas` gives the discrete
schedule of Ho et al. 2020 to run them on their own time steps.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import renoise_of, reset
from ..infra.validation import as_cond, check_batch, check_nonnegative, check_positive_int

__all__ = ["edm_sigmas", "vp_sigmas", "linear_beta_sigmas", "SCHEDULES", "METHODS", "RENOISE_METHODS", "sample"]


def _check_range(sigma_min, sigma_max, *, min_zero_ok: bool = False, max_inf_ok: bool = False) -> tuple[float, float]:
    """0 < sigma_min < sigma_max (or the limits the schedule allows), both real numbers."""
    lo = check_nonnegative(sigma_min, "sigma_min")
    hi = check_nonnegative(sigma_max, "sigma_max", allow_inf=max_inf_ok)
    if lo == 0 and not min_zero_ok:
        raise ValueError("sigma_min must be > 0 (the sampler appends the final sigma = 0 itself)")
    if not lo < hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={lo:g}, sigma_max={hi:g}")
    return lo, hi


def _finish(sigmas: Tensor, what: str) -> Tensor:
    """Append the final 0 after checking the schedule is finite and strictly decreasing (no repeated sigma)."""
    if not torch.isfinite(sigmas).all() or (sigmas <= 0).any() or (sigmas.diff() >= 0).any():
        raise ValueError(f"{what} is not a finite, strictly decreasing positive schedule with these arguments "
                         f"(too many steps for the range, or a parameter out of range): {sigmas.tolist()[:6]}...")
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM schedule (Karras et al. 2022, Eq. 5) with a final 0: [steps + 1] float64.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  sigma_N = 0.
    Needs 0 < sigma_min < sigma_max and a finite rho > 0 (EDM uses 7; rho -> 0 tends to the log-uniform spacing).
    """
    steps = check_positive_int(steps, "steps")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = check_nonnegative(rho, "rho")
    if rho == 0:
        raise ValueError("rho must be > 0 (EDM uses 7), got 0")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, "edm_sigmas")


def vp_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, beta_d: float = 19.9,
              beta_min: float = 0.1) -> Tensor:
    """The continuous VP schedule of Song et al. 2021 as in EDM Table 1: sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1),
    t uniform between the times of sigma_max and sigma_min: [steps + 1] float64 with a final 0.
    Needs 0 < sigma_min < sigma_max, beta_d > 0 and beta_min >= 0."""
    steps = check_positive_int(steps, "steps")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    beta_d, beta_min = check_nonnegative(beta_d, "beta_d"), check_nonnegative(beta_min, "beta_min")
    if beta_d == 0:
        raise ValueError("beta_d must be > 0 (EDM Table 1 uses 19.9), got 0")

    def t_of(sigma: float) -> float:  # inverse of sigma(t): solve beta_d t^2 / 2 + beta_min t = log(1 + sigma^2)
        c = math.log1p(sigma ** 2)
        return (math.sqrt(beta_min ** 2 + 2 * beta_d * c) - beta_min) / beta_d

    t = torch.linspace(t_of(sigma_max), t_of(sigma_min), steps, dtype=torch.float64)
    return _finish(torch.expm1(0.5 * beta_d * t ** 2 + beta_min * t).sqrt(), "vp_sigmas")


def linear_beta_sigmas(steps: int, sigma_min: float = 0.0, sigma_max: float = math.inf, num_train_steps: int = 1000,
                       beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The discrete linear-beta schedule of Ho et al. 2020, `steps` time steps evenly spaced over the
    `num_train_steps` training steps, t = round(linspace(T - 1, 0, steps)), as sigmas with a final 0.

    This is diffusers' `timestep_spacing="linspace"` (10 of 1000 steps: t = 999, 888, ..., 0), not the DDIM paper's
    uniform skip / diffusers' DDIMScheduler default "leading" (t = 900, 800, ..., 0); see docs/CONVENTIONS.md.

    abar_t = prod_{i<=t} (1 - beta_i),  sigma_t = sqrt((1 - abar_t) / abar_t). Steps outside
    [sigma_min, sigma_max] are dropped (by default none are). `steps` <= `num_train_steps` (there are no
    more distinct time steps); betas in (0, 1).
    """
    steps = check_positive_int(steps, "steps")
    num_train_steps = check_positive_int(num_train_steps, "num_train_steps")
    if steps > num_train_steps:
        raise ValueError(f"steps must lie in [1, num_train_steps = {num_train_steps}] (a DDPM has no more distinct "
                         f"time steps), got {steps}")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max, min_zero_ok=True, max_inf_ok=True)
    for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < check_nonnegative(beta, name) < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {beta}")
    betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    all_sigmas = ((1 - abar) / abar).sqrt()
    idx = torch.linspace(num_train_steps - 1, 0, steps, dtype=torch.float64).round().long()
    sigmas = all_sigmas[idx]
    sigmas = sigmas[(sigmas >= sigma_min) & (sigmas <= sigma_max)]
    if sigmas.numel() == 0:
        raise ValueError("no DDPM time step lies within [sigma_min, sigma_max]")
    return _finish(sigmas, "linear_beta_sigmas")


SCHEDULES: dict[str, Callable[..., Tensor]] = {"edm": edm_sigmas, "vp": vp_sigmas, "linear_beta": linear_beta_sigmas}


# ---------------------------------------------------------------------------------------------------------
# One step of each method: (denoiser, x, sigma, sigma_next, cond, noise) -> x_next. `noise()` draws N(0, I).
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


def _heun_step(D, x, s, s_next, cond, noise):
    """EDM Algorithm 1: Euler step, then the trapezoidal correction (skipped on the last step to 0)."""
    d = (x - D(x, s, cond)) / s                                   # dx/dsigma at sigma
    x_next = x + (s_next - s) * d
    if s_next > 0:
        d_next = (x_next - D(x_next, s_next, cond)) / s_next
        x_next = x + (s_next - s) * 0.5 * (d + d_next)
    return x_next


def _euler_step(D, x, s, s_next, cond, noise):
    """Euler on the probability-flow ODE: x' = x + (sigma' - sigma)(x - D)/sigma = D + sigma' (x - D)/sigma;
    with CFG++ x' = D_guided + sigma' (x - D_renoise)/sigma."""
    d, d_renoise = _denoise(D, x, s, cond)
    if d_renoise is d:
        return x + (s_next - s) * (x - d) / s
    return d + s_next * (x - d_renoise) / s


def _euler_maruyama_step(D, x, s, s_next, cond, noise):
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, Eq. 6 with sigma(t) = t; EDM Eq. 6 with beta = 1/sigma):
    x' = x + 2 (sigma - sigma')/sigma (D - x) + sqrt(2 sigma (sigma - sigma')) n.  The last step to 0 is the ODE's."""
    denoised = D(x, s, cond)
    if s_next == 0:
        return denoised
    return x + 2 * (s - s_next) / s * (denoised - x) + math.sqrt(2 * s * (s - s_next)) * noise()


def _ddim_update(x, denoised, s, s_next, eta, noise, renoise=None):
    """DDIM (Song et al. 2021, Eq. 12) in sigma space: keep the predicted noise eps = (x - D)/sigma for a part
    sigma_down of the next level and draw fresh noise for sigma_up, sigma_down^2 + sigma_up^2 = sigma'^2, with
    sigma_up = eta sigma' sqrt(1 - sigma'^2/sigma^2)  (eta = 1: DDPM ancestral sampling, Ho et al. 2020, Eq. 11).
    `renoise`: the prediction whose eps re-noises (CFG++), default `denoised`."""
    if s_next == 0:
        return denoised
    s_up = eta * s_next * math.sqrt(max(0.0, 1 - (s_next / s) ** 2))
    s_down = math.sqrt(s_next ** 2 - s_up ** 2)
    x_next = denoised + s_down * (x - (denoised if renoise is None else renoise)) / s
    return x_next + s_up * noise() if s_up > 0 else x_next


def _ddim_step(D, x, s, s_next, cond, noise, eta=0.0):
    d, d_renoise = _denoise(D, x, s, cond)
    return _ddim_update(x, d, s, s_next, eta, noise, d_renoise)


METHODS: dict[str, Callable] = {
    "heun": _heun_step,
    "euler": _euler_step,
    "euler_maruyama": _euler_maruyama_step,
    "ddpm": partial(_ddim_step, eta=1.0),
    "ddim": _ddim_step,
}


@torch.no_grad()
def sample(denoiser: Callable, shape_or_noise: tuple[int, ...] | Tensor, cond=None, *, method: str = "heun",
           steps: int = 32, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
           schedule: str = "edm", sigmas: Tensor | None = None, eta: float | None = None,
           generator: torch.Generator | None = None, callback: Callable[[dict], None] | None = None,
           return_trajectory: bool = False, progress: bool = False, dtype: torch.dtype = torch.float32,
           device: torch.device | str | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Draw samples by integrating from sigma_max to 0 with any denoiser D(x, sigma, cond) (guided or not).

    Args:
        denoiser: D(x, sigma, cond) -> x0_hat, e.g. a mixture, a network or `guidance.guided(...)`.
        shape_or_noise: a shape such as (n, 2): the start is sigmas[0] * N(0, I) drawn from `generator`;
            or a tensor, taken as the start x at sigmas[0] as it is.
        cond: int64 labels [N] (-1 = null), an int for the whole batch, or None.
        method: the sampler: "heun" (EDM Alg. 1, 2 evaluations a step but the last), "euler",
            "euler_maruyama" (reverse SDE), "ddpm" (ancestral), "ddim" (with `eta`, 0 = deterministic).
        steps: number of noise levels before the final 0 (= denoiser evaluations, but for heun).
        sigma_min, sigma_max, rho: the schedule's range (and EDM's rho).
        schedule: "edm" (Karras et al. Eq. 5), "vp" (Song et al.) or "linear_beta" (Ho et al.'s discrete steps,
            clipped to [sigma_min, sigma_max]).
        sigmas: an explicit strictly decreasing tensor of sigmas ending in 0 (k-diffusion's habit); replaces
            `schedule`, `steps`, `sigma_min`, `sigma_max` and `rho`, which must then be left at their defaults.
        eta: DDIM stochasticity in [0, 1] (method "ddim" only; default 0); other methods refuse it.
        generator: torch.Generator for the start noise and every stochastic step: same seed, same samples.
        callback: called after every step with {"i", "x", "sigma", "sigma_next"} (k-diffusion's habit).
        return_trajectory: also return x at every level, [steps + 1, *shape] (x at sigma_i, the last at 0).
        progress: show a tqdm bar over the steps.
    The denoiser's optional `reset(sigmas)` is called before the first step with the run's levels (float64, ending
    in 0): it clears APG's momentum and gives CFG-Zero* and LinearCFG the schedule they depend on; one that offers
    `denoise_with_renoise` (CFG++) runs only with the methods in RENOISE_METHODS.
    Returns:
        samples [*shape], and the trajectory when asked.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x, sigma, cond), got {type(denoiser).__name__}")
    if eta is not None and method != "ddim":
        raise ValueError(f"eta is a parameter of method 'ddim' only (ddpm is eta = 1), got eta={eta!r} "
                         f"with method {method!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable with a dict, got {type(callback).__name__}")
    levels = _levels(sigmas, schedule, steps, sigma_min, sigma_max, rho)
    eta = check_nonnegative(0.0 if eta is None else eta, "eta")
    if isinstance(shape_or_noise, Tensor):
        x = check_batch(shape_or_noise, "shape_or_noise").clone()
    elif isinstance(shape_or_noise, (tuple, list, torch.Size)) and len(shape_or_noise) >= 1 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape_or_noise):
        dev = device if device is not None else (generator.device if generator is not None else "cpu")
        x = torch.randn(tuple(shape_or_noise), generator=generator, dtype=dtype, device=dev) * levels[0]
    else:
        raise ValueError(f"shape_or_noise must be a shape tuple of positive ints or a tensor, got {shape_or_noise!r}")
    cond = as_cond(cond, x.shape[0], None, device=x.device)
    if renoise_of(denoiser) is not None and method not in RENOISE_METHODS:
        raise ValueError(f"method {method!r} cannot run {denoiser!r}: CFG++ re-noises with the unguided branch, "
                         f"which only methods {list(RENOISE_METHODS)} support")
    reset(denoiser, torch.tensor(levels, dtype=torch.float64))

    def noise() -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    step = partial(_ddim_step, eta=eta) if method == "ddim" else METHODS[method]
    trajectory = [x] if return_trajectory else None
    for i in tqdm(range(len(levels) - 1), desc=f"sampling ({method})", disable=not progress, leave=False):
        s, s_next = levels[i], levels[i + 1]
        x = step(denoiser, x, s, s_next, cond, noise)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"sampling diverged (non-finite values) at sigma={s_next:g} (step {i + 1})")
        if trajectory is not None:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next})
    return (x, torch.stack(trajectory)) if return_trajectory else x


def _levels(sigmas: Tensor | None, schedule: str, steps: int, sigma_min: float, sigma_max: float,
            rho: float) -> list[float]:
    """The decreasing sigmas (last = 0) to integrate along, validated, as floats."""
    if sigmas is None:
        return _schedule(schedule, steps, sigma_min, sigma_max, rho).tolist()
    changed = [k for k, v, d in (("schedule", schedule, "edm"), ("steps", steps, 32), ("sigma_min", sigma_min, 0.002),
                                 ("sigma_max", sigma_max, 80.0), ("rho", rho, 7.0)) if v != d]
    if changed:
        raise ValueError(f"sigmas= gives the whole schedule; do not also pass {', '.join(changed)}")
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"sigmas must be a tensor, got {type(sigmas).__name__}")
    s = sigmas.detach().to(torch.float64, copy=True).reshape(-1).cpu()
    if s.numel() < 2 or s[-1] != 0 or not (s[:-1] > 0).all() or not (s.diff() < 0).all() or not s.isfinite().all():
        raise ValueError("sigmas must be a strictly decreasing tensor of finite positive sigmas ending in 0")
    return s.tolist()


def _schedule(schedule: str, steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The named schedule's decreasing sigmas [M + 1] (last = 0), validated."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)} (or pass sigmas=)")
    if schedule == "edm":                                   # each schedule validates its own arguments
        return edm_sigmas(steps, sigma_min, sigma_max, rho)
    return SCHEDULES[schedule](steps, sigma_min, sigma_max)
