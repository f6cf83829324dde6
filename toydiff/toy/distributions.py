"""Gaussian mixtures in 2D with exact log-density, score, denoiser and class posterior at every noise level.

Noising the data with N(0, sigma^2 I) keeps a Gaussian mixture a Gaussian mixture:
    p(x; sigma) = sum_k w_k N(x; mu_k, C_k + sigma^2 I)
so every quantity a diffusion model learns is known in closed form (Karras et al. 2022, EDM, Sec. 2):
    score      s(x; sigma) = grad_x log p(x; sigma)
    denoiser   D(x; sigma) = E[x0 | x] = x + sigma^2 s(x; sigma)        (Tweedie / Miyasawa)
The 2x2 algebra is closed-form (no eigendecomposition, no batched inverse), evaluated in float64, and every sum
over components is a log-sum-exp, so results (float64 or float32) stay finite over the stated range
|x| <= X_LIMIT = 1e15 (each coordinate) and 0 <= sigma <= SIGMA_LIMIT = 1e15; inputs beyond it raise a ValueError
saying why. The range is a property of floating point, not of the mixture: (1) D = x + sigma^2 s is evaluated as
written, so D carries float64's rounding of x, an absolute error of about |x| 2^-53 (1e-7 at |x| = sigma = 1e9,
0.1 at 1e15, while the exact D there is ~0.5 / sigma: at large sigma D tends to the mixture mean); (2) log p ~
-|x|^2 / (2 (C + sigma^2)) leaves float32 past |x| ~ 1e19; (3) past ~1e77 the float64 terms sigma^4 and
|x|^2 sigma^2 themselves overflow. sigma = inf (D = the mixture mean, s = 0) is outside it too.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from ..infra.validation import as_cond, as_sigma, check_points, check_positive_int
from .mixture_kernels import block_logits, blocks, component_mean, features, logsumexp_, shifted_exp_

__all__ = ["GaussianMixture", "fingerprint", "X_LIMIT", "SIGMA_LIMIT"]

X_LIMIT = 1e15      # |x| and sigma where every method is still finite in float32 too (see the module docstring)
SIGMA_LIMIT = 1e15




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
        if mu.abs().max() > X_LIMIT or cov.abs().max() > SIGMA_LIMIT ** 2:
            raise ValueError(f"means must satisfy |mu| <= {X_LIMIT:g} and covs |C| <= {SIGMA_LIMIT ** 2:g} (the "
                             f"mixture's finite range), got max |mu| {mu.abs().max().item():g}, max |C| "
                             f"{cov.abs().max().item():g}")
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
        c = int(lab.max()) + 1 if num_classes is None else check_positive_int(num_classes, "num_classes")
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
        self._logw_table = torch.cat([cond_logw, logw[None]], 0)                   # [C+1, K] (for sample)
        self._log_class_mass = class_mass[:, 0].log()                              # [C] = log W_c
        # Closed-form 2x2 algebra, arranged so the [N, K] work is two matmuls (see mixture_kernels.block_logits and _score), over the
        # components sorted by class (the columns of class c are the contiguous slice self._cols[c]).
        # C = [[A, B], [B, D]], adj C = [[D, -B], [-B, A]], S = C + s^2 I:
        #   det S = det C + s^2 tr C + s^4                     -> [1, s^2, s^4] @ [det C; tr C; 1]
        #   adj S = adj C + s^2 I,   S^-1 = adj S / det S
        #   r^T adj S r = Q(x - mu) + s^2 |x - mu|^2, expanded in the features of x:
        #   [x0^2, x0 x1, x1^2, x0, x1, 1, s^2|x|^2, s^2 x0, s^2 x1, s^2] @ W
        order = lab.argsort(stable=True)
        counts = torch.bincount(lab, minlength=c).tolist()
        ends = torch.tensor(counts).cumsum(0).tolist()
        self._cols = [slice(e - k, e) for e, k in zip(ends, counts)]                   # class c's sorted columns
        mu, cov = mu[order], cov[order]
        self._logw = logw[order]                                                        # [K] sorted
        self._cond_logw = torch.cat([self._logw[sl] - class_mass[i].log() for i, sl in enumerate(self._cols)])
        self._sorted_table = torch.cat([cond_logw[:, order], self._logw[None]], 0)     # [C+1, K] sorted columns
        A, B, D = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
        adj_mu = torch.stack([D * mu[:, 0] - B * mu[:, 1], A * mu[:, 1] - B * mu[:, 0]], 1)   # (adj C) mu
        ones = torch.ones_like(A)
        self._quad_w = torch.stack([D, -2 * B, A, -2 * adj_mu[:, 0], -2 * adj_mu[:, 1], (mu * adj_mu).sum(1),
                                    ones, -2 * mu[:, 0], -2 * mu[:, 1], (mu * mu).sum(1)])          # [10, K]
        # one sigma for a whole block: Q(x - mu) + s^2 |x - mu|^2 = [x0^2, x0 x1, x1^2, x0, x1, 1] @ (W0 + s^2 W1)
        w = self._quad_w
        self._quad_w1 = torch.stack([w[6], torch.zeros_like(A), w[6], w[7], w[8], w[9]])           # [6, K]
        self._det_w = torch.stack([A * D - B * B, A + D, ones])                                    # [3, K]
        # sum_k rho_k adj(S_k)(x - mu_k) = M x - v1 + s^2 (sum(rho) x - v2),  [M | v1 | v2 | sum] = rho @ Z
        self._score_z = torch.cat([torch.stack([D, -B, -B, A], 1), adj_mu, mu, ones[:, None]], 1)  # [K, 9]

    # ------------------------------------------------------------------ core
    def __len__(self) -> int:
        return self.weights.shape[0]

    def _prepare(self, x: Tensor, sigma, cond) -> tuple[Tensor, Tensor, Tensor | None]:
        x = check_points(x, 2, "x")
        n = x.shape[0]
        s = as_sigma(sigma, n, device=x.device)
        c = as_cond(cond, n, self.num_classes, device=x.device)
        if x.abs().max() > X_LIMIT:
            raise ValueError(f"x lies outside the mixture's finite range |x| <= {X_LIMIT:g}: max |x| = "
                             f"{x.abs().max().item():g} (a limit of floating point, see toydiff.distributions: "
                             f"float64 rounding of x in D, float32 log-densities)")
        if s.max() > SIGMA_LIMIT:
            raise ValueError(f"sigma lies outside the mixture's finite range 0 <= sigma <= {SIGMA_LIMIT:g}: "
                             f"got {s.max().item():g} (a limit of floating point, see toydiff.distributions: "
                             f"float64 rounding of x in D, float32 log-densities)")
        return x, s, c

    def _prior(self, cond) -> Tensor:
        """The prior weights [K] (the user's component order) of p(x) (cond None / -1) or p(x | cond)."""
        c = as_cond(cond, 1, self.num_classes)
        return self._logw_table[-1 if c is None or int(c[0]) < 0 else int(c[0])].exp()

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: Tensor, sigma=0.0, cond=None) -> Tensor:
        """Normalized log p(x | c; sigma) [N] of the mixture convolved with N(0, sigma^2 I) (c = -1/None: p(x; sigma))."""
        x, s, c = self._prepare(x, sigma, cond)
        xd, s2 = x.double(), s.double() ** 2
        out, cache, feats = torch.empty(x.shape[0], dtype=torch.float64, device=x.device), {}, features(xd)
        for rows, cols, logw, uniform in blocks(self, x.shape[0], s2, c):
            out[rows] = logsumexp_(block_logits(self, feats[rows], s2[rows], cols, logw, uniform, cache)[0])
        return out.to(x.dtype)

    def score(self, x: Tensor, sigma, cond=None) -> Tensor:
        """Exact score grad_x log p(x | c; sigma) [N, 2] = sum_k r_k (-S_k^-1 (x - mu_k)), r = responsibilities."""
        x, s, c = self._prepare(x, sigma, cond)
        return self._score(x, s, c).to(x.dtype)

    def _score(self, x: Tensor, s: Tensor, c: Tensor | None) -> Tensor:
        xd, s2 = x.double(), s.double() ** 2
        out, cache, feats = torch.empty_like(xd), {}, features(xd)
        for rows, cols, logw, uniform in blocks(self, x.shape[0], s2, c):
            xs, s2s = xd[rows], s2[rows]
            logits, det = block_logits(self, feats[rows], s2s, cols, logw, uniform, cache)
            e = shifted_exp_(logits, logits.amax(1, keepdim=True))  # r_k up to a factor per point
            z = self._score_z[cols].to(x.device)
            if uniform is not None:                                               # [Z / det S | 1]: sum_k r_k too
                key = ("z", uniform, cols.start, cols.stop)
                if key not in cache:                                              # stored as [10, k]: Z'^T e^T
                    cache[key] = torch.cat([z / det[:, None], torch.ones_like(det)[:, None]], 1).T.contiguous()
                p = (cache[key] @ e.T).T                                          # (twice as fast as e @ Z')
                p = p[:, :9] / p[:, 9:]                                            # sum_k r_k / det S_k Z_k
            else:
                total = e.sum(1, keepdim=True)
                p = (z.T.contiguous() @ (e / det if e.requires_grad else e.div_(det)).T).T / total
            m = p[:, :4].reshape(-1, 2, 2)
            adj_r = (m @ xs[:, :, None])[:, :, 0] - p[:, 4:6] + s2s[:, None] * (p[:, 8:9] * xs - p[:, 6:8])
            out[rows] = -adj_r                                                    # -sum_k r_k S_k^-1 (x - mu_k)
        return out                                                                # float64

    def denoise(self, x: Tensor, sigma, cond=None) -> Tensor:
        """Exact posterior mean E[x0 | x; sigma, c] [N, 2] = x + sigma^2 s(x | c; sigma) (Tweedie's formula)."""
        x, s, c = self._prepare(x, sigma, cond)
        return (x.double() + (s.double() ** 2)[:, None] * self._score(x, s, c)).to(x.dtype)

    __call__ = denoise

    def component_denoise(self, x: Tensor, sigma, k: Tensor) -> Tensor:
        """E[x0 | x, k; sigma] [N, 2] = mu_k + C_k (C_k + s^2 I)^-1 (x - mu_k): the posterior mean given that x0 came
        from component k[i] (int64 [N]). Averaged over k ~ p(k | x) it is `denoise`: an unbiased training target
        with the within-component noise integrated out (Rao-Blackwellized denoising score matching)."""
        x, s, _ = self._prepare(x, sigma, None)
        if not isinstance(k, Tensor) or k.dtype != torch.long or k.shape != x.shape[:1] \
                or (k < 0).any() or (k >= len(self)).any():
            raise ValueError(f"k must be an int64 tensor [{x.shape[0]}] of component indices in [0, {len(self)})")
        return component_mean(x, s.double() ** 2, self.covs.index_select(0, k), self.means.index_select(0, k)
                              ).to(x.dtype)

    def class_posterior(self, x: Tensor, sigma) -> Tensor:
        """Exact p(c | x; sigma) [N, C]: the components' responsibilities summed per class (differentiable in x)."""
        return self.class_log_posterior(x, sigma).exp()

    def class_log_posterior(self, x: Tensor, sigma) -> Tensor:
        """Exact log p(c | x; sigma) [N, C] = log W_c p(x | c; sigma) - log p(x; sigma), all as log-sum-exps."""
        x, s, _ = self._prepare(x, sigma, None)
        joint = self._class_joint(x, s)
        return (joint - torch.logsumexp(joint, dim=1, keepdim=True)).to(x.dtype)

    def class_log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """Exact log p(x | c; sigma) [N, C] for every class c at once (one pass over the components)."""
        x, s, _ = self._prepare(x, sigma, None)
        return (self._class_joint(x, s) - self._log_class_mass.to(x.device)).to(x.dtype)

    def _class_joint(self, x: Tensor, s: Tensor) -> Tensor:
        """log W_c p(x | c; sigma) = log sum_{k in c} w_k N_k  [N, C], float64: one log-sum-exp per class over
        its (contiguous) columns of the marginal logits."""
        xd, s2 = x.double(), s.double() ** 2
        out, cache, feats = torch.empty(x.shape[0], self.num_classes, dtype=torch.float64, device=x.device), {}, \
            features(xd)
        for rows, cols, logw, uniform in blocks(self, x.shape[0], s2, None):
            logits = block_logits(self, feats[rows], s2[rows], cols, logw, uniform, cache)[0]
            for c, class_cols in enumerate(self._cols):
                out[rows, c] = logsumexp_(logits[:, class_cols])
        return out

    def sample(self, n: int, cond=None, sigma=0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, components: bool = False) -> tuple[Tensor, ...]:
        """Exact samples (x [n, 2], y [n]) of p(x | c; sigma): pick a component, then mu + L z (+ sigma * noise).

        `cond` is an int, an int64 tensor [n] (-1 = marginal) or None (marginal); y holds each sample's class.
        components=True: (x, y, k) with k [n] each sample's component index (the same draws).
        """
        n = check_positive_int(n, "n")
        c = as_cond(cond, n, self.num_classes)
        s = as_sigma(sigma, n)
        if c is None:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:                                                                     # one draw per distinct label
            k = torch.empty(n, dtype=torch.long)
            for label in c.unique().tolist():
                rows = (c == label).nonzero().squeeze(1)
                probs = self._logw_table[label if label >= 0 else self.num_classes].exp()
                k[rows] = torch.multinomial(probs, rows.numel(), replacement=True, generator=generator)
        # Cholesky of [[a, b], [b, d]]: L = [[sqrt a, 0], [b / sqrt a, sqrt(d - b^2 / a)]]
        cov = self.covs[k]
        l00 = cov[:, 0, 0].sqrt()
        l10 = cov[:, 0, 1] / l00
        l11 = (cov[:, 1, 1] - l10 ** 2).sqrt()
        z = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.stack([l00 * z[:, 0], l10 * z[:, 0] + l11 * z[:, 1]], 1) + s[:, None] * z[:, 2:]
        return (x.to(dtype), self.labels[k].clone()) + ((k,) if components else ())

    # ------------------------------------------------------------------ summaries
    def mean(self, cond: int | None = None) -> Tensor:
        """Mean [2] of p(x) or p(x | cond)."""
        return self._prior(cond) @ self.means

    def covariance(self, cond: int | None = None) -> Tensor:
        """Covariance [2, 2] of p(x) or p(x | cond): sum w_k (C_k + mu_k mu_k^T) - m m^T."""
        w = self._prior(cond)
        m = w @ self.means
        second = (w[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def __repr__(self) -> str:
        return f"GaussianMixture(components={len(self)}, num_classes={self.num_classes})"


def fingerprint(dist: GaussianMixture) -> str:
    """A digest of the mixture's parameters (weights, means, covariances, labels): two equal mixtures (every figure
    builds its own datasets.tree()) share what is cached about them (outlier thresholds, exact bin masses)."""
    h = hashlib.sha1()
    for t in (dist.weights, dist.means, dist.covs, dist.labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
