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

from ..validation import check_nonnegative, sigma_like
from .base import Guidance, Weight
from .modifiers import _check_base

__all__ = ["CFGZeroStar", "LinearCFG"]


class CFGZeroStar(Guidance):
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886, Sec. 4, "optimized scale" and "zero-init").

    The paper guides a flow-matching velocity. In the EDM view x = x0 + sigma n, the rectified-flow state is
    z = x / (1 + sigma) at time t = sigma / (1 + sigma) and its velocity is v = n - x0, so a denoiser D gives the
    exact velocity prediction v = (x - D) / sigma - D, and back D = (x - sigma v) / (1 + sigma). Then

        s*  = <v_1, v_0> / |v_0|^2                       (per sample, over all non-batch dims; paper Eq. for s*)
        v_w = s* v_0 + w (v_1 - s* v_0)                  (the paper's (1 - w) s* v_u + w v_c)
        D_w = (x - sigma v_w) / (1 + sigma)

    s* = 1 is CFG exactly. Zero-init: where sigma > `zero_init` the velocity is set to 0 (the first solver steps
    of the paper, given here as a sigma threshold so it is independent of the step count): D = x / (1 + sigma),
    which leaves z unchanged. `zero_init=None` turns it off.
    """

    def __init__(self, w: Weight = 1.0, *, on: Guidance | None = None, zero_init: float | None = None, **kwargs):
        super().__init__(w, **kwargs)
        if self.rescale:
            raise ValueError("CFGZeroStar does not take rescale: its optimized scale replaces it")
        self.on = _check_base(on, "CFGZeroStar")
        self.zero_init = None if zero_init is None else check_nonnegative(zero_init, "zero_init")

    def unguided(self, denoiser, x, sigma, cond):
        return self.on.unguided(denoiser, x, sigma, cond)

    def branches(self, denoiser, x, sigma, cond):
        return self.on.branches(denoiser, x, sigma, cond)

    def combine(self, d1: Tensor, delta: Tensor, w: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        s, dims = sigma_like(sigma, x), tuple(range(1, x.ndim))
        v1, v0 = (x - d1) / s - d1, (x - (d1 - delta)) / s - (d1 - delta)          # velocities of D_1, D_0
        scale = (v1 * v0).sum(dims, keepdim=True) / v0.square().sum(dims, keepdim=True).clamp_min(1e-30)
        v = scale * v0 + sigma_like(w, x) * (v1 - scale * v0)
        return (x - s * v) / (1 + s)

    def __call__(self, denoiser, x, sigma, cond=None):
        x, s, cond = self._args(x, sigma, cond)
        out = super().__call__(denoiser, x, s, cond)
        if self.zero_init is None:
            return out
        zero = (s > self.zero_init).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(zero, x / (1 + sigma_like(s, x)), out)                  # v = 0 on the first steps

    def __repr__(self) -> str:
        return f"CFGZeroStar(w={self.w!r}, on={self.on!r}, zero_init={self.zero_init!r}, interval={self.interval!r})"


class LinearCFG(Guidance):
    """CFG with a linearly increasing weight (Wang et al. 2024, arXiv 2404.13040, Sec. 4, the "linear" heuristic
    scheduler, which they find improves on static CFG for every model and task they tried).

    With the sampling time t in [0, 1] (1 at sigma_max, 0 at sigma_min), the guidance strength w - 1 grows
    linearly from 0 to twice the static one, so its mean over the run equals the static w - 1:

        w_t = 1 + 2 (w - 1) (1 - t),   t = (sigma^(1/rho) - sigma_min^(1/rho)) / (sigma_max^(1/rho) - sigma_min^(1/rho))

    t is the fraction of EDM steps left (Karras et al. 2022, Eq. 5), so pass the sampler's sigma_min, sigma_max
    and rho; t is clamped to [0, 1]. `w` may itself be a callable of sigma (one static weight per sample).
    """

    def __init__(self, w: Weight = 1.0, *, on: Guidance | None = None, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, **kwargs):
        super().__init__(w, **kwargs)
        self.on = _check_base(on, "LinearCFG")
        self.sigma_min = check_nonnegative(sigma_min, "sigma_min")
        self.sigma_max = check_nonnegative(sigma_max, "sigma_max")
        self.rho = check_nonnegative(rho, "rho")
        if not 0 < self.sigma_min < self.sigma_max or self.rho == 0:
            raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")

    def time(self, sigma: Tensor) -> Tensor:
        """The sampling time t [N] in [0, 1] of each sigma (1 = sigma_max, 0 = sigma_min)."""
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return ((sigma.clamp_min(0) ** (1 / self.rho) - lo) / (hi - lo)).clamp(0, 1)

    def weight(self, sigma: Tensor) -> Tensor:
        static = super().weight(sigma)                                   # 1 outside the interval
        return 1 + 2 * (static - 1) * (1 - self.time(sigma))

    def unguided(self, denoiser, x, sigma, cond):
        return self.on.unguided(denoiser, x, sigma, cond)

    def branches(self, denoiser, x, sigma, cond):
        return self.on.branches(denoiser, x, sigma, cond)

    def __repr__(self) -> str:
        return (f"LinearCFG(w={self.w!r}, on={self.on!r}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
                f"rho={self.rho})")

