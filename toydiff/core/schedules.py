"""Noise schedules: the decreasing levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0 a sampler integrates along,
float64 tensors [steps + 1] (EDM formulation x = x0 + sigma n, Karras et al. 2022, Sec. 3-4).

    edm          Karras et al. 2022, Eq. 5 (rho = 7)
    vp           the continuous VP schedule of Song et al. 2021 (EDM Table 1)
    linear_beta  the discrete time steps of Ho et al. 2020 (DDPM), diffusers' "linspace" spacing
    flow         rectified flow / flow matching with SD3's shifted timesteps (Esser et al. 2024)

Every schedule takes `steps` first, then keyword arguments with its own defaults; `SCHEDULES` maps the names
`samplers.sample(schedule=...)` accepts to them, and an argument a schedule does not take is refused there.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..infra.validation import check_nonnegative, check_positive_int
from .flow import sigma_to_t, t_to_sigma

__all__ = ["edm_sigmas", "vp_sigmas", "linear_beta_sigmas", "flow_sigmas", "SCHEDULES"]


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
    Needs 0 < sigma_min < sigma_max and a finite rho > 0 (EDM uses 7; rho -> inf tends to the log-uniform spacing,
    a small rho keeps the levels near sigma_max until the last: rho = 1e-3 gives 80, 79.99, ..., 79.84, 0.002).
    """
    steps = check_positive_int(steps, "steps")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    rho = check_nonnegative(rho, "rho")
    if rho == 0:
        raise ValueError("rho must be > 0 (EDM uses 7), got 0")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    try:
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    except OverflowError:                                  # sigma^(1/rho) beyond float64: rho < ~0.1 at sigma_max 80
        lo = hi = 0.0
    if lo > 0 and math.isfinite(hi):
        return _finish((hi + ramp * (lo - hi)) ** rho, "edm_sigmas")
    # the same formula divided through by sigma_max^(1/rho): sigma_max (1 + i/(N-1) (r - 1))^rho,
    # r = (sigma_min / sigma_max)^(1/rho) (underflows to 0 harmlessly; the last level is set to sigma_min exactly)
    r = (sigma_min / sigma_max) ** (1 / rho)
    sigmas = sigma_max * (1 + ramp * (r - 1)) ** rho
    sigmas[-1] = sigma_min
    return _finish(sigmas, "edm_sigmas")


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


def flow_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, shift: float = 1.0) -> Tensor:
    """Rectified-flow time steps with SD3's shift (Esser et al. 2024, "Scaling Rectified Flow Transformers",
    arXiv 2403.03206, Sec. 5.3.2), as sigmas with a final 0: [steps + 1] float64.

    Flow matching writes x_t = (1 - t) x0 + t eps, t in [0, 1]; dividing by 1 - t gives the EDM form
    x = x_t / (1 - t) = x0 + sigma eps with sigma = t / (1 - t). The time steps are uniform in t between
    t_max = sigma_max / (1 + sigma_max) and t_min = sigma_min / (1 + sigma_min), then shifted:

        t' = s t / (1 + (s - 1) t),    sigma' = t' / (1 - t') = s t / (1 - t) = s sigma,

    so SD3's shift s (3.0 for SD3 at 1024^2; > 1 spends more steps at high noise) multiplies every level by s, the
    ends included. Euler in sigma on these levels IS Euler in t on the flow ODE dx_t/dt = v (`samplers.sample(...,
    method="euler", schedule="flow")`). SD3 starts at t = 1 (sigma = inf), where x = x_t / (1 - t) is infinite: in
    the denoiser form the start must be finite, t_max < 1 (the default 80/81 = 0.988; the start bias is that of
    EDM's sigma_max = 80). Needs 0 < sigma_min < sigma_max < inf and shift > 0.
    """
    steps = check_positive_int(steps, "steps")
    if sigma_max == math.inf:
        raise ValueError("sigma_max = inf is t = 1, where x = x_t / (1 - t) is infinite: a sampler in the denoiser "
                         "form starts at a finite sigma_max (t_max = sigma_max / (1 + sigma_max) < 1)")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    shift = check_nonnegative(shift, "shift")
    if shift == 0:
        raise ValueError("shift must be > 0 (SD3 uses 3; 1 = no shift), got 0")
    t = torch.linspace(sigma_to_t(sigma_max), sigma_to_t(sigma_min), steps, dtype=torch.float64)
    t_shifted = shift * t / (1 + (shift - 1) * t)
    return _finish(t_to_sigma(t_shifted), "flow_sigmas")


SCHEDULES: dict[str, Callable[..., Tensor]] = {"edm": edm_sigmas, "vp": vp_sigmas, "linear_beta": linear_beta_sigmas,
                                               "flow": flow_sigmas}
