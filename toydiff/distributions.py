"""Gaussian mixtures in 2D with exact log-density, score, denoiser and class posterior at every noise level.

Noising the data with N(0, sigma^2 I) keeps a Gaussian mixture a Gaussian mixture:
    p(x; sigma) = sum_k w_k N(x; mu_k, C_k + sigma^2 I)
so every quantity a diffusion model learns is known in closed form (Karras et al. 2022, EDM, Sec. 2):
    score      s(x; sigma) = grad_x log p(x; sigma)
    denoiser   D(x; sigma) = E[x0 | x] = x + sigma^2 s(x; sigma)        (Tweedie / Miyasawa)
The 2x2 algebra is closed-form (no eigendecomposition, no batched inverse) and every sum over
components is a log-sum-exp, so results stay finite anywhere on the plane.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .validation import as_cond, as_sigma, check_points

__all__ = ["GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)
_CHUNK_ELEMENTS = 1 << 21  # points x components handled at once: bounds memory at ~16 MB per [N, K] array


class GaussianMixture:
    """A class-labelled mixture sum_k w_k N(mu_k, C_k) in 2D; also an exact denoiser D(x, sigma, cond).

    Args:
        weights: [K] non-negative mixture weights (normalized here).
        means: [K, 2] component means.
        covs: [K, 2, 2] symmetric positive-definite component covariances.
        labels: [K] class of each component, in [0, num_classes); default all 0.
        num_classes: number of classes; default max(labels) + 1.

    Conditioning follows the denoiser contract: `cond` is int64 [N] with -1 for "no condition"
    (the marginal p(x)), or None for a marginal batch. p(x | c) is the mixture restricted to the
    components labelled c, renormalized.
    """

    def __init__(self, weights, means, covs, labels=None, num_classes: int | None = None):
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covs, dtype=torch.float64)
        k = w.shape[0]
        if k == 0:
            raise ValueError("weights must have at least one component")
        if mu.shape != (k, 2):
            raise ValueError(f"means must have shape [{k}, 2], got {tuple(mu.shape)}")
        if cov.shape != (k, 2, 2):
            raise ValueError(f"covs must have shape [{k}, 2, 2], got {tuple(cov.shape)}")
        if not (torch.isfinite(w).all() and torch.isfinite(mu).all() and torch.isfinite(cov).all()):
            raise ValueError("weights, means and covs must be finite")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if not torch.allclose(cov, cov.transpose(1, 2)):
            raise ValueError("covs must be symmetric")
        a, b, d = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
        if (a <= 0).any() or (a * d - b * b <= 0).any():
            raise ValueError("covs must be positive definite")
        lab = torch.zeros(k, dtype=torch.long) if labels is None else torch.as_tensor(labels).reshape(-1)
        if lab.is_floating_point() or lab.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
        lab = lab.long()
        if lab.shape != (k,):
            raise ValueError(f"labels must have shape [{k}], got {tuple(lab.shape)}")
        c = int(lab.max()) + 1 if num_classes is None else int(num_classes)
        if (lab < 0).any() or (lab >= c).any():
            raise ValueError(f"labels must lie in [0, {c - 1}]")
        self.weights = w / w.sum()
        self.means, self.covs, self.labels, self.num_classes = mu, cov, lab, c
        # log w_k for p(x) and log(w_k / W_c) for p(x | c): row c of [C+1, K], row C is the marginal
        onehot = torch.nn.functional.one_hot(lab, c).T.bool()                      # [C, K]
        class_mass = (self.weights * onehot).sum(1, keepdim=True)                  # [C, 1] = W_c
        if (class_mass <= 0).any():
            raise ValueError("every class in [0, num_classes) needs at least one component of positive weight")
        logw = self.weights.log()
        cond_logw = torch.where(onehot, logw - class_mass.log(), torch.full_like(logw, -math.inf))
        self._logw_table = torch.cat([cond_logw, logw[None]], 0)                   # [C+1, K]
        self._class_mask = torch.where(onehot, 0.0, -math.inf).double()            # [C, K]

    # ------------------------------------------------------------------ core
    def __len__(self) -> int:
        return self.weights.shape[0]

    def _prepare(self, x: Tensor, sigma, cond) -> tuple[Tensor, Tensor, Tensor | None]:
        x = check_points(x, 2, "x")
        n = x.shape[0]
        s = as_sigma(sigma, n, device=x.device)
        c = as_cond(cond, n, self.num_classes, device=x.device)
        return x, s, c

    def _logw_rows(self, cond: Tensor | None, n: int, device) -> Tensor:
        """Prior log-weights per point [N, K]: row `cond` of the table (the marginal row for -1/None)."""
        table = self._logw_table.to(device)
        idx = torch.full((n,), self.num_classes, device=device) if cond is None else \
            torch.where(cond < 0, torch.full_like(cond, self.num_classes), cond)
        return table[idx]

    def _terms(self, x: Tensor, s2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per point and component: log N(x; mu_k, C_k + s^2 I) [N, K] and the gradient of that log N [N, K, 2].

        S = C + s^2 I = [[a, b], [b, d]];  det S = ad - b^2;  S^-1 = [[d, -b], [-b, a]] / det S
        log N = -(r^T S^-1 r)/2 - log(2 pi) - log(det S)/2   with r = x - mu
        grad log N = -S^-1 r
        """
        mu, cov = self.means.to(x.device), self.covs.to(x.device)
        a = cov[None, :, 0, 0] + s2[:, None]                                     # [N, K]
        b = cov[None, :, 0, 1].expand_as(a)
        d = cov[None, :, 1, 1] + s2[:, None]
        det = a * d - b * b
        rx = x[:, None, 0] - mu[None, :, 0]
        ry = x[:, None, 1] - mu[None, :, 1]
        gx = (d * rx - b * ry) / det                                              # S^-1 r
        gy = (a * ry - b * rx) / det
        log_n = -0.5 * (rx * gx + ry * gy) - _LOG_2PI - 0.5 * det.log()
        return log_n, gx, gy

    def _chunks(self, n: int, per_point: int = 1) -> list[slice]:
        """Row slices of a batch of n points so that points x components x per_point stays bounded."""
        step = max(1, _CHUNK_ELEMENTS // (len(self) * per_point))
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: Tensor, sigma=0.0, cond=None) -> Tensor:
        """Normalized log p(x | c; sigma) [N] of the mixture convolved with N(0, sigma^2 I) (c = -1/None: p(x; sigma))."""
        x, s, c = self._prepare(x, sigma, cond)
        xd, s2 = x.double(), s.double() ** 2
        out = []
        for sl in self._chunks(x.shape[0]):
            log_n, _, _ = self._terms(xd[sl], s2[sl])
            logw = self._logw_rows(None if c is None else c[sl], log_n.shape[0], x.device)
            out.append(torch.logsumexp(logw + log_n, dim=1))
        return torch.cat(out).to(x.dtype)

    def score(self, x: Tensor, sigma, cond=None) -> Tensor:
        """Exact score grad_x log p(x | c; sigma) [N, 2] = sum_k r_k (-S_k^-1 (x - mu_k)), r = responsibilities."""
        x, s, c = self._prepare(x, sigma, cond)
        return self._score(x, s, c)

    def _score(self, x: Tensor, s: Tensor, c: Tensor | None) -> Tensor:
        xd, s2 = x.double(), s.double() ** 2
        out = []
        for sl in self._chunks(x.shape[0]):
            log_n, gx, gy = self._terms(xd[sl], s2[sl])
            logw = self._logw_rows(None if c is None else c[sl], log_n.shape[0], x.device)
            r = torch.softmax(logw + log_n, dim=1)                                # [n, K]
            out.append(-torch.stack([(r * gx).sum(1), (r * gy).sum(1)], dim=1))
        return torch.cat(out).to(x.dtype)

    def denoise(self, x: Tensor, sigma, cond=None) -> Tensor:
        """Exact posterior mean E[x0 | x; sigma, c] [N, 2] = x + sigma^2 s(x | c; sigma) (Tweedie's formula)."""
        x, s, c = self._prepare(x, sigma, cond)
        return x + (s.to(x.dtype) ** 2)[:, None] * self._score(x, s, c)

    __call__ = denoise

    def class_posterior(self, x: Tensor, sigma) -> Tensor:
        """Exact p(c | x; sigma) [N, C]: the components' responsibilities summed per class (differentiable in x)."""
        return self.class_log_posterior(x, sigma).exp()

    def class_log_posterior(self, x: Tensor, sigma) -> Tensor:
        """Exact log p(c | x; sigma) [N, C] = log p(x | c; sigma) + log W_c - log p(x; sigma), as a log-sum-exp."""
        x, s, _ = self._prepare(x, sigma, None)
        xd, s2 = x.double(), s.double() ** 2
        in_class = self._class_mask.to(x.device)                                  # [C, K]: 0 or -inf
        out = []
        for sl in self._chunks(x.shape[0], per_point=self.num_classes):
            log_n, _, _ = self._terms(xd[sl], s2[sl])
            joint = self._logw_table[-1].to(x.device) + log_n                      # log w_k N_k  [n, K]
            per_class = torch.logsumexp(joint[:, None, :] + in_class[None], dim=2)  # [n, C]
            out.append(per_class - torch.logsumexp(joint, dim=1, keepdim=True))
        return torch.cat(out).to(x.dtype)

    def sample(self, n: int, cond=None, sigma=0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Exact samples (x [n, 2], y [n]) of p(x | c; sigma): pick a component, then mu + L z (+ sigma * noise).

        `cond` is an int, an int64 tensor [n] (-1 = marginal) or None (marginal); y holds each sample's class.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        c = as_cond(cond, n, self.num_classes)
        s = as_sigma(sigma, n)
        probs = self._logw_rows(c, n, "cpu").exp()                                # [n, K]
        k = torch.multinomial(probs, 1, replacement=True, generator=generator).squeeze(1) if c is not None \
            else torch.multinomial(self.weights, n, replacement=True, generator=generator)
        # Cholesky of [[a, b], [b, d]]: L = [[sqrt a, 0], [b / sqrt a, sqrt(d - b^2 / a)]]
        cov = self.covs[k]
        l00 = cov[:, 0, 0].sqrt()
        l10 = cov[:, 0, 1] / l00
        l11 = (cov[:, 1, 1] - l10 ** 2).sqrt()
        z = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.stack([l00 * z[:, 0], l10 * z[:, 0] + l11 * z[:, 1]], 1) + s[:, None] * z[:, 2:]
        return x.to(dtype), self.labels[k].clone()

    # ------------------------------------------------------------------ summaries
    def mean(self, cond: int | None = None) -> Tensor:
        """Mean [2] of p(x) or p(x | cond)."""
        w = self._logw_rows(None if cond is None else torch.tensor([cond]), 1, "cpu")[0].exp()
        return w @ self.means

    def covariance(self, cond: int | None = None) -> Tensor:
        """Covariance [2, 2] of p(x) or p(x | cond): sum w_k (C_k + mu_k mu_k^T) - m m^T."""
        w = self._logw_rows(None if cond is None else torch.tensor([cond]), 1, "cpu")[0].exp()
        m = w @ self.means
        second = (w[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def __repr__(self) -> str:
        return f"GaussianMixture(components={len(self)}, num_classes={self.num_classes})"
