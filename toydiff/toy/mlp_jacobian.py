"""The exact divergence tr(dD/dx) of an `MLPDenoiser`, by forward-mode tangents through its layers (no autograd).

D(x) = c_skip x + c_out F(c_in x) (EDM preconditioning, per row), so

    tr dD/dx = dim c_skip + c_out c_in tr dF/dx_in,    x_in = c_in x.

F is Linear(features) (+ the label embedding) -> [SiLU -> Linear] x depth. The tangent of the input x_in along the
unit direction e_j is pushed through each layer: the first layer's derivative is its weight's column j (x_in's own
feature; the Fourier features of sigma have none) plus, for the damped position features, d/dx_in_j [a cos z,
a sin z] = 2 pi b_j [-a sin z, a cos z] (z = 2 pi b . x_in; read from the features themselves) times their
columns; then t <- t W^T for a Linear and t <- t silu'(h)
for a SiLU, silu'(h) = s (1 + h (1 - s)), s = sigmoid(h). All dim tangents run as one [dim, N, width] batch: about
twice the forward's matmuls, against the two reverse passes (and the graph) of autograd's per-coordinate
vector-Jacobian products. `toydiff.density.ode_log_density` uses it for these networks; D itself is the forward's
own arithmetic, bit for bit.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .nets import MLPDenoiser

__all__ = ["has_exact_divergence", "denoise_and_divergence"]


def has_exact_divergence(model: Any) -> bool:
    """Whether `denoise_and_divergence` applies: an MLPDenoiser whose D is MLPDenoiser's own (not the energy,
    twin-head or velocity variants)."""
    return isinstance(model, MLPDenoiser) and type(model).forward is MLPDenoiser.forward


@torch.no_grad()
def denoise_and_divergence(model: MLPDenoiser, x: Tensor, sigma: Any, cond: Any = None) -> tuple[Tensor, Tensor]:
    """(D(x; sigma, cond) [N, dim] exactly as model(x, sigma, cond) returns it, tr dD/dx [N] in the weights' dtype)."""
    if not has_exact_divergence(model):
        raise TypeError(f"model must be an MLPDenoiser with its own forward, got {type(model).__name__}")
    x, s, idx = model._args(x, sigma, cond)
    c_skip, c_out, c_in, c_noise = model._precond(s)
    feats = model._features(c_in * x, c_noise)                                       # [N, in]
    n, dim = x.shape
    w = model.inp.weight                                                             # [width, in]
    t = w[:, :dim].T[:, None, :].expand(dim, n, w.shape[0])     # d inp / d x_in_j: x_in's own columns, [dim, N, width]
    if hasattr(model, "position_b"):                            # + the position features' (those of sigma: 0)
        p, start = model.position_b.shape[1], dim + model.freqs.numel()
        cos_a, sin_a = feats[:, start:start + p], feats[:, start + p:]               # a cos z, a sin z
        db = (2 * math.pi * model.position_b).to(feats.dtype)[:, None, :]            # [dim, 1, P]
        t = t + torch.cat([-sin_a * db, cos_a * db], dim=2) @ w[:, start:].T
    h = model.inp(feats).add_(model.emb(idx))
    for layer in (*model.hidden, model.out):
        t = torch.ops.aten.silu_backward(t, h.expand_as(t)) @ layer.weight.T       # t silu'(h), fused
        h = layer(F.silu(h))
    d = (c_skip * x + c_out * h).to(x.dtype)
    trace = t.diagonal(dim1=0, dim2=2).sum(1)                                        # sum_j dF_j / dx_in_j
    return d, (dim * c_skip[:, 0] + c_out[:, 0] * c_in[:, 0] * trace).to(feats.dtype)
