"""The guidance methods: each supplies the unguided prediction D_1 and the direction D_1 - D_0 (toydiff.guidance)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser, pair_of, start_run
from ...infra.validation import check_nonnegative, sigma_like
from .base import Guidance, Weight

__all__ = ["NoGuidance", "CFG", "AutoGuidance", "ScoreScaling", "ClassifierGuidance"]


class NoGuidance(Guidance):
    """The model as it is: D(x; sigma, c). Its weight is 1, so an interval or rescale changes nothing."""

    def __init__(self, **kwargs):
        super().__init__(1.0, **kwargs)

    @classmethod
    def from_weight(cls, w: Weight, **kwargs) -> NoGuidance:
        """NoGuidance, whose w is 1 (the registry, toydiff.guidance.weight, refuses any other for "none")."""
        return cls(**kwargs)

    def branches(self, denoiser, x, sigma, cond):
        d = denoiser(x, sigma, cond)
        return d, torch.zeros_like(d)


class CFG(Guidance):
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6, with w = their w + 1):
    D_1 = D(x; sigma, c), D_0 = D(x; sigma, null), both from ONE batched call of the same network.

    A denoiser that exposes `denoise_pair(x, sigma, cond) -> (D(x|c), D(x|null))` (a twin-head network)
    is called through it instead. Rows whose label is -1 get the unconditional prediction unchanged.
    """

    def branches(self, denoiser, x, sigma, cond):
        if cond is None:
            raise ValueError("CFG needs class labels: cond must be an int64 tensor [N], got None")
        pair = pair_of(denoiser)
        if pair is not None:
            d1, d0 = pair(x, sigma, cond)
        else:
            # [x; x] with labels [c; null]: one forward for both branches
            both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, torch.full_like(cond, -1)]))
            d1, d0 = both.chunk(2, dim=both.ndim - x.ndim)                    # the batch dim ([K, 2N, ...] stacked)
        return d1, d1 - d0


class AutoGuidance(Guidance):
    """Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", Eq. 2):
    D_1 = the main model, D_0 = `guide`, a weaker model (smaller, shorter-trained or degraded) called with
    the SAME condition. Works for unconditional models (cond None) too; a guide equal to the main model is a no-op.
    """

    def __init__(self, guide: Denoiser, w: Weight = 1.0, **kwargs):
        if not callable(guide):
            raise TypeError(f"guide must be a denoiser callable D(x, sigma, cond), got {type(guide).__name__}")
        super().__init__(w, **kwargs)
        self.guide = guide

    def start_run(self, sigmas: Tensor | None) -> AutoGuidance:
        return self._replace(guide=start_run(self.guide, sigmas))

    def branches(self, denoiser, x, sigma, cond):
        d1 = denoiser(x, sigma, cond)
        try:
            d0 = self.guide(x, sigma, cond)
        except (ValueError, TypeError) as e:           # e.g. a guide with fewer classes than the main model
            raise type(e)(f"the guide {type(self.guide).__name__} refused the main model's input: {e}") from e
        if d0.shape != d1.shape[d1.ndim - x.ndim:]:
            raise ValueError(f"guide returned shape {tuple(d0.shape)}, the main model {tuple(d1.shape)}: "
                             "the guide must be a model of the same data")
        return d1, d1 - d0


class ScoreScaling(Guidance):
    """Naive score scaling (a "low temperature" truncation): s_w = w s(x; sigma, c), i.e. D_0 = x (zero score),
    D_w = x + w (D - x). Karras et al. 2024 (Sec. 3) contrast it with CFG and autoguidance: it sharpens
    every mode alike and empties the low-density branches instead of pulling outliers in."""

    def branches(self, denoiser, x, sigma, cond):
        d1 = denoiser(x, sigma, cond)
        return d1, d1 - x


class ClassifierGuidance(Guidance):
    """Classifier guidance (Dhariwal & Nichol 2021, Sec. 4; Song et al. 2021):
    D = D_base + scale * sigma^2 grad_x log p(c | x; sigma), i.e. s_w = s_base + scale grad log p(c|x).

    Args:
        classifier: a noise-aware classifier (x [N, ...], sigma [N]) -> log p(c | x; sigma) [N, C],
            differentiable in x; the exact mixture's `class_log_posterior` is a perfect one.
        scale: the classifier scale (>= 0; 0 = no guidance), or a callable sigma [N] -> scale. Internally w = scale + 1.
        unconditional: guide the unconditional prediction D(x; sigma, null) (the setting of Dhariwal & Nichol)
            instead of the conditional one. By Bayes' rule, grad log p(c|x) = s(x|c) - s(x), so with the exact
            posterior this equals CFG with w = scale (unconditional base) or w = scale + 1 (conditional base).
    """

    def __init__(self, classifier: Callable[[Tensor, Tensor], Tensor], scale: Weight = 1.0, *,
                 unconditional: bool = False, **kwargs):
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable (x, sigma) -> log p(c|x) [N, C], got {type(classifier).__name__}")
        super().__init__(_plus_one(scale) if callable(scale) else check_nonnegative(scale, "scale") + 1.0, **kwargs)
        self.classifier, self.unconditional = classifier, unconditional

    @classmethod
    def from_weight(cls, w: Weight, classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
                    **kwargs) -> ClassifierGuidance:
        """Classifier guidance at weight w: scale = w - 1 (for a schedule, w(sigma) - 1)."""
        return cls(classifier, (lambda sigma: w(sigma) - 1) if callable(w) else w - 1, **kwargs)

    def unguided(self, denoiser, x, sigma, cond):
        return denoiser(x, sigma, self._base_cond(cond))

    def _base_cond(self, cond: Tensor | None) -> Tensor | None:
        if cond is None:
            raise ValueError("ClassifierGuidance needs class labels: cond must be an int64 tensor [N], got None")
        return torch.full_like(cond, -1) if self.unconditional else cond

    def branches(self, denoiser, x, sigma, cond):
        d1 = self.unguided(denoiser, x, sigma, cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = self.classifier(xg, sigma)
            if logp.ndim != 2 or logp.shape[0] != x.shape[0] or cond.max() >= logp.shape[1]:
                raise ValueError(f"classifier must return log-probabilities [N, C] covering the labels, "
                                 f"got shape {tuple(logp.shape)}")
            picked = torch.where(cond >= 0, logp.gather(1, cond.clamp_min(0)[:, None]).squeeze(1), 0)  # null: none
            if not torch.isfinite(picked).all():
                raise ValueError(f"classifier returned inf/NaN log-probabilities for the labels of rows "
                                 f"{torch.nonzero(~torch.isfinite(picked))[:5, 0].tolist()} (first 5 shown)")
            (grad,) = torch.autograd.grad(picked.sum(), xg)
            if not torch.isfinite(grad).all():
                raise ValueError("the classifier's gradient grad_x log p(c | x) is inf/NaN")
        return d1, sigma_like(sigma, x) ** 2 * grad.to(x.dtype)


def _plus_one(scale: Callable[[Tensor], Tensor | float]) -> Callable[[Tensor], Tensor]:
    """The weight schedule w(sigma) = scale(sigma) + 1 of a classifier-scale schedule, refusing negative scales."""
    def w(sigma: Tensor) -> Tensor:
        value = torch.as_tensor(scale(sigma), dtype=sigma.dtype, device=sigma.device)
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError("the classifier scale schedule scale(sigma) must return finite values >= 0")
        return value + 1
    return w
