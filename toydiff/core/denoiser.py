"""The denoiser contract, its optional extensions, EDM preconditioning and the parametrization wrappers.

Contract (k-diffusion's single denoiser, Karras et al. 2022, Sec. 2): ``D(x, sigma, cond) -> x0_hat`` with x [N, ...],
sigma a float / 0-d / [N] tensor (>= 0), cond int64 [N] in [-1, num_classes) (-1 = null) or None (all null).
Everything that samples, guides or measures takes a `Denoiser`; three optional extensions, each under ONE name,
let samplers and guidance use more of a denoiser that offers it (see docs/DESIGN.md):

    denoise_pair(x, sigma, cond) -> (D(x|c), D(x|null))   both CFG branches from one pass (twin-head nets)
    denoise_with_renoise(x, sigma, cond) -> (D, D_renoise) x0 from D, the sampler's noise eps = (x - D_renoise)/sigma
                                                           (CFG++); an attribute that is None means "not offered"
    start_run(sigmas) -> Denoiser                           a NEW callable for one sampling run along the levels
                                                            `sigmas`, holding that run's state (APG's momentum,
                                                            CFG-Zero*'s zero-init, LinearCFG's time); the object
                                                            itself keeps no state between runs

`pair_of`, `renoise_of` and `start_run` read them, so no other module looks attributes up by name.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

from ..infra.validation import as_cond, as_sigma, check_batch

__all__ = [
    "Denoiser", "SIGMA_TINY", "pair_of", "renoise_of", "start_run", "SeparateNull", "edm_preconditioning",
    "count_parameters",
    "EpsDenoiser", "ScoreDenoiser", "VDenoiser", "VPEpsDenoiser",
    "denoiser_to_eps", "denoiser_to_score", "denoiser_to_v", "denoiser_to_vp_eps",
]

Denoiser = Callable[[Tensor, Union[Tensor, float], Union[Tensor, None]], Tensor]

# sigma is clamped at SIGMA_TINY wherever it is divided by or logged (c_noise = log(s)/4, the energy head's
# sd/s); c_skip -> 1 and c_out -> 0 are evaluated at the true sigma, so D(x; 0) == x exactly.
SIGMA_TINY = 1e-6


def pair_of(denoiser: Any) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """The denoiser's `denoise_pair` (both CFG branches from one pass), or None."""
    fn = getattr(denoiser, "denoise_pair", None)
    return fn if callable(fn) else None


def renoise_of(denoiser: Any) -> Callable[[Tensor, Any, Any], tuple[Tensor, Tensor]] | None:
    """The denoiser's `denoise_with_renoise` (it must re-noise with a second prediction, CFG++), or None."""
    fn = getattr(denoiser, "denoise_with_renoise", None)
    return fn if callable(fn) else None


def start_run(denoiser: Any, sigmas: Tensor | None) -> Denoiser:
    """The denoiser for one sampling run along the levels `sigmas` (sigma_0 > ... > sigma_N = 0, float64; None where
    the caller has no schedule): `denoiser.start_run(sigmas)` where it has that method, else the denoiser itself.
    Samplers call it before their first step and use what it returns for the whole run, so per-run state (APG's
    momentum, the schedule of CFG-Zero* and LinearCFG) lives in the returned object and ends with the run."""
    fn = getattr(denoiser, "start_run", None)
    return fn(sigmas) if callable(fn) else denoiser


class SeparateNull:
    """One conditional denoiser from two models: `conditional` for labelled rows (c >= 0) and a SEPARATE
    `unconditional` model, called with cond None, for the null label (-1 / None). The setup of the 2D toy of
    Karras et al. 2024, where CFG's D_0 is a small unconditional model of all classes, not the null label of D_1.
    Offers `denoise_pair`, so CFG (and every recipe built on it) takes D_1 and D_0 from the two models."""

    def __init__(self, conditional: Denoiser, unconditional: Denoiser) -> None:
        for name, model in (("conditional", conditional), ("unconditional", unconditional)):
            if not callable(model):
                raise TypeError(f"{name} must be a denoiser callable D(x, sigma, cond), got {type(model).__name__}")
        self.conditional, self.unconditional = conditional, unconditional

    def denoise_pair(self, x: Tensor, sigma: Any, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(D(x|c), D(x|null)) [N, ...] each: the conditional model on cond, the unconditional one on None."""
        return self.conditional(x, sigma, cond), self.unconditional(x, sigma, None)

    def start_run(self, sigmas: Tensor | None) -> SeparateNull:
        """Both models started for one run (`start_run`)."""
        return SeparateNull(start_run(self.conditional, sigmas), start_run(self.unconditional, sigmas))

    def __call__(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        x = check_batch(x, "x")
        if cond is None:
            return self.unconditional(x, sigma, None)
        s = as_sigma(sigma, x.shape[0], device=x.device, dtype=x.dtype)
        cond = as_cond(cond, x.shape[0], None, device=x.device)          # an int or 0-d label: one per sample
        null = cond < 0
        if not bool(null.any()):                                         # every row labelled: no routing
            return self.conditional(x, s, cond).to(x.dtype)
        out = torch.empty_like(x)
        if (~null).any():
            out[~null] = self.conditional(x[~null], s[~null], cond[~null]).to(x.dtype)
        if null.any():
            out[null] = self.unconditional(x[null], s[null], None).to(x.dtype)
        return out


def edm_preconditioning(s: Tensor, sigma_data: float, sigma_floor: float = SIGMA_TINY
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1, elementwise in s (any shape):
    c_skip = sd^2/(s^2 + sd^2), c_out = s sd/sqrt(s^2 + sd^2), c_in = 1/sqrt(s^2 + sd^2), c_noise = log(s)/4,
    with s clamped at `sigma_floor` only inside the log, so c_skip = 1 and c_out = 0 at s = 0 (D(x; 0) = x).
    D(x; s, c) = c_skip x + c_out F(c_in x, c_noise, c): the network's input and target have unit variance."""
    sd2, s2 = sigma_data ** 2, s * s
    c_skip = sd2 / (s2 + sd2)
    c_out = s * sigma_data * (s2 + sd2).rsqrt()
    c_in = (s2 + sd2).rsqrt()
    c_noise = s.clamp_min(sigma_floor).log() / 4
    return c_skip, c_out, c_in, c_noise


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (frozen ones too: a loaded, eval-mode model counts the same as a training one)."""
    return sum(p.numel() for p in model.parameters())


# ---- other parametrizations <-> denoisers ---------------------------------------------------------------
# x = y + s n (VE view, y ~ data, n ~ N(0, I)); D(x; s) ~= E[y | x]. Each wrapper calls model(x, s, cond)
# with the same arguments as the contract and returns D; each denoiser_to_* is its exact inverse.

def _sig(x: Tensor, sigma: Any) -> Tensor:
    """sigma as [N, 1, ...] broadcastable against x, in x's dtype."""
    x = check_batch(x)
    s = as_sigma(sigma, x.shape[0], device=x.device, dtype=x.dtype)
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class EpsDenoiser(nn.Module):
    """eps-prediction -> denoiser: D = x - s eps(x, s, c)  (Ho et al. 2020; Karras et al. 2022, Table 1)."""

    def __init__(self, model: Denoiser) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        return x - _sig(x, sigma) * self.model(x, sigma, cond)


class ScoreDenoiser(nn.Module):
    """score -> denoiser by Tweedie's formula: D = x + s^2 grad log p(x; s)  (Song et al. 2021; EDM eq. 3)."""

    def __init__(self, model: Denoiser) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        return x + _sig(x, sigma) ** 2 * self.model(x, sigma, cond)


class VDenoiser(nn.Module):
    """v-prediction (Salimans & Ho 2022, "Progressive distillation") -> denoiser, in the EDM/VE view.

    With data scaled to unit variance (y / sd) and the VP angle alpha = sd / sqrt(s^2 + sd^2),
    beta = s / sqrt(s^2 + sd^2), Salimans & Ho's target is v = alpha n - beta y / sd
    = (sd^2 n - s y) / (sd sqrt(s^2 + sd^2)). EDM's F-target (y - c_skip x) / c_out for x = y + s n equals
    (s y - sd^2 n) / (sd sqrt(s^2 + sd^2)) = -v, hence D = c_skip x - c_out v (`edm_preconditioning`'s c_skip,
    c_out). The model is called with the contract's (x, s, c); wrap a VP-input model yourself.
    """

    def __init__(self, model: Denoiser, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.model, self.sigma_data = model, float(sigma_data)

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        c_skip, c_out, _, _ = edm_preconditioning(_sig(x, sigma), self.sigma_data)
        return c_skip * x - c_out * self.model(x, sigma, cond)


class _VPTable:
    """The DDPM table sigma_t = sqrt((1 - abar_t) / abar_t) and continuous t <-> sigma by log-sigma interpolation."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if abar.ndim != 1 or abar.numel() < 2 or not ((abar > 0) & (abar < 1)).all() or (abar.diff() >= 0).any():
            raise ValueError("alphas_cumprod must be a 1-d tensor of length >= 2, strictly decreasing, in (0, 1)")
        self.log_sigmas = (((1 - abar) / abar).sqrt()).log()                   # [T], increasing

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep [N] for noise levels [N] (clamped to the table's range)."""
        ls = self.log_sigmas.to(sigma.device)
        log_s = sigma.to(torch.float64).clamp(ls[0].exp(), ls[-1].exp()).log()
        i = torch.searchsorted(ls, log_s).clamp(1, ls.numel() - 1)
        frac = (log_s - ls[i - 1]) / (ls[i] - ls[i - 1])
        return (i - 1 + frac).to(sigma.dtype)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Noise levels [N] for continuous timesteps [N] in [0, T - 1] (the inverse of sigma_to_t)."""
        ls = self.log_sigmas.to(t.device)
        t64 = t.to(torch.float64).clamp(0, ls.numel() - 1)
        i = t64.floor().long().clamp(max=ls.numel() - 2)
        return (ls[i] + (t64 - i) * (ls[i + 1] - ls[i])).exp().to(t.dtype)


class VPEpsDenoiser(nn.Module):
    """A DDPM eps-model ``model(x_t, t, cond)`` (Ho et al. 2020) as a VE denoiser (Karras et al. 2022, App. C.1).

    DDPM: x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps. Dividing by sqrt(abar_t) gives the VE form
    x = y + s eps with s = sqrt((1 - abar_t) / abar_t), and x_t = x / sqrt(1 + s^2). Given s, t is found by
    linear interpolation of log s over the table (continuous t, float tensor [N]); s outside the table's range
    is clamped to it. D = x - s eps(x / sqrt(1 + s^2), t(s), cond). Inverse: `denoiser_to_vp_eps`.
    """

    def __init__(self, model: Callable[[Tensor, Tensor, Any], Tensor], alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.model, self.table = model, _VPTable(alphas_cumprod)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep [N] for noise levels [N] (log-sigma interpolation in the abar table)."""
        return self.table.sigma_to_t(sigma)

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        s = _sig(x, sigma)
        return x - s * self.model(x / (1 + s * s).sqrt(), self.sigma_to_t(s.reshape(-1)), cond)


def denoiser_to_eps(denoiser: Denoiser) -> Denoiser:
    """Inverse of EpsDenoiser: eps(x, s, c) = (x - D(x, s, c)) / s (s > 0)."""
    return lambda x, sigma, cond=None: (x - denoiser(x, sigma, cond)) / _sig(x, sigma)


def denoiser_to_score(denoiser: Denoiser) -> Denoiser:
    """Inverse of ScoreDenoiser: score(x, s, c) = (D(x, s, c) - x) / s^2 (s > 0)."""
    return lambda x, sigma, cond=None: (denoiser(x, sigma, cond) - x) / _sig(x, sigma) ** 2


def denoiser_to_v(denoiser: Denoiser, sigma_data: float = 0.5) -> Denoiser:
    """Inverse of VDenoiser: v(x, s, c) = (c_skip x - D(x, s, c)) / c_out (s > 0)."""
    def v(x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        c_skip, c_out, _, _ = edm_preconditioning(_sig(x, sigma), sigma_data)
        return (c_skip * x - denoiser(x, sigma, cond)) / c_out
    return v


def denoiser_to_vp_eps(denoiser: Denoiser, alphas_cumprod: Tensor) -> Callable[[Tensor, Tensor, Any], Tensor]:
    """Inverse of VPEpsDenoiser: the DDPM eps-model eps(x_t, t, c) = (x - D(x, s_t, c)) / s_t with
    x = x_t sqrt(1 + s_t^2) (Karras et al. 2022, App. C.1); t continuous [N] (log-sigma interpolation)."""
    table = _VPTable(alphas_cumprod)

    def eps(x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        x_t = check_batch(x_t, "x_t")
        s = table.t_to_sigma(torch.as_tensor(t, device=x_t.device).to(x_t.dtype).expand(x_t.shape[0]))
        s = s.reshape(-1, *([1] * (x_t.ndim - 1)))
        x = x_t * (1 + s * s).sqrt()
        return (x - denoiser(x, s.reshape(-1), cond)) / s
    return eps
