"""Samplers for any denoiser D(x, sigma, cond), in the EDM formulation x = x0 + sigma n.

All samplers integrate from sigma_max down to 0 along a decreasing schedule sigma_0 > ... > sigma_{N-1} > sigma_N = 0
(`schedules`; Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"):

    probability-flow ODE   dx/dsigma = (x - D(x; sigma)) / sigma                              (EDM Eq. 3)
    reverse SDE            dx = -2 sigma s(x; sigma) dsigma + sqrt(2 sigma) dw,  s = (D - x) / sigma^2

The VP/DDPM view (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps) is the same process with sigma = sqrt((1 - abar)/abar)
and x scaled by sqrt(abar), and the flow-matching view (x_t = (1 - t) x0 + t eps) with sigma = t / (1 - t) and
x = x_t / (1 - t), so DDPM, DDIM and the flow models' Euler run here on sigmas too.

Each method owns its loop (`solvers`, k-diffusion's habit) and keeps its history in its own locals;
`sample()` draws the start, starts the run, drives the method's steps and hands every step to the callback.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import renoise_of, start_run
from .schedules import SCHEDULES, edm_sigmas, flow_sigmas, linear_beta_sigmas, vp_sigmas
from .solvers import METHODS, RENOISE_METHODS
from ..infra.validation import as_cond, check_batch, check_device

__all__ = ["edm_sigmas", "vp_sigmas", "linear_beta_sigmas", "flow_sigmas", "SCHEDULES", "METHODS", "RENOISE_METHODS",
           "DEFAULT_STEPS", "DEFAULT_SCHEDULE", "sample"]

DEFAULT_STEPS, DEFAULT_SCHEDULE = 32, "edm"


def _method_options(method: str) -> tuple[str, ...]:
    """The keyword-only options method `method` takes (ddim's eta, heun's s_churn, ...)."""
    params = inspect.signature(METHODS[method]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def _schedule_options(schedule: str) -> tuple[str, ...]:
    """The arguments schedule `schedule` takes after `steps` (sigma_min, sigma_max, rho, shift, ...)."""
    return tuple(inspect.signature(SCHEDULES[schedule]).parameters)[1:]


@torch.no_grad()
def sample(
    denoiser: Callable,
    shape_or_noise: tuple[int, ...] | Tensor,
    cond=None,
    *,
    method: str = "heun",
    # the schedule: by name and its arguments (None: the schedule's own default), or whole as sigmas=
    steps: int | None = None,
    schedule: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    shift: float | None = None,
    sigmas: Tensor | None = None,
    # the method's options (None: the method's own default; refused by the methods that do not take them)
    eta: float | None = None,
    s_churn: float | None = None,
    s_tmin: float | None = None,
    s_tmax: float | None = None,
    s_noise: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Draw samples by integrating from sigmas[0] to 0 with any denoiser D(x, sigma, cond) (guided or not).

    Args:
        denoiser: D(x, sigma, cond) -> x0_hat, e.g. a mixture, a network or `guidance.guided(...)`.
        shape_or_noise: a shape such as (n, 2): the start is sigmas[0] * N(0, I) drawn from `generator`;
            or a tensor, taken as the start x at sigmas[0] as it is.
        cond: int64 labels [N] (-1 = null), an int for the whole batch, or None.
        method: a key of METHODS: "heun" (EDM Alg. 1, 2 evaluations a step but the last; Alg. 2 with `s_churn`),
            "euler", "euler_maruyama" (reverse SDE), "ddpm" (ancestral), "ddim" (with `eta`, 0 = deterministic),
            "dpmpp_2m" (DPM-Solver++(2M), >= 2 steps).
        steps: number of noise levels before the final 0 (= denoiser evaluations, but for heun); DEFAULT_STEPS.
        schedule: a key of SCHEDULES (default DEFAULT_SCHEDULE, "edm"): "edm" (Karras et al. Eq. 5), "vp"
            (Song et al.), "linear_beta" (Ho et al.'s discrete steps) or "flow" (rectified flow, SD3's `shift`).
        sigma_min, sigma_max, rho, shift: the schedule's arguments; left at None, the schedule's own defaults
            (edm and vp: 0.002 to 80; linear_beta: all its time steps; rho 7 for edm only, shift 1 for flow only).
            One the schedule does not take is refused (rho with "vp", shift with "edm", ...).
        sigmas: an explicit strictly decreasing tensor of sigmas ending in 0 (k-diffusion's habit); replaces
            `schedule`, `steps` and the schedule's arguments, which must then be left out.
        eta: DDIM stochasticity >= 0 (method "ddim" only; default 0).
        s_churn, s_tmin, s_tmax, s_noise: EDM Alg. 2's churn (method "heun" only; see `heun`).
        generator: torch.Generator for the start noise and every stochastic step: same seed, same samples.
        callback: called after every step with {"i", "x" (at sigma_next), "sigma", "sigma_next", "sigma_hat" (the
            level the denoiser was evaluated at: sigma, or the churned one), "denoised" (the x0-hat it returned)}.
        return_trajectory: also return x at every level, [steps + 1, *shape] (x at sigma_i, the last at 0).
        progress: show a tqdm bar over the steps.
    The run uses `start_run(denoiser, levels)` (toydiff.denoiser; levels float64, ending in 0): a guided denoiser
    returns a per-run copy with its own state (APG's momentum, the schedule of CFG-Zero* and LinearCFG); one that offers
    `denoise_with_renoise` (CFG++) runs only with the methods in RENOISE_METHODS.
    Returns:
        samples [*shape], and the trajectory when asked.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x, sigma, cond), got {type(denoiser).__name__}")
    options = {k: v for k, v in (("eta", eta), ("s_churn", s_churn), ("s_tmin", s_tmin), ("s_tmax", s_tmax),
                                 ("s_noise", s_noise)) if v is not None}
    for name in options:
        if name not in _method_options(method):
            owners = [m for m in METHODS if name in _method_options(m)]
            raise ValueError(f"{name} is a parameter of method {' or '.join(map(repr, owners))} only, got "
                             f"{name}={options[name]!r} with method {method!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable with a dict, got {type(callback).__name__}")
    levels = _levels(sigmas, schedule, steps, dict(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, shift=shift))
    if isinstance(shape_or_noise, Tensor):
        x = check_batch(shape_or_noise, "shape_or_noise").clone()
    elif isinstance(shape_or_noise, (tuple, list, torch.Size)) and len(shape_or_noise) >= 1 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape_or_noise):
        dev = check_device(device) if device is not None else (generator.device if generator is not None else "cpu")
        x = torch.randn(tuple(shape_or_noise), generator=generator, dtype=dtype, device=dev) * levels[0]
    else:
        raise ValueError(f"shape_or_noise must be a shape tuple of positive ints or a tensor, got {shape_or_noise!r}")
    cond = as_cond(cond, x.shape[0], None, device=x.device)
    if renoise_of(denoiser) is not None and method not in RENOISE_METHODS:
        raise ValueError(f"method {method!r} cannot run {denoiser!r}: CFG++ re-noises with the unguided branch, "
                         f"which only methods {list(RENOISE_METHODS)} support")

    def noise() -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    denoiser = start_run(denoiser, torch.tensor(levels, dtype=torch.float64))     # this run's state, if any
    run = METHODS[method](denoiser, x, levels, cond, noise, **options)       # checks its options' values
    trajectory = [x] if return_trajectory else None
    bar = tqdm(run, total=len(levels) - 1, desc=f"sampling ({method})", disable=not progress, leave=False)
    for i, (x, denoised, s_hat) in enumerate(bar):
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"sampling diverged (non-finite values) at sigma={levels[i + 1]:g} "
                                     f"(step {i + 1})")
        if trajectory is not None:
            trajectory.append(x)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": levels[i], "sigma_next": levels[i + 1], "sigma_hat": s_hat,
                      "denoised": denoised})
    return (x, torch.stack(trajectory)) if return_trajectory else x


def _levels(sigmas: Tensor | None, schedule: str | None, steps: int | None, arguments: dict) -> list[float]:
    """The decreasing sigmas (last = 0) to integrate along, validated, as floats. `arguments`: the schedule's
    arguments as passed to sample(), None where left out."""
    given = {k: v for k, v in arguments.items() if v is not None}
    if sigmas is not None:
        changed = [k for k, v in (("schedule", schedule), ("steps", steps)) if v is not None] + list(given)
        if changed:
            raise ValueError(f"sigmas= gives the whole schedule; do not also pass {', '.join(changed)}")
        if not isinstance(sigmas, Tensor):
            raise TypeError(f"sigmas must be a tensor, got {type(sigmas).__name__}")
        s = sigmas.detach().to(torch.float64, copy=True).reshape(-1).cpu()
        if s.numel() < 2 or s[-1] != 0 or not (s[:-1] > 0).all() or not (s.diff() < 0).all() or not s.isfinite().all():
            raise ValueError("sigmas must be a strictly decreasing tensor of finite positive sigmas ending in 0")
        return s.tolist()
    schedule = DEFAULT_SCHEDULE if schedule is None else schedule
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)} (or pass sigmas=)")
    for name in given:
        if name not in _schedule_options(schedule):
            raise ValueError(f"{name} is not an argument of schedule {schedule!r} (it takes "
                             f"{', '.join(_schedule_options(schedule))}); it would be ignored")
    return SCHEDULES[schedule](DEFAULT_STEPS if steps is None else steps, **given).tolist()
