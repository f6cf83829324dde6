"""An exact divergence between samples and a Gaussian-mixture class: the sample histogram against the true mass
of every bin.

For a bin grid over a box, the mass of p(x | c) in each bin is exact: a rectangle's mass under a 2D Gaussian is
F(b1, b2) - F(a1, b2) - F(b1, a2) + F(a1, a2), with F the bivariate normal CDF, written with Owen's T function
(Owen 1956, "Tables for computing bivariate normal probabilities", Eq. 2.1-2.3):

    F(h, k; rho) = Phi(h)/2 + Phi(k)/2 - T(h, a_h) - T(k, a_k) - beta,
    a_h = (k - rho h) / (h sqrt(1 - rho^2)),  a_k = (h - rho k) / (k sqrt(1 - rho^2)),
    beta = 1/2 if h k < 0 or (h k = 0 and h + k < 0), else 0

for standardized corners h = (x1 - m1)/s1, k = (x2 - m2)/s2. The mass outside the box is one more bin, so both
histograms are distributions. `histogram_divergence` gives the total variation TV = 1/2 sum |q_b - p_b| and
KL(q || p) = sum q_b log(q_b / p_b) of the sample histogram q; with n samples even true samples score above 0:
`noise_floor` measures that floor with n true samples.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtr, owens_t
from torch import Tensor

from .distributions import GaussianMixture, fingerprint
from ..infra.validation import check_points, check_positive_int

__all__ = ["bvn_cdf", "class_box", "class_grid", "bin_masses", "sample_histogram", "total_variation",
           "histogram_divergence", "noise_floor"]


def bvn_cdf(h: np.ndarray, k: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """P(X1 <= h, X2 <= k) for a standard bivariate normal with correlation rho (|rho| < 1), elementwise (Owen 1956)."""
    h, k, rho = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (h, k, rho)))
    h = np.where(h == 0, 1e-300, h)                                   # a_h, a_k stay finite; T(0+, a) -> T(0, a)
    k = np.where(k == 0, 1e-300, k)
    root = np.sqrt(1 - rho * rho)
    beta = np.where(h * k < 0, 0.5, 0.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        a_h, a_k = (k - rho * h) / (h * root), (h - rho * k) / (k * root)
    return 0.5 * ndtr(h) + 0.5 * ndtr(k) - owens_t(h, a_h) - owens_t(k, a_k) - beta


def class_box(dist: GaussianMixture, cls: int, spread: float = 4.0) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi): the smallest box holding every component of class `cls` out to `spread` std."""
    sel = dist.labels == cls
    if not bool(sel.any()):
        raise ValueError(f"cls must be a class of the mixture in [0, {dist.num_classes}), got {cls!r}")
    m, sd = dist.means[sel].double(), dist.covs[sel].double().diagonal(dim1=1, dim2=2).sqrt()
    lo, hi = (m - spread * sd).min(0).values, (m + spread * sd).max(0).values
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def bin_masses(dist: GaussianMixture, cls: int, edges_x: Tensor, edges_y: Tensor) -> Tensor:
    """Exact mass of p(x | cls) in each bin [Bx, By] of the grid (float64), and the mass outside, appended last:
    a vector [Bx * By + 1] summing to 1."""
    sel = dist.labels == cls
    w = dist.weights[sel].double().numpy()
    w = w / w.sum()
    m, cov = dist.means[sel].double().numpy(), dist.covs[sel].double().numpy()
    s1, s2 = np.sqrt(cov[:, 0, 0]), np.sqrt(cov[:, 1, 1])
    rho = cov[:, 0, 1] / (s1 * s2)
    ex, ey = edges_x.double().numpy(), edges_y.double().numpy()
    h = (ex[None, :, None] - m[:, 0, None, None]) / s1[:, None, None]            # [K, Ex, 1]
    k = (ey[None, None, :] - m[:, 1, None, None]) / s2[:, None, None]            # [K, 1, Ey]
    corner = np.einsum("k,kij->ij", w, bvn_cdf(h, k, rho[:, None, None]))       # F at every grid corner [Ex, Ey]
    inside = np.diff(np.diff(corner, axis=0), axis=1).clip(min=0)                # inclusion-exclusion per bin
    masses = torch.from_numpy(inside.reshape(-1))
    return torch.cat([masses, (1 - masses.sum()).clamp_min(0).reshape(1)])


def class_grid(dist: GaussianMixture, cls: int, bins: int) -> tuple[Tensor, Tensor]:
    """Bin edges (x [bins + 1], y [bins + 1]) of a bins x bins grid over `class_box`."""
    x_lo, x_hi, y_lo, y_hi = class_box(dist, cls)
    return (torch.linspace(x_lo, x_hi, bins + 1, dtype=torch.float64),
            torch.linspace(y_lo, y_hi, bins + 1, dtype=torch.float64))


def sample_histogram(x: Tensor, edges_x: Tensor, edges_y: Tensor) -> Tensor:
    """Share of the points x [N, 2] in each bin [Bx * By] (x-major: bin (i, j) at i * By + j, bin i holding
    edges_x[i] <= x < edges_x[i + 1]) and outside the box (last), as bin_masses lays them out; sums to 1."""
    bx, by = edges_x.numel() - 1, edges_y.numel() - 1
    i = torch.searchsorted(edges_x, x[:, 0].contiguous(), right=True) - 1
    j = torch.searchsorted(edges_y, x[:, 1].contiguous(), right=True) - 1
    inside = (i >= 0) & (i < bx) & (j >= 0) & (j < by)
    flat = torch.where(inside, i * by + j, torch.full_like(i, bx * by))
    return torch.bincount(flat, minlength=bx * by + 1).double() / x.shape[0]


def total_variation(q: Tensor, p: Tensor) -> float:
    """TV = 1/2 sum_b |q_b - p_b| between two distributions over the same bins (the outside bin included), in
    [0, 1]: the one total variation of toydiff (the bench's histograms, `density.sample_tv`, the CFG figure)."""
    if q.shape != p.shape:
        raise ValueError(f"q and p must be distributions over the same bins, got shapes {tuple(q.shape)} and "
                         f"{tuple(p.shape)}")
    return float(0.5 * (q.double() - p.double()).abs().sum())


_MASSES: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}     # (mixture fingerprint, class, bins) -> edges, masses


def histogram_divergence(x: Tensor, dist: GaussianMixture, cls: int, *, bins: int = 32) -> dict[str, float]:
    """TV and KL(q || p) between the histogram q of samples x [N, 2] and the exact bin masses p of p(x | cls), on
    a bins x bins grid over `class_box` plus the outside. TV lies in [0, 1]; both are 0 only when every bin matches.
    """
    x = check_points(x, 2, "x").double()
    bins = check_positive_int(bins, "bins")
    key = (fingerprint(dist), cls, bins)
    if key not in _MASSES:
        edges = class_grid(dist, cls, bins)
        _MASSES[key] = (*edges, bin_masses(dist, cls, *edges))
    ex, ey, p = _MASSES[key]
    q = sample_histogram(x, ex, ey)
    kl = torch.where(q > 0, q * (q / p.clamp_min(1e-300)).log(), torch.zeros_like(q)).sum()
    return dict(tv=total_variation(q, p), kl=float(kl))


def noise_floor(dist: GaussianMixture, cls: int, n: int, *, bins: int = 32, seed: int = 0) -> dict[str, float]:
    """The divergences of n TRUE samples of class `cls` (drawn with `seed`): what a perfect sampler scores at this n."""
    n = check_positive_int(n, "n")
    x, _ = dist.sample(n, cond=cls, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return histogram_divergence(x, dist, cls, bins=bins)

