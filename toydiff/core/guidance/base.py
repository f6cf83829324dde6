"""The guidance machinery: weights, the guidance interval, CFG rescale, and `guided(denoiser, guidance)`.

Weight convention: D_w = D_0 + w (D_1 - D_0) = D_1 + (w - 1)(D_1 - D_0), w = 1 is no guidance (see toydiff.guidance).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Union

import torch
from torch import Tensor

from ..denoiser import Denoiser, renoise_of, start_run
from ...infra.validation import as_cond, as_sigma, check_batch, check_nonnegative, sigma_like

__all__ = ["Weight", "Guidance", "GuidedDenoiser", "guided", "to_ho_salimans", "from_ho_salimans"]

Weight = Union[float, Callable[[Tensor], Union[Tensor, float]]]


def to_ho_salimans(w: float) -> float:
    """Our weight (1 = no guidance) as Ho & Salimans' (0 = no guidance): w_HS = w - 1."""
    return check_nonnegative(w, "w") - 1.0


def from_ho_salimans(w_hs: float) -> float:
    """Ho & Salimans' weight (0 = no guidance, Eq. 6 of arXiv 2207.12598) as ours: w = w_HS + 1."""
    w = float(w_hs) + 1.0
    check_nonnegative(w, "w_hs + 1")
    return w


def _scale(t: Tensor) -> Tensor:
    """CFG rescale's per-sample scale, shaped to broadcast against t: for images (t.ndim > 2) Lin et al.'s standard
    deviation over all non-batch elements; for points [N, d] the RMS |t| / sqrt(d), because the std of a point's
    coordinates (|x_1 - x_2| / 2 in 2D) depends on the orientation of the axes (docs/CONVENTIONS.md, section 2)."""
    if t.ndim == 2:
        return t.square().mean(1, keepdim=True).sqrt()
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
            Sample Steps are Flawed", Eq. 15-16) applied to the denoised output D (diffusers' `guidance_rescale`
            acts on eps or v instead, so the same phi gives different results, docs/CONVENTIONS.md):
            D_r = D_w * s(D_1) / s(D_w);  D = phi D_r + (1 - phi) D_w, with s the per-sample std over all
            pixels for images and the RMS |D| / sqrt(d) for points [N, d] (the std of two coordinates is not
            rotation-invariant: a 45-degree rotation changed it by up to 120, measured).
    """

    def __init__(self, w: Weight = 1.0, *, interval: tuple[float, float] | None = None, rescale: float = 0.0):
        self.w = w if callable(w) else check_nonnegative(w, "w")
        if interval is not None:
            if not isinstance(interval, (tuple, list)) or len(interval) != 2:
                raise ValueError(f"interval must be a pair (sigma_lo, sigma_hi), got {interval!r}")
            lo, hi = check_nonnegative(interval[0], "interval"), check_nonnegative(interval[1], "interval", allow_inf=True)
            if not lo < hi:
                raise ValueError(f"interval must satisfy sigma_lo < sigma_hi, got {interval!r}")
            interval = (lo, hi)
        self.interval = interval
        self.rescale = check_nonnegative(rescale, "rescale")
        if self.rescale > 1:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")

    @classmethod
    def from_weight(cls, w: Weight, **kwargs: Any) -> Guidance:
        """The method at weight w (1 = none, the convention above) with its other arguments: how the registry
        builds a recipe (toydiff.guidance.make). A method whose own parameter is not w converts it."""
        return cls(w=w, **kwargs)

    # -- to implement ----------------------------------------------------------------------------------
    def branches(self, denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(D_1, D_1 - D_0): the unguided prediction and the guidance direction, both shaped like x."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------------------
    # True where a sampler must re-noise with a second prediction (CFG++): the guidance then offers
    # `with_renoise(denoiser, x, sigma, cond) -> (D_guided, D_renoise)` and `guided()` turns it into the denoiser
    # extension `denoise_with_renoise(x, sigma, cond)` (toydiff.denoiser)
    renoises: bool = False

    def start_run(self, sigmas: Tensor | None) -> Guidance:
        """This guidance for one sampling run along `sigmas` (the sampler's levels, decreasing, ending in 0; None where
        unknown): a copy that holds the run's state (APG's momentum, the schedule of CFGZeroStar and LinearCFG), with
        the models and base methods it calls started too (a guide's `start_run`); `self` keeps no state. A method
        without state and without models returns itself."""
        return self

    def _replace(self, **fields: Any) -> Guidance:
        """A shallow copy with `fields` replaced (the per-run copies of `start_run`)."""
        run = copy.copy(self)
        run.__dict__.update(fields)
        return run

    def active(self, sigma: Tensor) -> Tensor:
        """Where guidance is on [N] (bool): sigma_lo < sigma <= sigma_hi (Kynkaanniemi et al. 2024, Eq. 2), or everywhere."""
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma > lo) & (sigma <= hi)

    def weight(self, sigma: Tensor) -> Tensor:
        """The effective weight per sample [N]: the schedule, set to 1 outside the guidance interval."""
        if callable(self.w):
            w = torch.as_tensor(self.w(sigma), dtype=sigma.dtype, device=sigma.device)
            if w.shape not in ((), (1,), sigma.shape):
                raise ValueError(f"the weight schedule w(sigma) must return a number or a tensor shaped like sigma "
                                 f"{tuple(sigma.shape)}, got shape {tuple(w.shape)}")
            w = w.expand_as(sigma)
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError("the weight schedule w(sigma) must return finite values >= 0")
        else:                                                  # via float64: a w beyond float32's range becomes inf
            w = torch.full_like(sigma, self.w, dtype=torch.float64).to(sigma.dtype)
            if not torch.isfinite(w).all():
                raise ValueError(f"w = {self.w:g} does not fit in {sigma.dtype} (max {torch.finfo(sigma.dtype).max:g})")
        return torch.where(self.active(sigma), w, torch.ones_like(w))

    def combine(self, d1: Tensor, delta: Tensor, w: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """D_w = D_1 + (w - 1)(D_1 - D_0), then the optional rescale. Subclasses (APG) may override."""
        out = d1 + sigma_like(w - 1, d1) * delta
        if self.rescale > 0:
            s_out = _scale(out)
            ratio = torch.where(s_out > 0, _scale(d1) / s_out.clamp_min(1e-12), 1.0)  # D_w without scale: kept
            out = self.rescale * out * ratio + (1 - self.rescale) * out
        return out

    def unguided(self, denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """D_1 alone: what this method returns where the weight is 1 (cheaper than both branches)."""
        return denoiser(x, sigma, cond)

    def _args(self, x: Tensor, sigma, cond) -> tuple[Tensor, Tensor, Tensor | None]:
        x = check_batch(x, "x")
        return x, as_sigma(sigma, x.shape[0], device=x.device, dtype=x.dtype), as_cond(cond, x.shape[0], None,
                                                                                         device=x.device)

    def finish(self, out: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """The guided D as returned, from D_w (or D_1 where the weight is 1); CFGZeroStar's zero-init overrides it."""
        return out

    def __call__(self, denoiser: Denoiser, x: Tensor, sigma, cond=None) -> Tensor:
        """D_guided [N, ...]. Where `denoiser` returns K predictions from one evaluation stacked as [K, N, ...] (the
        two outputs of a re-noising denoiser, `GuidedDenoiser`), each is guided alike and the result is
        [K, N, ...]: the models are evaluated once and `combine` runs once over the K N rows."""
        x, s, cond = self._args(x, sigma, cond)
        w = self.weight(s)
        if bool((w == 1).all()):
            return self.finish(self.unguided(denoiser, x, s, cond), x, s)
        # a guide of another dtype (float64 beside a float32 model) must not change the output's: x's dtype
        d1, delta = torch.broadcast_tensors(*(t.to(x.dtype) for t in self.branches(denoiser, x, s, cond)))
        k = d1.numel() // x.numel()                                          # predictions per row: 1, or K stacked
        rows = lambda t: t.reshape(k * x.shape[0], *x.shape[1:])              # [K, N, ...] -> [K N, ...]
        out = self.combine(rows(d1), rows(delta), w.repeat(k), rows(x.expand_as(d1)), s.repeat(k))
        if not torch.isfinite(out).all():
            for what, t in (("the main branch D_1", d1), ("the guidance direction D_1 - D_0 (the unconditional "
                                                          "branch or the guide D_0, or their difference)", delta)):
                if not torch.isfinite(t).all():
                    raise ValueError(f"{type(self).__name__}: {what} is inf/NaN (before the weight w = {self.w!r} "
                                     f"is applied)")
            raise ValueError(f"the guided output overflowed to inf/NaN in {out.dtype}: w = {self.w!r} is too large")
        return self.finish(out.reshape(d1.shape), x, s)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("interval", "rescale") if getattr(self, k))
        return f"{type(self).__name__}(w={self.w!r}{extra})"



class GuidedDenoiser:
    """A denoiser D(x, sigma, cond) that applies `guidance` to `denoiser` on every call.

    It carries the contract's extensions through (toydiff.denoiser): `start_run(sigmas)` returns the guided denoiser
    of one run (guidance and wrapped denoiser started, this object unchanged); `denoise_with_renoise` is offered where
    a sampler must re-noise: the guidance's own (CFG++), or, around a denoiser that re-noises (a CFG++ denoiser guided
    again), the guidance applied to both of its outputs alike, from ONE evaluation of the wrapped denoiser and one
    `combine` over both (APG's momentum advances once per evaluation). Two nested re-noising guidances are refused.
    """

    def __init__(self, denoiser: Denoiser, guidance: Guidance):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable D(x, sigma, cond), got {type(denoiser).__name__}")
        if not isinstance(guidance, Guidance):
            raise TypeError(f"guidance must be a toydiff.guidance.Guidance, got {type(guidance).__name__}")
        inner = renoise_of(denoiser)
        if inner is not None and guidance.renoises:
            raise ValueError(f"cannot apply {guidance!r} to {denoiser!r}: both re-noise with their own branch (CFG++)")
        self.denoiser, self.guidance = denoiser, guidance
        self.denoise_with_renoise: Callable[..., tuple[Tensor, Tensor]] | None = (
            self._own_renoise if guidance.renoises else self._inner_renoise if inner is not None else None)

    def __call__(self, x: Tensor, sigma, cond=None) -> Tensor:
        return self.guidance(self.denoiser, x, sigma, cond)

    def _own_renoise(self, x: Tensor, sigma, cond=None) -> tuple[Tensor, Tensor]:
        """(D_guided, D_renoise) of the guidance (CFG++: D_lambda and the unguided D_0)."""
        return self.guidance.with_renoise(self.denoiser, x, sigma, cond)

    def _inner_renoise(self, x: Tensor, sigma, cond=None) -> tuple[Tensor, Tensor]:
        """The guidance applied to each output of the wrapped denoiser's (D_guided, D_renoise): the wrapped
        denoiser's two outputs of one evaluation stacked [2, M, ...], guided in one pass."""
        inner = renoise_of(self.denoiser)
        d, d_renoise = self.guidance(lambda *a: torch.stack(inner(*a)), x, sigma, cond)
        return d, d_renoise

    def start_run(self, sigmas: Tensor | None) -> GuidedDenoiser:
        """The guided denoiser of one run along `sigmas`: the guidance's and the wrapped denoiser's `start_run`."""
        return GuidedDenoiser(start_run(self.denoiser, sigmas), self.guidance.start_run(sigmas))

    def __repr__(self) -> str:
        return f"guided({self.denoiser!r}, {self.guidance!r})"


def guided(denoiser: Denoiser, guidance: Guidance) -> GuidedDenoiser:
    """Wrap a denoiser with a guidance method; the result obeys the denoiser contract (and keeps its extensions)."""
    return GuidedDenoiser(denoiser, guidance)
