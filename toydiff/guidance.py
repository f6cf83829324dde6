"""Guidance: turn denoisers into a guided denoiser. Shape-agnostic: [N, 2] points and [N, 3, H, W] images alike.

Weight convention (Karras et al. 2024; EDM2; diffusers' `guidance_scale`): w = 1 is no guidance and

    D_w(x; sigma, c) = D_0 + w (D_1 - D_0) = D_1 + (w - 1) (D_1 - D_0)

where D_1 is the model being guided and D_0 the "negative" prediction it is pushed away from. In score
terms, s_w = s_0 + w (s_1 - s_0), since D = x + sigma^2 s. Ho & Salimans (2022) write the same rule as
(1 + w') D_1 - w' D_0, so their w' = w - 1 (`to_ho_salimans` / `from_ho_salimans`).

Every method below supplies the unguided prediction D_1 and the guidance direction D_1 - D_0; the shared
machinery adds a per-sigma weight schedule (`w` may be a callable of sigma), a guidance interval
(Kynkaanniemi et al. 2024) and CFG rescale (Lin et al. 2023). `APG` (Sadat et al. 2024) and `CFGpp`
(Chung et al. 2024) reshape the update of any of them (`on=`). `guided(denoiser, guidance)` returns an
object that obeys the denoiser contract, so samplers never know about guidance; two optional methods
extend the contract for the samplers: `reset()` (clear per-run state, APG momentum) and
`denoise_with_renoise(x, sigma, cond) -> (D, D_renoise)` (CFG++ re-noises with the unguided branch).
"""
from __future__ import annotations

import math
from typing import Callable, Union

import torch
from torch import Tensor

from .validation import as_cond, as_sigma, check_batch, check_weight, sigma_like

__all__ = [
    "Denoiser",
    "Guidance",
    "NoGuidance",
    "CFG",
    "AutoGuidance",
    "ClassifierGuidance",
    "ScoreScaling",
    "APG",
    "CFGpp",
    "GuidedDenoiser",
    "guided",
    "to_ho_salimans",
    "from_ho_salimans",
]

Denoiser = Callable[[Tensor, Union[Tensor, float], Union[Tensor, None]], Tensor]
Weight = Union[float, Callable[[Tensor], Union[Tensor, float]]]


def to_ho_salimans(w: float) -> float:
    """Our weight (1 = no guidance) as Ho & Salimans' (0 = no guidance): w_HS = w - 1."""
    return check_weight(w, "w") - 1.0


def from_ho_salimans(w_hs: float) -> float:
    """Ho & Salimans' weight (0 = no guidance, Eq. 6 of arXiv 2207.12598) as ours: w = w_HS + 1."""
    w = float(w_hs) + 1.0
    check_weight(w, "w_hs + 1")
    return w


def _std(t: Tensor) -> Tensor:
    """Per-sample standard deviation over all non-batch dimensions, shaped to broadcast against t."""
    return t.flatten(1).std(dim=1, unbiased=False).reshape(-1, *([1] * (t.ndim - 1)))


class Guidance:
    """Base class. Subclasses implement `branches(denoiser, x, sigma, cond) -> (D_1, D_1 - D_0)`.

    Args:
        w: guidance weight, 1 = none (see the module docstring), or a callable sigma [N] -> weight [N]
            for a per-step schedule.
        interval: (sigma_lo, sigma_hi): guidance is on only where sigma_lo < sigma <= sigma_hi and the
            weight is 1 elsewhere (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
            Improves Sample and Distribution Quality", Eq. 2). Given in sigma, not in steps.
        rescale: phi in [0, 1], CFG rescale of Lin et al. 2023 ("Common Diffusion Noise Schedules and
            Sample Steps are Flawed", Eq. 15-16) applied to the denoised output:
            D_r = D_w * std(D_1) / std(D_w);  D = phi D_r + (1 - phi) D_w.
    """

    def __init__(self, w: Weight = 1.0, *, interval: tuple[float, float] | None = None, rescale: float = 0.0):
        self.w = w if callable(w) else check_weight(w, "w")
        if interval is not None:
            if not isinstance(interval, (tuple, list)) or len(interval) != 2:
                raise ValueError(f"interval must be a pair (sigma_lo, sigma_hi), got {interval!r}")
            lo, hi = (check_weight(v, "interval") for v in interval)
            if not lo < hi:
                raise ValueError(f"interval must satisfy sigma_lo < sigma_hi, got {interval!r}")
            interval = (lo, hi)
        self.interval = interval
        self.rescale = check_weight(rescale, "rescale")
        if self.rescale > 1:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")

    # -- to implement ----------------------------------------------------------------------------------
    def branches(self, denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(D_1, D_1 - D_0): the unguided prediction and the guidance direction, both shaped like x."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------------------
    renoise = False  # True where the sampler must re-noise with D_renoise (CFG++)

    def reset(self) -> None:
        """Clear per-sampling-run state (none here; APG's momentum). Samplers call it before the first step."""

    def active(self, sigma: Tensor) -> Tensor:
        """Where guidance is on [N] (bool): sigma_lo < sigma <= sigma_hi (Kynkaanniemi et al. 2024, Eq. 2), or everywhere."""
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma > lo) & (sigma <= hi)

    def weight(self, sigma: Tensor) -> Tensor:
        """The effective weight per sample [N]: the schedule, set to 1 outside the guidance interval."""
        if callable(self.w):
            w = torch.as_tensor(self.w(sigma), dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError("the weight schedule w(sigma) must return finite values >= 0")
        else:
            w = torch.full_like(sigma, self.w)
        return torch.where(self.active(sigma), w, torch.ones_like(w))

    def combine(self, d1: Tensor, delta: Tensor, w: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """D_w = D_1 + (w - 1)(D_1 - D_0), then the optional rescale. Subclasses (APG) may override."""
        out = d1 + sigma_like(w - 1, d1) * delta
        if self.rescale > 0:
            s_out = _std(out)
            ratio = torch.where(s_out > 0, _std(d1) / s_out.clamp_min(1e-12), 1.0)  # a constant D_w has no scale: kept
            out = self.rescale * out * ratio + (1 - self.rescale) * out
        return out

    def unguided(self, denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """D_1 alone: what this method returns where the weight is 1 (cheaper than both branches)."""
        return denoiser(x, sigma, cond)

    def _args(self, x: Tensor, sigma, cond) -> tuple[Tensor, Tensor, Tensor | None]:
        x = check_batch(x, "x")
        return x, as_sigma(sigma, x.shape[0], device=x.device, dtype=x.dtype), as_cond(cond, x.shape[0], None,
                                                                                         device=x.device)

    def with_renoise(self, denoiser: Denoiser, x: Tensor, sigma, cond=None) -> tuple[Tensor, Tensor]:
        """(D_guided, D_renoise): the denoised estimate and the one whose eps = (x - D)/sigma re-noises; the same here."""
        d = self(denoiser, x, sigma, cond)
        return d, d

    def __call__(self, denoiser: Denoiser, x: Tensor, sigma, cond=None) -> Tensor:
        x, s, cond = self._args(x, sigma, cond)
        w = self.weight(s)
        if bool((w == 1).all()):
            return self.unguided(denoiser, x, s, cond)
        d1, delta = self.branches(denoiser, x, s, cond)
        return self.combine(d1, delta, w, x, s)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("interval", "rescale") if getattr(self, k))
        return f"{type(self).__name__}(w={self.w!r}{extra})"


class NoGuidance(Guidance):
    """The model as it is: D(x; sigma, c)."""

    def __init__(self):
        super().__init__(1.0)

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
        if hasattr(denoiser, "denoise_pair"):
            d1, d0 = denoiser.denoise_pair(x, sigma, cond)
        else:
            # [x; x] with labels [c; null]: one forward for both branches
            both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, torch.full_like(cond, -1)]))
            d1, d0 = both.chunk(2)
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

    def branches(self, denoiser, x, sigma, cond):
        d1 = denoiser(x, sigma, cond)
        d0 = self.guide(x, sigma, cond)
        if d0.shape != d1.shape:
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
        super().__init__(_plus_one(scale) if callable(scale) else check_weight(scale, "scale") + 1.0, **kwargs)
        self.classifier, self.unconditional = classifier, unconditional

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
            picked = logp.gather(1, cond.clamp_min(0)[:, None]).squeeze(1) * (cond >= 0)  # no term for null rows
            (grad,) = torch.autograd.grad(picked.sum(), xg)
        return d1, sigma_like(sigma, x) ** 2 * grad.to(x.dtype)


def _plus_one(scale: Callable[[Tensor], Tensor | float]) -> Callable[[Tensor], Tensor]:
    """The weight schedule w(sigma) = scale(sigma) + 1 of a classifier-scale schedule, refusing negative scales."""
    def w(sigma: Tensor) -> Tensor:
        value = torch.as_tensor(scale(sigma), dtype=sigma.dtype, device=sigma.device)
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError("the classifier scale schedule scale(sigma) must return finite values >= 0")
        return value + 1
    return w


def _check_base(on: Guidance | None, owner: str, allowed: tuple[type, ...] = (Guidance,)) -> Guidance:
    if on is None:
        return CFG()
    if not isinstance(on, allowed) or isinstance(on, (APG, CFGpp)):
        names = " or ".join(t.__name__ for t in allowed)
        raise TypeError(f"on must be a {names} instance supplying the branches of {owner}, got {type(on).__name__}")
    return on


class APG(Guidance):
    """Adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
    Scales in Diffusion Models", arXiv 2410.02416: the parallel/orthogonal decomposition, the rescaling and the
    reverse momentum of its method section, as in its PyTorch listing), in denoiser (x0) space, on the branches
    of `on` (default CFG; AutoGuidance and ClassifierGuidance work alike; `on`'s own weight is ignored):

        dD   = D_1 - D_0
        m    = dD + beta m_prev                 reverse momentum (beta < 0; the paper uses e.g. -0.5), m_prev = 0 at start
        m    = m min(1, r / |m|)                rescaling: the update's norm capped at r (per sample)
        m_par = (<m, D_1> / |D_1|^2) D_1        projection on the conditional prediction (per sample,
        m_orth = m - m_par                      over all non-batch dims)
        D    = D_1 + (w - 1) (m_orth + eta m_par)

    eta = 1, r = inf, beta = 0 is CFG exactly; the paper's default drops the parallel part (eta = 0), which it finds
    causes oversaturation. The momentum is state across sampler steps (one update per denoiser evaluation, so Heun
    updates it twice a step). It is cleared by `reset()`, which the samplers call before their first step, and
    automatically whenever sigma rises above the previous call's or the batch shape changes (= a new run).

    Args:
        w: guidance weight (1 = none) or a schedule w(sigma).
        on: the guidance method supplying (D_1, D_1 - D_0).
        eta: weight of the parallel component (>= 0).
        norm_threshold: r > 0 caps |m| (0 = no cap).
        momentum: beta in (-1, 1) (0 = off).
    """

    def __init__(self, w: Weight = 1.0, *, on: Guidance | None = None, eta: float = 0.0, norm_threshold: float = 0.0,
                 momentum: float = 0.0, **kwargs):
        super().__init__(w, **kwargs)
        self.on = _check_base(on, "APG")
        self.eta, self.norm_threshold = check_weight(eta, "eta"), check_weight(norm_threshold, "norm_threshold")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not -1 < momentum < 1:
            raise ValueError(f"momentum must be a number in (-1, 1) (0 = off), got {momentum!r}")
        self.momentum = float(momentum)
        self.reset()

    def reset(self) -> None:
        self._running: Tensor | None = None
        self._last_sigma = math.inf

    def unguided(self, denoiser, x, sigma, cond):
        return self.on.unguided(denoiser, x, sigma, cond)

    def branches(self, denoiser, x, sigma, cond):
        return self.on.branches(denoiser, x, sigma, cond)

    def combine(self, d1, delta, w, x, sigma):
        top = float(sigma.max())
        if self._running is None or self._running.shape != delta.shape or top > self._last_sigma:
            self._running = torch.zeros_like(delta)                                     # a new sampling run
        self._last_sigma = top
        m = delta + self.momentum * self._running if self.momentum else delta
        self._running = m
        dims = tuple(range(1, m.ndim))
        if self.norm_threshold > 0:
            norm = torch.linalg.vector_norm(m, dim=dims, keepdim=True)
            m = m * (self.norm_threshold / norm.clamp_min(1e-30)).clamp(max=1.0)
        # projection in float64: m_par = <m, D_1> / |D_1|^2 D_1  (0 where D_1 = 0)
        m64, d64 = m.double(), d1.double()
        par = ((m64 * d64).sum(dims, keepdim=True) / d64.square().sum(dims, keepdim=True).clamp_min(1e-300)) * d64
        update = (m64 - par + self.eta * par).to(m.dtype)
        return super().combine(d1, update, w, x, sigma)

    def __repr__(self) -> str:
        return (f"APG(w={self.w!r}, on={self.on!r}, eta={self.eta}, norm_threshold={self.norm_threshold}, "
                f"momentum={self.momentum}, interval={self.interval!r}, rescale={self.rescale})")


class CFGpp(Guidance):
    """CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
    arXiv 2406.08070: its DDIM sampler with CFG++, and the Euler form) on the branches of `on` (CFG by default,
    or AutoGuidance):

        D_lambda = D_0 + lambda (D_1 - D_0),   lambda in [0, 1]            (Tweedie's estimate, as in CFG)
        x'       = D_lambda + sigma' (x - D_0) / sigma                       (DDIM eta = 0 / Euler in sigma space)

    i.e. the re-noising uses the UNGUIDED noise eps_0 = (x - D_0)/sigma instead of the guided one. Conventions:
    the paper's lambda is this class's `w` (D_0 + w (D_1 - D_0), as every class here) restricted to [0, 1]; it
    is NOT CFG's w: one Euler/DDIM step of CFG++ with lambda equals one of CFG with the step-dependent weight
    w_t = lambda sigma / (sigma - sigma') (subtract the two updates; hence the paper's small lambda act like large
    CFG scales, growing as the steps shrink); Ho & Salimans' weight of that step is w_t - 1. lambda = 0 samples
    unconditionally.

    `__call__` returns D_lambda; `with_renoise` returns (D_lambda, D_0), which the `euler`, `ddim` and `ddpm`
    samplers use; the others refuse a CFG++ denoiser. Outside `interval`, (D_1, D_1) (plain conditional sampling).
    """

    renoise = True

    def __init__(self, w: Weight = 0.5, *, on: Guidance | None = None, **kwargs):
        super().__init__(w, **kwargs)
        if not callable(self.w) and self.w > 1:
            raise ValueError(f"w (CFG++'s lambda) must lie in [0, 1], got {self.w}")
        self.on = _check_base(on, "CFGpp", (CFG, AutoGuidance))

    def with_renoise(self, denoiser, x, sigma, cond=None):
        x, s, cond = self._args(x, sigma, cond)
        on = self.active(s)
        if not bool(on.any()):
            d = self.on.unguided(denoiser, x, s, cond)
            return d, d
        w = self.weight(s)
        if (w > 1).any():
            raise ValueError(f"the schedule w(sigma) (CFG++'s lambda) must lie in [0, 1], got up to {w.max().item():g}")
        d1, delta = self.on.branches(denoiser, x, s, cond)
        guided = self.combine(d1, delta, w, x, s)                                    # D_1 + (lambda - 1) dD
        return guided, torch.where(on.reshape(-1, *([1] * (x.ndim - 1))), d1 - delta, d1)

    def __call__(self, denoiser, x, sigma, cond=None):
        return self.with_renoise(denoiser, x, sigma, cond)[0]

    def __repr__(self) -> str:
        return f"CFGpp(w={self.w!r}, on={self.on!r}, interval={self.interval!r}, rescale={self.rescale})"


class GuidedDenoiser:
    """A denoiser D(x, sigma, cond) that applies `guidance` to `denoiser` on every call."""

    def __init__(self, denoiser: Denoiser, guidance: Guidance):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable D(x, sigma, cond), got {type(denoiser).__name__}")
        if not isinstance(guidance, Guidance):
            raise TypeError(f"guidance must be a toydiff.guidance.Guidance, got {type(guidance).__name__}")
        self.denoiser, self.guidance = denoiser, guidance

    def __call__(self, x: Tensor, sigma, cond=None) -> Tensor:
        return self.guidance(self.denoiser, x, sigma, cond)

    @property
    def needs_renoise(self) -> bool:
        """True for CFG++: a sampler must re-noise with `denoise_with_renoise`'s second output."""
        return self.guidance.renoise

    def denoise_with_renoise(self, x: Tensor, sigma, cond=None) -> tuple[Tensor, Tensor]:
        """(D_guided, D_renoise): the sampler's x0 estimate and the prediction whose eps = (x - D)/sigma re-noises
        (the unguided D_0 for CFG++, D_guided otherwise)."""
        return self.guidance.with_renoise(self.denoiser, x, sigma, cond)

    def reset(self) -> None:
        """Clear the guidance's per-run state (APG momentum); samplers call this before the first step."""
        self.guidance.reset()

    def __repr__(self) -> str:
        return f"guided({self.denoiser!r}, {self.guidance!r})"


def guided(denoiser: Denoiser, guidance: Guidance) -> GuidedDenoiser:
    """Wrap a denoiser with a guidance method; the result obeys the denoiser contract."""
    return GuidedDenoiser(denoiser, guidance)
