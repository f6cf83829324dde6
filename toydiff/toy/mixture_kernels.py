"""The block arithmetic behind `GaussianMixture` (toydiff.toy.distributions), split out to keep that module small.

A batch of n points against K components is cut into row blocks of at most CHUNK_ELEMENTS points x components, so
each block's [n, k] float64 arrays stay in cache. Per block, the log of w_k N(x; mu_k, C_k + s^2 I) is one matmul of
the points' quadratic `features` with per-component weights (`block_logits`); sums over components are log-sum-exps
with the largest term factored out (`logsumexp_`, `shifted_exp_`). These functions read the mixture's precomputed
tables (`_det_w`, `_quad_w`, `_quad_w1`, `_logw`, `_cols`, `_cond_logw`, `_sorted_table`), built in its __init__.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .distributions import GaussianMixture

LOG_2PI = math.log(2.0 * math.pi)
CHUNK_ELEMENTS = 1 << 18  # points x components per block: 2 MB per [n, K] float64 array
EXP_FLOOR = -708.0        # exp(-708) = 3.3e-308, the smallest normal float64 is 2.2e-308 (see shifted_exp_)


def scratch(cache: dict, name: str, a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """{"out": a reusable [n, k] buffer} for the product a [n, m] @ b [m, k], kept in `cache` for one call (a fresh
    1 MB array per block costs the kernel's page faults every time); {} where autograd records a or b."""
    if a.requires_grad or b.requires_grad:
        return {}
    n, k = a.shape[0], b.shape[1]
    flat = cache.get(name)
    if flat is None or flat.numel() < n * k:
        flat = cache[name] = torch.empty(max(n * k, CHUNK_ELEMENTS), dtype=a.dtype, device=a.device)
    return {"out": flat[:n * k].view(n, k)}


def blocks(mix: GaussianMixture, n: int, s2: Tensor, cond: Tensor | None) -> Iterator[tuple]:
    """Row blocks of a batch of n points, each (rows, component columns, prior log-weights, sigma^2 or None).

    Points x components per block stay below CHUNK_ELEMENTS (the block's arrays stay in cache). A block whose
    points share one label c >= 0 needs only the columns of class c (the others have weight 0 in p(x | c));
    a block of mixed labels takes every component with a prior row per point [n, K]. sigma^2 is a float where
    the block shares one sigma (the sampler's case: then S_k = C_k + s^2 I is one matrix per component)."""
    step = max(1, CHUNK_ELEMENTS // len(mix))
    one_sigma = float(s2[0]) if bool((s2 == s2[0]).all()) else None          # checked once for the batch
    one_label = cond is None or bool((cond == cond[0]).all())
    for i in range(0, n, step):
        rows = slice(i, min(i + step, n))
        cols, logw = slice(0, len(mix)), mix._logw
        if cond is not None:
            c = cond[rows]
            first = int(c[0])
            if not (one_label or bool((c == first).all())):
                logw = mix._sorted_table[torch.where(c < 0, torch.full_like(c, mix.num_classes), c).cpu()]
            elif first >= 0:
                cols = mix._cols[first]
                logw = mix._cond_logw[cols]
        s = s2[rows]
        yield rows, cols, logw, (one_sigma if one_sigma is not None or not bool((s == s[0]).all())
                                 else float(s[0]))


def features(x: Tensor) -> Tensor:
    """[x0^2, x0 x1, x1^2, x0, x1, 1] [N, 6] of points x [N, 2]."""
    x0, x1 = x[:, 0], x[:, 1]
    return torch.stack([x0 * x0, x0 * x1, x1 * x1, x0, x1, torch.ones_like(x0)], 1)


def block_logits(mix: GaussianMixture, feats: Tensor, s2: Tensor, cols: slice, logw: Tensor, uniform: float | None,
                 cache: dict) -> tuple[Tensor, Tensor]:
    """log(w_k N(x; mu_k, C_k + s^2 I)) [n, k] over the columns `cols` (prior log-weights logw [k] or [n, k])
    from the `features` of x, and det S: [k] where the block shares sigma^2 = `uniform`, else [n, k].

    log N = -(r^T S^-1 r)/2 - log(2 pi) - log(det S)/2,  r = x - mu  (float64 throughout)
    One sigma: S_k is fixed, so 1/det S_k goes into the quadratic form's weights and log det S_k into the
    bias: one matmul [n, 6] @ [6, k] gives the logits (tables kept in `cache` for the call).
    """
    dev = feats.device
    if uniform is not None:
        key = (uniform, cols.start, cols.stop)
        if key not in cache:
            det = mix._det_w[0, cols] + uniform * mix._det_w[1, cols] + uniform * uniform        # [k]
            weight = (mix._quad_w[:6, cols] + uniform * mix._quad_w1[:, cols]) / det * -0.5    # [6, k]
            cache[key] = det.to(dev), weight.to(dev), det.log().mul_(-0.5).sub_(LOG_2PI).to(dev)
        det, weight, log_norm = cache[key]
        if logw.ndim == 1:                    # one prior row for the block: the bias is cached with the weights
            if key + ("bias",) not in cache:
                cache[key + ("bias",)] = logw.to(dev) + log_norm
            bias = cache[key + ("bias",)]
        else:
            bias = logw.to(dev) + log_norm
        return torch.addmm(bias, feats, weight, **scratch(cache, "logits", feats, weight)), det
    s2_powers = torch.stack([torch.ones_like(s2), s2, s2 * s2], 1)
    det_w = mix._det_w[:, cols].to(dev)
    det = torch.matmul(s2_powers, det_w, **scratch(cache, "det", s2_powers, det_w))                  # [n, k]
    feats = torch.cat([feats, s2[:, None] * torch.stack([feats[:, 0] + feats[:, 2], feats[:, 3], feats[:, 4],
                                                         feats[:, 5]], 1)], 1)
    quad_w = mix._quad_w[:, cols].to(dev)
    if feats.requires_grad:                                                  # autograd: no in-place updates
        return -0.5 * (feats @ quad_w / det + det.log()) + (logw.to(dev) - LOG_2PI), det
    quad = torch.matmul(feats, quad_w, **scratch(cache, "logits", feats, quad_w)).div_(det)
    return quad.add_(det.log()).mul_(-0.5).add_(logw.to(dev) - LOG_2PI), det


def logsumexp_(logits: Tensor) -> Tensor:
    """log sum_k exp(logits) [n] over dim 1, overwriting `logits` (each row has a finite entry)."""
    top = logits.amax(1, keepdim=True)
    if logits.requires_grad:
        return torch.logsumexp(logits, 1)
    return shifted_exp_(logits, top).sum(1).log_().add_(top[:, 0])


def shifted_exp_(logits: Tensor, top: Tensor) -> Tensor:
    """exp(logits - top) in place, with logits - top clamped at EXP_FLOOR: each row's largest term is 1, so the
    terms below exp(EXP_FLOOR) ~ 3e-308 change no sum or product, and exp of a far smaller number (the thin
    components of tree() give logits of -1e5) takes float64 exp off its vectorized path, 5x slower (measured)."""
    if logits.requires_grad:                                                 # autograd: no in-place updates
        return (logits - top.detach()).clamp(min=EXP_FLOOR).exp()
    return logits.sub_(top).clamp_(min=EXP_FLOOR).exp_()


def component_mean(x: Tensor, s2: Tensor, cov: Tensor, mu: Tensor) -> Tensor:
    """E[x0 | x, k; s] = mu_k + C_k (C_k + s^2 I)^-1 (x - mu_k) [N, 2] float64, row i with its component's covariance
    cov [N, 2, 2] and mean mu [N, 2] (float64) at s2 = sigma^2 [N] (float64): GaussianMixture.component_denoise's
    arithmetic, unchecked, for callers that gather a pool's components once (toydiff.toy.training)."""
    r = x.double() - mu
    a, b, d = cov[:, 0, 0] + s2, cov[:, 0, 1], cov[:, 1, 1] + s2                      # S = C + s^2 I
    u = torch.stack([d * r[:, 0] - b * r[:, 1], a * r[:, 1] - b * r[:, 0]], 1) / (a * d - b * b)[:, None]
    return mu + (cov @ u[:, :, None])[:, :, 0]                                        # S^-1 r by the 2x2 adjugate
