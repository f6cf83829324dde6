"""Guidance modifiers that reshape the update of another method (`on=`): APG (Sadat et al. 2024) and CFG++
(Chung et al. 2024)."""
from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor

from ...infra.validation import check_nonnegative
from .base import Guidance, Weight
from .methods import CFG, AutoGuidance

__all__ = ["APG", "CFGpp"]


def _check_base(on: Guidance | None, owner: str, allowed: tuple[type, ...] = (Guidance,)) -> Guidance:
    if on is None:
        return CFG()
    if not isinstance(on, allowed) or isinstance(on, (APG, CFGpp)):
        names = " or ".join(t.__name__ for t in allowed)
        raise TypeError(f"on must be a {names} instance supplying the branches of {owner}, got {type(on).__name__}")
    return on


class _OnBase(Guidance):
    """A method applied to the branches of another (`self.on`): D_1 and D_1 - D_0 come from it, and a run's start
    (`start_run(sigmas)`) reaches it. APG, CFG-Zero* and LinearCFG build on it."""

    on: Guidance

    def start_run(self, sigmas: Tensor | None) -> _OnBase:
        return self._replace(on=self.on.start_run(sigmas))

    def unguided(self, denoiser, x, sigma, cond):
        return self.on.unguided(denoiser, x, sigma, cond)

    def branches(self, denoiser, x, sigma, cond):
        return self.on.branches(denoiser, x, sigma, cond)


class APG(_OnBase):
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
    causes oversaturation. The momentum is the state of one sampling run (one update per denoiser evaluation, so
    Heun updates it twice a step): it lives in the copy `start_run(sigmas)` returns (toydiff's samplers call it
    before their first step), never in this object, so no run sees another's. With momentum != 0, a call outside a
    run is refused: driving a guided denoiser with your own loop (k-diffusion, diffusers), use
    `toydiff.denoiser.start_run(guided_denoiser, sigmas)` once per run. (A rule "sigma rose, so a new run" would
    fire inside one run of a churning sampler: with EDM's stochastic Heun, gamma = 0.2, it cleared the momentum at
    14 of 15 steps, measured.)

    Differences from diffusers' `AdaptiveProjectedGuidance` (docs/CONVENTIONS.md): it defaults to eta = 1 and r = 15,
    works on the model output (eps / v), and guides from D_0: D_0 + w (m_orth + eta m_par), equal to this only at
    eta = 1.

    Args:
        w: guidance weight (1 = none) or a schedule w(sigma).
        on: the guidance method supplying (D_1, D_1 - D_0).
        eta: weight of the parallel component (>= 0).
        norm_threshold: r > 0 caps |m| (0 = no cap).
        momentum: beta in (-1, 1) (0 = off).
    """

    def __init__(self,
                 w: Weight = 1.0,
                 *,
                 on: Guidance | None = None,
                 eta: float = 0.0,
                 norm_threshold: float = 0.0,
                 momentum: float = 0.0,
                 **kwargs):
        super().__init__(w, **kwargs)
        self.on = _check_base(on, "APG")
        self.eta, self.norm_threshold = check_nonnegative(eta, "eta"), check_nonnegative(norm_threshold, "norm_threshold")
        if isinstance(momentum, bool) or not isinstance(momentum, Real) or not -1 < momentum < 1:
            raise ValueError(f"momentum must be a number in (-1, 1) (0 = off), got {momentum!r}")
        self.momentum = float(momentum)
        self._run: _Momentum | None = None                             # set on start_run's copy only

    def start_run(self, sigmas: Tensor | None) -> APG:
        return self._replace(on=self.on.start_run(sigmas), _run=_Momentum())

    def combine(self, d1, delta, w, x, sigma):
        if self.momentum and self._run is None:
            raise ValueError(f"APG with momentum = {self.momentum:g} keeps a running update per sampling run: sample "
                             "with toydiff.samplers.sample, or call toydiff.denoiser.start_run(denoiser, sigmas) "
                             "once per run of your own loop and call what it returns")
        m = self._run.step(delta, self.momentum) if self.momentum else delta    # m = dD + beta m_prev
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


class _Momentum:
    """APG's running update m of one sampling run (m_prev = 0 at its start)."""

    def __init__(self) -> None:
        self.m: Tensor | None = None

    def step(self, delta: Tensor, beta: float) -> Tensor:
        """m = dD + beta m_prev, stored as the next m_prev."""
        if self.m is not None and self.m.shape != delta.shape:
            raise ValueError(f"APG's run started with a batch of shape {tuple(self.m.shape)}, got "
                             f"{tuple(delta.shape)}: start a new run (toydiff.denoiser.start_run) for another batch")
        self.m = delta if self.m is None else delta + beta * self.m
        return self.m


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

    `__call__` returns D_lambda; `with_renoise` returns (D_lambda, D_0), which the guided denoiser offers as
    `denoise_with_renoise` and the `euler`, `ddim` and `ddpm` samplers use; the others refuse a CFG++ denoiser.
    Outside `interval`, (D_1, D_1) (plain conditional sampling).
    """

    def __init__(self, w: Weight = 0.5, *, on: Guidance | None = None, **kwargs):
        super().__init__(w, **kwargs)
        if not callable(self.w) and self.w > 1:
            raise ValueError(f"w (CFG++'s lambda) must lie in [0, 1], got {self.w}")
        self.on = _check_base(on, "CFGpp", (CFG, AutoGuidance))

    renoises = True

    def start_run(self, sigmas: Tensor | None) -> CFGpp:
        return self._replace(on=self.on.start_run(sigmas))

    def with_renoise(self, denoiser, x, sigma, cond=None):
        """(D_lambda, D_0) [N, ...] each: the guided prediction and the one whose noise re-noises."""
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
