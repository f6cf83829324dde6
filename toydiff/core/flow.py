"""Flow matching (rectified flow) in the denoiser contract: the maps between a velocity model and a denoiser.

Rectified flow (Liu et al. 2022, arXiv 2209.03003; Lipman et al. 2023, arXiv 2210.02747; the SD3 / Flux convention,
Esser et al. 2024, arXiv 2403.03206) interpolates data y and noise n ~ N(0, I) on a straight line,

    x_t = (1 - t) y + t n,   t in [0, 1),        and the model predicts the velocity  v(x_t, t, c) ~= E[n - y | x_t].

Dividing by (1 - t) gives the EDM / VE view x = y + sigma n (Karras et al. 2022), so for every t < 1

    sigma = t / (1 - t),   x = x_t / (1 - t)            (and back: t = sigma / (1 + sigma), x_t = x / (1 + sigma))
    D(x, sigma, c) = E[y | x] = x_t - t v               (x_t = (1 - t) y + t n and v = n - y give y = x_t - t v)
    v(x_t, t, c)  = (x_t - D) / t = (x - D) / sigma - D

Both maps are affine in the prediction for fixed (x, sigma), which is why CFG on v equals CFG on D for the same w
(docs/DESIGN.md). `VelocityDenoiser` turns a velocity model into a denoiser (then every sampler, guidance method and
metric of toydiff runs on it); `denoiser_to_velocity` is its exact inverse (the mixtures' exact velocity, or a
velocity view of any denoiser). A velocity model given t outside [0, 1) is refused, naming `t`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .denoiser import Denoiser, start_run
from ..infra.validation import as_sigma, check_batch, sigma_like

__all__ = ["VelocityModel", "as_time", "t_to_sigma", "sigma_to_t", "velocity_from_denoised", "denoised_from_velocity",
           "VelocityDenoiser", "denoiser_to_velocity", "flow_matching_loss"]

VelocityModel = Callable[[Tensor, Any, Any], Tensor]      # v(x_t [N, ...], t [N] in [0, 1), cond) -> [N, ...]


def as_time(t: Any, n: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float64,
            name: str = "t") -> Tensor:
    """Flow times as a tensor [n] in [0, 1): a float, a 0-d tensor or a tensor [n] (or [n, 1, ..., 1]); the checks of
    `as_sigma` (finite, >= 0, the shapes) and t < 1 (t = 1 is pure noise, sigma = inf)."""
    s = as_sigma(t, n, device=device, dtype=dtype, name=name)
    if (s >= 1).any():
        raise ValueError(f"{name} must lie in [0, 1) (t = 1 is pure noise, sigma = inf), got {s.max().item()!r}")
    return s


def t_to_sigma(t: Tensor) -> Tensor:
    """sigma = t / (1 - t): the EDM noise level of flow time t in [0, 1)."""
    return t / (1 - t)


def sigma_to_t(sigma: Tensor) -> Tensor:
    """t = sigma / (1 + sigma): the flow time of noise level sigma >= 0 (the inverse of t_to_sigma)."""
    return sigma / (1 + sigma)


def velocity_from_denoised(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """v = (x - D) / sigma - D from the VE state x [N, ...], sigma [N] > 0 and D [N, ...]."""
    s = sigma_like(sigma, x)
    return (x - denoised) / s - denoised


def denoised_from_velocity(x: Tensor, sigma: Tensor, velocity: Tensor) -> Tensor:
    """D = x_t - t v = (x - sigma v) / (1 + sigma) from the VE state x [N, ...], sigma [N] >= 0 and v [N, ...]."""
    s = sigma_like(sigma, x)
    return (x - s * velocity) / (1 + s)


class VelocityDenoiser(nn.Module):
    """A velocity model v(x_t, t, c) as a denoiser D(x, sigma, c) = x_t - t v(x_t, t, c), with t = sigma / (1 + sigma)
    and x_t = x / (1 + sigma) (the module docstring). sigma = 0 gives t = 0 and D = x exactly. The velocity model is
    called once per call, with t [N] in x's dtype. `start_run(sigmas)` (the contract's start of a sampling run)
    starts the velocity model with the run's levels as times, t = sigma / (1 + sigma): a velocity model guided directly
    (`guidance.guided(v, method)`, whose "sigma" is then t) holds its per-run state right. `velocity` is the wrapped
    model (`nn.Module` ones are registered, so `.eval()`, `.to()` and `.parameters()` reach them)."""

    def __init__(self, velocity: VelocityModel) -> None:
        super().__init__()
        if not callable(velocity):
            raise TypeError(f"velocity must be a velocity model v(x_t, t, cond), got {type(velocity).__name__}")
        self.velocity = velocity

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        x = check_batch(x, "x")
        s = as_sigma(sigma, x.shape[0], device=x.device, dtype=x.dtype)
        t = sigma_to_t(s)
        return denoised_from_velocity(x, s, self.velocity(x / (1 + sigma_like(s, x)), t, cond).to(x.dtype))

    def start_run(self, sigmas: Tensor | None) -> VelocityDenoiser:
        """This denoiser for one sampling run (the contract's `start_run`): the velocity model started with the run's
        levels as times, t = sigma / (1 + sigma), so a guidance applied to v directly holds its run state right."""
        times = None if sigmas is None else sigma_to_t(torch.as_tensor(sigmas, dtype=torch.float64))
        return VelocityDenoiser(start_run(self.velocity, times))


def denoiser_to_velocity(denoiser: Denoiser) -> VelocityModel:
    """Inverse of VelocityDenoiser: v(x_t, t, c) = (x_t - D(x_t / (1 - t), t / (1 - t), c)) / t for t in (0, 1).
    At t = 0 the velocity is the limit E[n | y] - y = -x_t (n is independent of y), returned without calling D."""
    def velocity(x_t: Tensor, t: Any, cond: Any = None) -> Tensor:
        x_t = check_batch(x_t, "x_t")
        tt = as_time(t, x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
        x = x_t / (1 - sigma_like(tt, x_t))
        d = denoiser(x, t_to_sigma(tt), cond).to(x_t.dtype)
        return torch.where(sigma_like(tt, x_t) > 0, (x_t - d) / sigma_like(tt, x_t).clamp_min(torch.finfo(x_t.dtype).tiny), -x_t)
    return velocity


def flow_matching_loss(velocity: Tensor, y: Tensor, noise: Tensor, t: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-sample conditional flow-matching loss [N] (Lipman et al. 2023, Eq. 23 with the rectified-flow path):
    |v(x_t, t, c) - (n - y)|^2 for x_t = (1 - t) y + t n, the square summed over every non-batch dim.

    `target` (optional, [N, ...]): a lower-variance estimate of y given x_t with the same minimizer (the mixture's
    exact E[y | x_t] or the posterior mean within y's own component, toydiff.training's "exact" / "component"); the
    target velocity is then (x_t - target) / t = (n - y) + (y - target) / t, which is n - y at t = 0.
    In denoiser terms the loss is |D - target|^2 / t^2 with D = x_t - t v: EDM's loss (Karras et al. 2022, Eq. 2)
    with the weight 1 / t^2 = ((1 + sigma) / sigma)^2 in place of (sigma^2 + sd^2) / (sigma sd)^2."""
    goal = noise - y
    if target is not None:
        tt = sigma_like(t, y)
        goal = goal + torch.where(tt > 0, (y - target) / tt.clamp_min(torch.finfo(y.dtype).tiny), 0.0)
    return (velocity.to(goal.dtype) - goal).square().flatten(1).sum(1)
