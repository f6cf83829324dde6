"""Guidance as error correction: the weight that brings a guided denoiser closest to the exact one.

Guidance (toydiff.guidance) mixes two predictions, D_w = D_0 + w (D_1 - D_0) (w = 1: D_1 alone). With the exact
conditional denoiser D* (the mixture itself) we can ask which w would be best at each x and sigma:

    e(w)  = |D_0 + w dD - D*|^2,          dD = D_1 - D_0,   r = D* - D_0
    w*    = <r, dD> / |dD|^2              (least squares; e(w) = e(w*) + (w - w*)^2 |dD|^2)
    e(1) - e(w*) = (w* - 1)^2 |dD|^2 = |D_1 - D*|^2 cos^2(D_1 - D*, dD)

so the best weight removes exactly the part of the main model's error that lies along the guidance direction: the
`removable` fraction cos^2 of the angle between the error D_1 - D* and dD (per x), or, pooled over x ~ p(x | c; sigma),
(w* - 1)^2 sum |dD|^2 / sum |D_1 - D*|^2 with the pooled w*(sigma) = sum <r, dD> / sum |dD|^2, the |dD|^2-weighted
mean of the per-x w*(x) (so the spread over x is read from |dD|^2-weighted quantiles).

`optimal_weight` is that formula on predictions; `weight_profile` evaluates it for a guidance method's own D_1 and
D_0 (its `branches`) on noisy true samples of one class at each sigma; `oracle_schedule` turns the profile into a
weight schedule w(sigma) to sample with: the best any weight schedule of that guide can do in this least-squares sense.
Nothing in the guidance literature computes this; it needs the exact D* that only a toy offers (toydiff's
mixtures). Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself", arXiv 2406.02507, Sec. 3)
argue the same picture qualitatively: the guide's errors point the way the main model's do, only more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..core.denoiser import Denoiser
from ..core.guidance import Guidance
from ..infra.validation import check_positive_int
from .distributions import GaussianMixture

__all__ = ["OptimalWeight", "optimal_weight", "WeightProfile", "weight_profile", "oracle_schedule"]


@dataclass(frozen=True)
class OptimalWeight:
    """Per point x [N] and pooled over the points: the best weight, the main model's error and what w* removes."""
    w: Tensor            # [N] w*(x) = <D* - D_0, dD> / |dD|^2 (NaN where dD = 0: any w is as good)
    error: Tensor        # [N] |D_1 - D*|^2, the unguided error
    removable: Tensor    # [N] e(1) - e(w*) = (w*(x) - 1)^2 |dD|^2
    direction: Tensor    # [N] |dD|^2, the weight of each point in the pooled w*
    w_pooled: float      # sum <D* - D_0, dD> / sum |dD|^2
    fraction: float      # (e(1) - e(w_pooled)) / e(1), summed over the points: what ONE weight removes

    @property
    def fraction_per_point(self) -> Tensor:
        """removable / error [N] = cos^2 of the angle between D_1 - D* and dD (0 where the error is 0)."""
        return torch.where(self.error > 0, self.removable / self.error.clamp_min(1e-300), torch.zeros_like(self.error))


def optimal_weight(d1: Tensor, d0: Tensor, exact: Tensor) -> OptimalWeight:
    """The least-squares weight of D_w = D_0 + w (D_1 - D_0) against the exact D*, per point and pooled (module
    docstring). d1, d0, exact: predictions [N, ...] of the same shape (computed in float64)."""
    if not (isinstance(d1, Tensor) and isinstance(d0, Tensor) and isinstance(exact, Tensor)):
        raise TypeError("d1, d0 and exact must be tensors [N, ...] of predictions")
    if not d1.shape == d0.shape == exact.shape or d1.ndim < 2:
        raise ValueError(f"d1, d0 and exact must share one shape [N, ...], got {tuple(d1.shape)}, "
                         f"{tuple(d0.shape)}, {tuple(exact.shape)}")
    d1, d0, exact = (t.detach().double().flatten(1) for t in (d1, d0, exact))
    if not all(bool(torch.isfinite(t).all()) for t in (d1, d0, exact)):
        raise ValueError("d1, d0 and exact must be finite")
    delta, r = d1 - d0, exact - d0
    dot, norm2 = (r * delta).sum(1), delta.square().sum(1)
    w = torch.where(norm2 > 0, dot / norm2.clamp_min(1e-300), torch.full_like(dot, math.nan))
    error = (d1 - exact).square().sum(1)
    removable = torch.where(norm2 > 0, (w - 1).square() * norm2, torch.zeros_like(norm2))
    total = float(norm2.sum())
    if total == 0:
        raise ValueError("D_1 equals D_0 at every point: no guidance direction, so no weight is optimal")
    w_pooled = float(dot.sum()) / total
    err = float(error.sum())
    fraction = (w_pooled - 1) ** 2 * total / err if err > 0 else 0.0
    return OptimalWeight(w, error, removable, norm2, w_pooled, fraction)


@dataclass(frozen=True)
class WeightProfile:
    """w*(sigma) of one guidance's (D_1, D_0) against the exact class denoiser, on noisy true samples of the class.
    quartiles: the |dD|^2-weighted 25/50/75% of w*(x) [S, 3]; fraction: what w*(sigma) removes of the error."""
    sigmas: Tensor       # [S]
    w: Tensor            # [S] pooled w*(sigma)
    quartiles: Tensor    # [S, 3]
    fraction: Tensor     # [S]
    error: Tensor        # [S] mean |D_1 - D*|^2 / sigma^2 over the points (the main model's score error)


def _weighted_quantiles(values: Tensor, weights: Tensor, qs: Sequence[float]) -> Tensor:
    """Quantiles of `values` under the (non-negative) `weights`: the smallest value whose cumulative weight
    reaches q of the total."""
    keep = torch.isfinite(values) & (weights > 0)
    v, wt = values[keep], weights[keep]
    order = v.argsort()
    cum = wt[order].cumsum(0) / wt.sum()
    idx = torch.searchsorted(cum, torch.tensor(list(qs), dtype=cum.dtype)).clamp(max=v.numel() - 1)
    return v[order][idx]


def weight_profile(denoiser: Denoiser, guidance: Guidance, exact: GaussianMixture, cls: int,
                   sigmas: Sequence[float] | Tensor, *, n: int = 2048, seed: int = 0,
                   points: Tensor | None = None) -> WeightProfile:
    """w*(sigma) for the D_1 and D_0 that `guidance` forms around `denoiser` (its `branches`: CFG's null label or a
    separate unconditional model, autoguidance's guide, ...), against the exact denoiser `exact` of class `cls`,
    at each sigma on n points x ~ p(x | cls; sigma) (exact noisy samples; the same draw at every sigma, seeded),
    or on `points` [S, N, 2], the x to use at each sigma (e.g. a sampler's trajectory: where samples really go).
    The denoiser is called with label `cls` (its label space must be exact's, e.g. class A = 0 on the tree)."""
    if not isinstance(guidance, Guidance):
        raise TypeError(f"guidance must be a toydiff.guidance.Guidance, got {type(guidance).__name__}")
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sig.numel() == 0 or not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()):
        raise ValueError(f"sigmas must be finite noise levels > 0, got {sigmas!r}")
    if points is None:
        n = check_positive_int(n, "n")
        gen = torch.Generator().manual_seed(seed)
        x0, _ = exact.sample(n, cond=cls, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        points = torch.stack([x0 + s * noise for s in sig.tolist()])
    elif not isinstance(points, Tensor) or points.ndim != 3 or points.shape[0] != sig.numel() or points.shape[2] != 2:
        raise ValueError(f"points must be a tensor [S, N, 2] with S = {sig.numel()} (one set per sigma), "
                         f"got {tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__}")
    n = points.shape[1]
    cond = torch.full((n,), cls, dtype=torch.long)
    rows = []
    with torch.no_grad():
        for s, xs in zip(sig.tolist(), points):
            x = xs.float()
            d1, delta = guidance.branches(denoiser, x, torch.full((n,), s), cond)
            best = optimal_weight(d1, d1 - delta, exact(x.double(), s, cond))
            q = _weighted_quantiles(best.w, best.direction, (0.25, 0.5, 0.75))
            rows.append((best.w_pooled, q, best.fraction, float(best.error.mean()) / s ** 2))
    return WeightProfile(sig, torch.tensor([r[0] for r in rows], dtype=torch.float64), torch.stack([r[1] for r in rows]),
                         torch.tensor([r[2] for r in rows], dtype=torch.float64),
                         torch.tensor([r[3] for r in rows], dtype=torch.float64))


def oracle_schedule(profile: WeightProfile, *, w_min: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The weight schedule sigma -> w*(sigma) of a profile, linear in log sigma between its levels and held constant
    beyond them, floored at `w_min` (a weight < 0 is not a guidance any toydiff method takes). Pass it as `w`
    to any recipe of toydiff.guidance (a callable weight)."""
    order = profile.sigmas.argsort()
    log_s, w = profile.sigmas[order].log(), profile.w[order].clamp_min(w_min)

    def schedule(sigma: Tensor) -> Tensor:
        ls = torch.as_tensor(sigma, dtype=torch.float64).clamp_min(1e-30).log().clamp(log_s[0], log_s[-1])
        j = torch.searchsorted(log_s, ls).clamp(1, log_s.numel() - 1) if log_s.numel() > 1 else None
        if j is None:
            out = w.expand_as(ls)
        else:
            t = (ls - log_s[j - 1]) / (log_s[j] - log_s[j - 1])
            out = w[j - 1] + t * (w[j] - w[j - 1])
        return out.to(sigma.dtype if isinstance(sigma, Tensor) else torch.float64)
    return schedule
