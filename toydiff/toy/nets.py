"""The toy world's networks: small MLP denoisers with EDM preconditioning, and the noise-aware classifier.

Every denoiser here obeys the denoiser contract of toydiff.denoiser (docs/DESIGN.md): ``D(x, sigma, cond) -> x0_hat`` with x [N, dim],
sigma a float / 0-d / [N] tensor (>= 0), cond int64 [N] in [-1, num_classes) (-1 = null) or None (all null).

Preconditioning (Karras et al. 2022, Table 1; `toydiff.denoiser.edm_preconditioning`), sd = sigma_data:
    D(x; s, c) = c_skip x + c_out F(c_in x, c_noise, c)
so that the network input c_in x and the training target of F both have unit variance at every s, and F = 0
(the zero-initialised output layer) is the Wiener filter of N(0, sd^2 I) data.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.denoiser import SIGMA_TINY, edm_preconditioning
from ..core.flow import as_time
from ..infra.validation import as_sigma, check_points, check_positive_int, check_real, check_seed, label_index

__all__ = ["MLPDenoiser", "EnergyMLPDenoiser", "TwinHeadMLPDenoiser", "VelocityMLP", "MODELS", "build_model", "NoiseAwareClassifier"]

class _NoiseConditionedMLP(nn.Module):
    """What the denoisers and the classifier share: validated hyperparameters stored in ``config`` (to rebuild the
    model from a checkpoint), weights drawn from ``seed`` inside a forked RNG (the same arguments give the same
    model), and random Fourier features of c_noise: sqrt(2) cos(2 pi (f c_noise + phi)), f ~ N(0, 1), phi ~ U[0, 1).
    Subclasses create their layers in ``_build``."""

    min_classes = 0

    def __init__(self, dim: int, num_classes: int, width: int, depth: int, sigma_data: float, num_freqs: int,
                 seed: int) -> None:
        super().__init__()
        dim, width, depth, num_freqs = (check_positive_int(v, k) for v, k in
                                        ((dim, "dim"), (width, "width"), (depth, "depth"), (num_freqs, "num_freqs")))
        seed = check_seed(seed)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < self.min_classes:
            raise ValueError(f"num_classes must be an int >= {self.min_classes}"
                             f"{' (0 = unconditional)' if self.min_classes == 0 else ''}, got {num_classes!r}")
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a finite float > 0, got {sigma_data!r}")
        self.config = dict(dim=dim, num_classes=num_classes, width=width, depth=depth, sigma_data=float(sigma_data),
                           num_freqs=num_freqs, seed=seed)
        self.dim, self.num_classes, self.sigma_data = dim, num_classes, float(sigma_data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.register_buffer("freqs", torch.randn(num_freqs))
            self.register_buffer("phases", torch.rand(num_freqs))
            self._build(dim, width, depth, num_freqs)

    def _build(self, dim: int, width: int, depth: int, num_freqs: int) -> None:
        raise NotImplementedError

    def _fourier(self, c_noise: Tensor) -> Tensor:
        """Fourier features [N, num_freqs] of c_noise [N, 1]."""
        return math.sqrt(2) * torch.cos(2 * math.pi * (c_noise * self.freqs + self.phases))


class MLPDenoiser(_NoiseConditionedMLP):
    """EDM-preconditioned MLP denoiser (Karras et al. 2022, Table 1) for points in R^dim.

    F(x_in, c_noise, c): [x_in, fourier(c_noise)] -> Linear -> (+ class embedding) -> depth hidden layers of
    ``width`` SiLU units -> Linear (zero init). The class embedding has num_classes + 1 rows; the last is the
    learned null label used for cond == -1 / None (Ho & Salimans 2022). num_classes = 0: unconditional model.
    Weights are drawn from ``seed`` inside a forked RNG, so the same arguments give the same model.

    ``position_freqs`` = P > 0 adds 2P random Fourier features of the position (Tancik et al. 2020), b ~ N(0,
    position_scale^2 I_dim), each damped by its mean under the input's noise (mip-NeRF's integrated encoding,
    Barron et al. 2021): x_in = c_in (y + s n), so E_n cos(2 pi b.x_in) = cos(2 pi b.c_in y) exp(-2 pi^2 |b|^2
    (c_in s)^2), and the features fade out where the noise hides the detail they resolve. A plain MLP of this size
    cannot draw branches 0.01 wide at small sigma (RESULTS.md, issue 9); these features let it.
    """

    def __init__(self,
                 dim: int = 2,
                 num_classes: int = 0,
                 width: int = 64,
                 depth: int = 4,
                 sigma_data: float = 0.5,
                 num_freqs: int = 16,
                 seed: int = 0,
                 position_freqs: int = 0,
                 position_scale: float = 3.0) -> None:
        self._position = (check_positive_int(position_freqs, "position_freqs", minimum=0),
                          check_real(position_scale, "position_scale", 0, lo_open=True))
        super().__init__(dim, num_classes, width, depth, sigma_data, num_freqs, seed)
        if position_freqs:          # a model without position features records only the base config
            self.config.update(position_freqs=self._position[0], position_scale=float(position_scale))

    def _build(self, dim: int, width: int, depth: int, num_freqs: int) -> None:
        n_pos, scale = self._position
        if n_pos:
            self.register_buffer("position_b", torch.randn(dim, n_pos) * scale)
        self.inp = nn.Linear(dim + num_freqs + 2 * n_pos, width)
        self.emb = nn.Embedding(self.num_classes + 1, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, self._out_features())
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)

    def _out_features(self) -> int:
        return self.dim

    # ---- contract plumbing ------------------------------------------------------------------------------
    def _args(self, x: Tensor, sigma: Any, cond: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Validated (x [N, dim], sigma [N, 1] in x's dtype, label index [N] with null -> num_classes)."""
        x = check_points(x, self.dim)
        s = as_sigma(sigma, x.shape[0], device=x.device, dtype=x.dtype).unsqueeze(1)
        return x, s, label_index(cond, x.shape[0], self.num_classes, device=x.device)

    def _precond(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return edm_preconditioning(s, self.sigma_data)

    def _features(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        """The first layer's input [N, dim + num_freqs + 2P]: c_in x, Fourier features of c_noise, the damped cos and
        sin position features, in one array of the weights' dtype (float64 samples run in it; the preconditioning
        keeps x's). Where all rows share sigma (a sampler's step) the features of sigma are computed once."""
        n, dim = x_in.shape
        feats = torch.empty(n, self.inp.in_features, dtype=self.inp.weight.dtype, device=x_in.device)
        feats[:, :dim] = x_in
        noise = c_noise[:1] if bool((c_noise == c_noise[:1]).all()) else c_noise     # [1 or N, 1]
        feats[:, dim:dim + self.freqs.numel()] = self._fourier(noise)
        if hasattr(self, "position_b"):                     # see the class docstring; s = exp(4 c_noise)
            s = (4 * noise).exp()
            z = 2 * math.pi * (x_in.to(self.position_b.dtype) @ self.position_b)                     # [N, P]
            damp = torch.exp(-2 * math.pi ** 2 * s.square() / (s.square() + self.sigma_data ** 2)
                             * self.position_b.square().sum(0))
            p, start = z.shape[1], dim + self.freqs.numel()
            feats[:, start:start + p] = (torch.cos(z) * damp).to(x_in.dtype)
            feats[:, start + p:] = (torch.sin(z) * damp).to(x_in.dtype)
        return feats

    def _trunk(self, x_in: Tensor, c_noise: Tensor, idx: Tensor) -> Tensor:
        """Hidden features [N, width] of (c_in x [N, dim], c_noise [N, 1], label index [N])."""
        h = self.inp(self._features(x_in, c_noise)).add_(self.emb(idx))          # a fresh array: added to in place
        inplace = not h.requires_grad                               # no autograd graph (sampling): no copies
        for layer in self.hidden:
            h = layer(F.silu(h, inplace=inplace))
        return F.silu(h, inplace=inplace)

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        """D(x; sigma, cond) = c_skip x + c_out F(c_in x, c_noise, cond)  (EDM eq. 7), in x's dtype (float16 and
        bfloat16 inputs too, though F runs in the weights' dtype)."""
        x, s, idx = self._args(x, sigma, cond)
        c_skip, c_out, c_in, c_noise = self._precond(s)
        return (c_skip * x + c_out * self.out(self._trunk(c_in * x, c_noise, idx))).to(x.dtype)


class EnergyMLPDenoiser(MLPDenoiser):
    """Energy-head denoiser: the network is a scalar log-density, the score its x-gradient.

    log p(x; s, c) ~= E = -|x|^2 / (2 (s^2 + sd^2)) + (sd / s) f(c_in x, c_noise, c)   (up to a constant)
    score = grad_x E = -x / (s^2 + sd^2) + c_in (sd / s) grad_{x_in} f
    D = x + s^2 score = c_skip x + c_out grad_{x_in} f
    i.e. EDM preconditioning with F = grad_{x_in} f; f = 0 at init (zero output layer), so the initial score is
    that of N(0, (s^2 + sd^2) I). This is the parametrization of the toy model of Karras et al. 2024
    ("Guiding a diffusion model with a bad version of itself"), where a density is needed for the figures.
    The gradient is taken with autograd under torch.enable_grad (so torch.no_grad callers work); the graph is
    kept (create_graph) only when the caller has grad enabled, i.e. when training.
    """

    def _out_features(self) -> int:
        return 1

    def log_density(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        """Unnormalized log p(x; sigma, cond) [N] (sigma clamped at SIGMA_TINY for the sd/s factor)."""
        x, s, idx = self._args(x, sigma, cond)
        _, _, c_in, c_noise = self._precond(s)
        f = self.out(self._trunk(c_in * x, c_noise, idx))
        return (-0.5 * x.square().sum(1, keepdim=True) * c_in ** 2 + self.sigma_data / s.clamp_min(SIGMA_TINY) * f)[:, 0]

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        x, s, idx = self._args(x, sigma, cond)
        c_skip, c_out, c_in, c_noise = self._precond(s)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = c_in * x
            if not x_in.requires_grad:
                x_in = x_in.detach().requires_grad_(True)
            f = self.out(self._trunk(x_in, c_noise, idx))
            (grad,) = torch.autograd.grad(f.sum(), x_in, create_graph=create_graph)
        return (c_skip * x + c_out * grad).to(x.dtype)


class TwinHeadMLPDenoiser(MLPDenoiser):
    """One trunk, a conditional and an unconditional head (for CFG from a single trunk forward).

    trunk(c_in x, c_noise): depth - 1 SiLU layers, no label. Heads (one hidden layer each):
        F_cond   = out_c(silu(lin_c(h) + emb(c)))      F_uncond = out_u(silu(lin_u(h)))
    ``__call__`` uses F_cond where cond >= 0 and F_uncond where cond == -1 / None, so condition dropout
    (Ho & Salimans 2022) trains both heads; ``denoise_pair`` returns both from one trunk pass.
    """

    def __init__(self, dim: int = 2, num_classes: int = 1, width: int = 64, depth: int = 4, sigma_data: float = 0.5,
                 num_freqs: int = 16, seed: int = 0) -> None:
        if isinstance(num_classes, int) and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for a twin-head model, got {num_classes}")
        if isinstance(depth, int) and depth < 2:
            raise ValueError(f"depth must be >= 2 for a twin-head model (trunk + head layer), got {depth}")
        super().__init__(dim, num_classes, width, depth, sigma_data, num_freqs, seed)

    def _build(self, dim: int, width: int, depth: int, num_freqs: int) -> None:
        self.inp = nn.Linear(dim + num_freqs, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 2))
        self.emb = nn.Embedding(self.num_classes, width)
        self.lin_c, self.lin_u = nn.Linear(width, width), nn.Linear(width, width)
        self.out_c, self.out_u = nn.Linear(width, dim), nn.Linear(width, dim)
        for p in (*self.out_c.parameters(), *self.out_u.parameters()):
            nn.init.zeros_(p)

    def _pair(self, x: Tensor, sigma: Any, cond: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, s, idx = self._args(x, sigma, cond)
        c_skip, c_out, c_in, c_noise = self._precond(s)
        h = self.inp(self._features(c_in * x, c_noise))
        for layer in self.hidden:
            h = layer(F.silu(h))
        h = F.silu(h)
        null = idx == self.num_classes
        f_c = self.out_c(F.silu(self.lin_c(h) + self.emb(idx.masked_fill(null, 0))))
        f_u = self.out_u(F.silu(self.lin_u(h)))
        return (c_skip * x + c_out * f_c).to(x.dtype), (c_skip * x + c_out * f_u).to(x.dtype), null

    def denoise_pair(self, x: Tensor, sigma: Any, cond: Any) -> tuple[Tensor, Tensor]:
        """(D(x | cond), D(x | null)) from one trunk forward; rows with cond == -1 get the null head in both."""
        d_c, d_u, null = self._pair(x, sigma, cond)
        return torch.where(null.unsqueeze(1), d_u, d_c), d_u

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        return self.denoise_pair(x, sigma, cond)[0]


class VelocityMLP(MLPDenoiser):
    """A flow-matching velocity model v(x_t, t, c) (rectified flow; toydiff.core.flow) on MLPDenoiser's network: the
    same inputs at the same noise level, x = x_t / (1 - t) and sigma = t / (1 - t), so c_in x = x_t /
    sqrt(t^2 + sd^2 (1 - t)^2) and c_noise = ln(sigma) / 4 (and the position features damped alike), but F itself is
    the velocity (unit-scale target n - y, no output preconditioning; F = 0 at init). Not a denoiser:
    `toydiff.core.flow.VelocityDenoiser(model)` is one. t must lie in [0, 1) (a ValueError naming t)."""

    def forward(self, x_t: Tensor, t: Any, cond: Any = None) -> Tensor:
        x_t = check_points(x_t, self.dim, "x_t")
        tt = as_time(t, x_t.shape[0], device=x_t.device, dtype=x_t.dtype).unsqueeze(1)
        idx = label_index(cond, x_t.shape[0], self.num_classes, device=x_t.device)
        _, _, _, c_noise = self._precond(tt / (1 - tt))
        x_in = x_t * (tt.square() + (self.sigma_data * (1 - tt)).square()).rsqrt()
        return self.out(self._trunk(x_in, c_noise, idx)).to(x_t.dtype)


MODELS: dict[str, type[MLPDenoiser]] = {c.__name__: c for c in (MLPDenoiser, EnergyMLPDenoiser, TwinHeadMLPDenoiser,
                                                                 VelocityMLP)}


def build_model(class_name: str, config: dict) -> MLPDenoiser | NoiseAwareClassifier:
    """Rebuild a model from its class name (a denoiser of MODELS or "NoiseAwareClassifier") and constructor kwargs
    (``model.config``)."""
    nets = {**MODELS, NoiseAwareClassifier.__name__: NoiseAwareClassifier}
    if class_name not in nets:
        raise ValueError(f"unknown model class {class_name!r}; expected one of {sorted(nets)}")
    return nets[class_name](**config)


class NoiseAwareClassifier(_NoiseConditionedMLP):
    """Noise-aware classifier log p(c | x; sigma) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4: a
    classifier trained on noisy samples at every noise level; its gradient guides the sampler).

    EDM-style inputs (Karras et al. 2022, Table 1): the unit-variance c_in x = x / sqrt(sigma^2 + sd^2) and random
    Fourier features of c_noise = log(sigma) / 4, then ``depth`` SiLU layers of ``width`` -> Linear -> C logits.
    ``forward(x, sigma) -> logits [N, C]``; ``log_prob(x, sigma) -> log p(c | x; sigma) [N, C]``, the signature
    `toydiff.guidance.ClassifierGuidance` expects. It lives beside the MLP denoisers because it shares their
    noise conditioning (`_NoiseConditionedMLP`: config, seeded init, Fourier features). Computes in the parameters' dtype, returns x's dtype.
    """

    min_classes = 2

    def __init__(self, dim: int = 2, num_classes: int = 2, width: int = 64, depth: int = 3, sigma_data: float = 0.5,
                 num_freqs: int = 16, seed: int = 0) -> None:
        super().__init__(dim, num_classes, width, depth, sigma_data, num_freqs, seed)

    def _build(self, dim: int, width: int, depth: int, num_freqs: int) -> None:
        self.inp = nn.Linear(dim + num_freqs, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, self.num_classes)

    def forward(self, x: Tensor, sigma: Any) -> Tensor:
        """Logits [N, C] of p(c | x; sigma) for x [N, dim], sigma a float or [N] (>= 0)."""
        x = check_points(x, self.dim)
        dtype = self.inp.weight.dtype
        s = as_sigma(sigma, x.shape[0], device=x.device, dtype=dtype).unsqueeze(1)
        _, _, c_in, c_noise = edm_preconditioning(s, self.sigma_data)
        h = self.inp(torch.cat([c_in * x.to(dtype), self._fourier(c_noise)], dim=1))
        for layer in self.hidden:
            h = layer(F.silu(h))
        return self.out(F.silu(h)).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: Any) -> Tensor:
        """log p(c | x; sigma) [N, C] (log-softmax of the logits), differentiable in x."""
        return F.log_softmax(self(x, sigma), dim=1)
