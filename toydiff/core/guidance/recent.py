"""Guidance methods published since 2024 that fit 2D data, on the same machinery as the rest of toydiff.guidance.

- `CFGZeroStar`: CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching
  Models", arXiv 2503.18886): optimized scale + zero-init, in the rectified-flow velocity space it is defined in.
- `LinearCFG`: CFG with the linearly increasing weight schedule of Wang et al. 2024 ("Analysis of Classifier-Free
  Guidance Weight Schedulers", TMLR, arXiv 2404.13040), its recommended parameter-free heuristic.

Both take the branches of `on` (CFG with the null label by default; AutoGuidance or a separate unconditional model
work alike), so the D_1 / D_0 pair is whatever the base method supplies. Weights follow toydiff.guidance: w = 1 is
no guidance; Ho & Salimans' weight is w - 1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...infra.validation import check_positive_int, sigma_like
from ..flow import denoised_from_velocity, velocity_from_denoised
from .base import Guidance, Weight
from .modifiers import _check_base, _OnBase

__all__ = ["CFGZeroStar", "LinearCFG", "optimized_scale"]


def optimized_scale(p1: Tensor, p0: Tensor) -> Tensor:
    """CFG-Zero*'s s* = <p_1, p_0> / |p_0|^2 per sample [N, 1, ...] (over all non-batch dims; Fan et al. 2025, Sec.
    4.1): the scale that brings s* p_0 closest to p_1. The paper takes it on velocities; on another parametrization
    (denoised points, noise) the same formula gives another scale."""
    dims = tuple(range(1, p1.ndim))
    return (p1 * p0).sum(dims, keepdim=True) / p0.square().sum(dims, keepdim=True).clamp_min(1e-30)


def _positive_levels(sigmas: Tensor | None, owner: str) -> Tensor | None:
    """The run's noise levels sigma_0 > ... > sigma_{N-1} > 0 [N] (float64) from a sampler's `sigmas` (ending in 0),
    or None where the run's schedule is not known."""
    if sigmas is None:
        return None
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).cpu()
    s = s[s > 0]
    if s.numel() == 0 or not (s.diff() < 0).all() or not s.isfinite().all():
        raise ValueError(f"{owner}.start_run(sigmas): sigmas must be the sampler's decreasing finite levels, "
                         f"got {sigmas!r}")
    return s


def _unknown(owner: str, what: str) -> ValueError:
    return ValueError(f"{owner} needs the sampler's levels for {what}: sample with toydiff.samplers.sample (it calls "
                      f"start_run(sigmas) first), or call toydiff.denoiser.start_run(denoiser, sigmas) with your own "
                      f"loop's levels and use what it returns for the run")


class CFGZeroStar(_OnBase):
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886, Sec. 4, "optimized scale" and "zero-init").

    The paper guides a flow-matching velocity. In the EDM view x = x0 + sigma n, the rectified-flow state is
    z = x / (1 + sigma) at time t = sigma / (1 + sigma) and its velocity is v = n - x0, so a denoiser D gives the
    exact velocity prediction v = (x - D) / sigma - D, and back D = (x - sigma v) / (1 + sigma) (toydiff.core.flow's
    maps; a velocity model is guided through `toydiff.core.flow.VelocityDenoiser`). Then

        s*  = <v_1, v_0> / |v_0|^2                       (per sample, over all non-batch dims; paper Eq. for s*)
        v_w = s* v_0 + w (v_1 - s* v_0)                  (the paper's (1 - w) s* v_u + w v_c)
        D_w = (x - sigma v_w) / (1 + sigma)

    s* = 1 is CFG exactly. Zero-init: the velocity is 0 at the first `zero_init` = K noise levels of the run
    (the paper zeroes its first K solver steps, K = 1 in its code): D = x / (1 + sigma), which leaves z unchanged,
    wherever sigma > sigma_K of the sampler's levels, which `start_run(sigmas)` gives (toydiff's samplers call it).
    With Euler the first K steps keep z; with Heun the K-th step's corrector, at sigma_K, is already guided.
    `zero_init=0` turns it off (and then no schedule is needed).
    """

    def __init__(self, w: Weight = 1.0, *, on: Guidance | None = None, zero_init: int = 1, **kwargs):
        super().__init__(w, **kwargs)
        if self.rescale:
            raise ValueError("CFGZeroStar does not take rescale: its optimized scale replaces it")
        self.on = _check_base(on, "CFGZeroStar")
        self.zero_init = check_positive_int(zero_init, "zero_init", minimum=0)
        self._threshold: float | None = None                           # sigma_K of a run: set on start_run's copy

    def start_run(self, sigmas: Tensor | None) -> CFGZeroStar:
        levels = _positive_levels(sigmas, "CFGZeroStar")
        if levels is not None and self.zero_init >= levels.numel():
            raise ValueError(f"zero_init = {self.zero_init} steps would zero the whole run of {levels.numel()} levels")
        threshold = None if levels is None or not self.zero_init else float(levels[self.zero_init])
        return self._replace(on=self.on.start_run(sigmas), _threshold=threshold)

    def combine(self, d1: Tensor, delta: Tensor, w: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        v1, v0 = velocity_from_denoised(x, sigma, d1), velocity_from_denoised(x, sigma, d1 - delta)
        scale = optimized_scale(v1, v0)
        return denoised_from_velocity(x, sigma, scale * v0 + sigma_like(w, x) * (v1 - scale * v0))

    def zeroed(self, sigma: Tensor) -> Tensor:
        """Where zero-init sets the velocity to 0 [N] (bool): sigma above the run's K-th level, compared in sigma's
        dtype (the sampler's float32 sigma_K is not above itself)."""
        if not self.zero_init:
            return torch.zeros_like(sigma, dtype=torch.bool)
        if self._threshold is None:
            raise _unknown("CFGZeroStar", f"zero-init (zero_init={self.zero_init}; 0 turns it off)")
        return sigma > torch.tensor(self._threshold, dtype=sigma.dtype, device=sigma.device)

    def finish(self, out: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        zero = self.zeroed(sigma).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(zero, denoised_from_velocity(x, sigma, torch.zeros_like(x)), out)   # v = 0 on the first steps

    def __repr__(self) -> str:
        return f"CFGZeroStar(w={self.w!r}, on={self.on!r}, zero_init={self.zero_init!r}, interval={self.interval!r})"


class LinearCFG(_OnBase):
    """CFG with a linearly increasing weight (Wang et al. 2024, arXiv 2404.13040, Sec. 4, the "linear" heuristic
    scheduler, which they find improves on static CFG for every model and task they tried).

    With the sampling time t in [0, 1] (1 at the run's first level, 0 at its last nonzero one), the guidance
    strength w - 1 grows linearly from 0 to twice the static one, so its mean over the run equals the static w - 1:

        w_t = 1 + 2 (w - 1) (1 - t),   t(sigma_i) = 1 - i / (N - 1)  at the run's levels sigma_0 > ... > sigma_{N-1}

    t is the fraction of steps left, as the paper's t over uniform time steps; between two levels (Heun evaluates
    only at levels) it is linear in sigma, outside them clamped to [0, 1]. On EDM's schedule (Karras et al. 2022,
    Eq. 5) t = (sigma^(1/rho) - sigma_min^(1/rho)) / (sigma_max^(1/rho) - sigma_min^(1/rho)) at every level. The
    levels come from `start_run(sigmas)` (toydiff's samplers call it). `w` may itself be a callable of sigma.
    """

    def __init__(self, w: Weight = 1.0, *, on: Guidance | None = None, **kwargs):
        super().__init__(w, **kwargs)
        self.on = _check_base(on, "LinearCFG")
        self._levels: Tensor | None = None                             # the run's levels: set on start_run's copy

    def start_run(self, sigmas: Tensor | None) -> LinearCFG:
        return self._replace(on=self.on.start_run(sigmas), _levels=_positive_levels(sigmas, "LinearCFG"))

    def time(self, sigma: Tensor) -> Tensor:
        """The sampling time t [N] in [0, 1] of each sigma (1 = the run's first level, 0 = its last nonzero one)."""
        if self._levels is None:
            raise _unknown("LinearCFG", "its time t")
        up, n = self._levels.flip(0).to(sigma.device), self._levels.numel()       # increasing: step N-1 ... 0
        if n == 1:
            return torch.ones_like(sigma)
        s = sigma.to(torch.float64).contiguous()
        j = torch.searchsorted(up, s).clamp(1, n - 1)                            # up[j-1] <= s <= up[j] inside
        frac = ((s - up[j - 1]) / (up[j] - up[j - 1])).clamp(0, 1)
        return ((j - 1 + frac) / (n - 1)).to(sigma.dtype)

    def weight(self, sigma: Tensor) -> Tensor:
        static = super().weight(sigma)                                   # 1 outside the interval
        return 1 + 2 * (static - 1) * (1 - self.time(sigma))

    def __repr__(self) -> str:
        return f"LinearCFG(w={self.w!r}, on={self.on!r}, interval={self.interval!r})"
