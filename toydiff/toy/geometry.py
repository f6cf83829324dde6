"""The geometry of a guidance update, in any dimension: how much of it changes the prediction's direction and how
much its size.

Guidance adds (w - 1) dD, dD = D_1 - D_0, to the prediction D_1 (toydiff.guidance). Per sample, over all of its
coordinates (2 for a point, C H W for an image):

    parallel share   cos^2(dD, D_1) = <dD, D_1>^2 / (|dD|^2 |D_1|^2)   the part of the update along D_1 itself, which
                     rescales the prediction (an image's contrast and saturation) instead of moving it elsewhere;
                     a random direction scores 1 / d on average (1/2 for points, 1/768 for a 3 x 16 x 16 image)
    size ratio       |D_w| / |D_1|                                      how far guidance inflates the prediction

Dieleman's "The geometry of diffusion guidance" (2023 blog post) argues that in 2D the guided direction is what one
sees, while in image space most of what guidance does shows up in norms and per-image statistics; CFG rescale
(Lin et al. 2023, arXiv 2305.08891) and APG (Sadat et al. 2024, arXiv 2410.02416) correct exactly those. These two
numbers measure it on any denoiser pair.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["update_geometry", "geometry_table"]


def update_geometry(d1: Tensor, d0: Tensor, w: float) -> dict[str, Tensor]:
    """Per sample [N]: the parallel share cos^2(D_1 - D_0, D_1) and the size ratio |D_w| / |D_1| of the guided
    D_w = D_0 + w (D_1 - D_0) (module docstring); d1, d0: predictions [N, ...] of one shape."""
    if not isinstance(d1, Tensor) or not isinstance(d0, Tensor) or d1.shape != d0.shape or d1.ndim < 2:
        raise ValueError(f"d1 and d0 must be tensors [N, ...] of one shape, got {getattr(d1, 'shape', d1)!r} "
                         f"and {getattr(d0, 'shape', d0)!r}")
    a, b = d1.detach().double().flatten(1), d0.detach().double().flatten(1)
    delta = a - b
    dot, n_delta, n_d1 = (delta * a).sum(1), delta.square().sum(1), a.square().sum(1)
    share = torch.where((n_delta > 0) & (n_d1 > 0), dot.square() / (n_delta * n_d1).clamp_min(1e-300),
                        torch.zeros_like(dot))
    ratio = (b + w * delta).norm(dim=1) / n_d1.sqrt().clamp_min(1e-300)
    return {"parallel_share": share, "size_ratio": ratio}


def geometry_table(branches: Callable[[Tensor, float], tuple[Tensor, Tensor]], clean: Tensor,
                   sigmas: Sequence[float], w: float, *, seed: int = 0) -> list[dict[str, Any]]:
    """For each sigma, the means over `clean` samples x0 [N, ...] (noised as x0 + sigma n, seeded) of the parallel
    share and the size ratio; `branches(x, sigma) -> (D_1, D_0)` gives the two predictions, and "random" is the
    share a random direction would have (1 / d)."""
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=clean.dtype)
    rows = []
    with torch.no_grad():
        for s in sigmas:
            d1, d0 = branches(clean + s * noise, float(s))
            g = update_geometry(d1, d0, w)
            rows.append(dict(sigma=float(s), parallel_share=float(g["parallel_share"].mean()),
                             size_ratio=float(g["size_ratio"].mean()), random=1.0 / clean[0].numel()))
    return rows
