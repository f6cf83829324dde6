"""Densities you can look at: exact guided densities on grids, density ratios, and the densities of networks.

- CFG's target (Ho & Salimans 2022, Sec. 3.2; Karras et al. 2024, Sec. 3): with w = 1 no guidance,
      p_w(x | c; sigma)  proportional to  p(x | c; sigma)^w  p(x; sigma)^(1 - w)
  normalized numerically on a grid (`guided_log_density`); for single Gaussians it is Gaussian again
  (`gaussian_power_product`). The sampler does NOT produce p_w: guided scores at different sigma are not the
  scores of one diffused family (Karras et al. 2024, Sec. 3), which the CFG figure shows side by side.
- Ratios (Karras et al. 2024, Eq. 2): autoguidance adds (w - 1) grad log(p_1 / p_0), and for denoisers
  grad log(p_1 / p_0)(x; sigma) = (D_1 - D_0) / sigma^2 (`ratio_gradient`); `log_ratio` gives the ratio itself.
- Learned densities: an energy head's log p up to a constant, normalized on a grid (`energy_log_density`),
  and, for ANY denoiser, guided ones included, the probability-flow ODE with the exact 2D divergence
  (`ode_log_density`; instantaneous change of variables, Chen et al. 2018, Thm. 1; Song et al. 2021, App. D.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import histogram
from ..core.denoiser import Denoiser, start_run
from .distributions import GaussianMixture
from .mlp_jacobian import denoise_and_divergence, has_exact_divergence
from ..core.samplers import edm_sigmas
from ..infra.validation import as_cond, as_sigma, check_nonnegative, check_points, check_positive_int

__all__ = ["Grid", "make_grid", "normalize_on_grid", "guided_log_density", "sample_tv", "gaussian_power_product",
           "ratio_gradient", "log_ratio", "energy_log_density", "ode_log_density"]



@dataclass(frozen=True)
class Grid:
    """A regular grid over [x0, x1] x [y0, y1]: cell centres `points` [H * W, 2] (row-major, y outer)."""
    extent: tuple[float, float, float, float]
    resolution: int

    @property
    def xs(self) -> Tensor:
        x0, x1 = self.extent[:2]
        return x0 + (torch.arange(self.resolution, dtype=torch.float64) + 0.5) * (x1 - x0) / self.resolution

    @property
    def ys(self) -> Tensor:
        y0, y1 = self.extent[2:]
        return y0 + (torch.arange(self.resolution, dtype=torch.float64) + 0.5) * (y1 - y0) / self.resolution

    @property
    def points(self) -> Tensor:
        gy, gx = torch.meshgrid(self.ys, self.xs, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)

    @property
    def edges(self) -> tuple[Tensor, Tensor]:
        """Cell edges (x [W + 1], y [H + 1]) float64: cell i spans edges[i] <= . < edges[i + 1]."""
        x0, x1, y0, y1 = self.extent
        steps = torch.arange(self.resolution + 1, dtype=torch.float64) / self.resolution
        return x0 + steps * (x1 - x0), y0 + steps * (y1 - y0)

    @property
    def cell_area(self) -> float:
        x0, x1, y0, y1 = self.extent
        return (x1 - x0) * (y1 - y0) / self.resolution ** 2

    def image(self, values: Tensor) -> Tensor:
        """Values [H * W] as an image [H, W] (row 0 = lowest y; plot with origin="lower")."""
        return values.reshape(self.resolution, self.resolution)


def make_grid(extent: tuple[float, float, float, float] = (-2.0, 2.0, -2.0, 2.0), resolution: int = 200) -> Grid:
    """A `resolution` x `resolution` grid of cell centres over extent = (x0, x1, y0, y1)."""
    check_positive_int(resolution, "resolution")
    if len(extent) != 4 or not all(math.isfinite(float(v)) for v in extent) \
            or not (extent[0] < extent[1] and extent[2] < extent[3]):
        raise ValueError(f"extent must be finite (x0, x1, y0, y1) with x0 < x1 and y0 < y1, got {extent!r}")
    return Grid(tuple(float(v) for v in extent), resolution)


def normalize_on_grid(log_values: Tensor, grid: Grid) -> Tensor:
    """log q - log(sum_cells q * cell_area): a log-density that integrates to 1 over the grid (midpoint rule)."""
    if log_values.numel() != grid.resolution ** 2:
        raise ValueError(f"log_values must have {grid.resolution ** 2} entries (the grid), got {log_values.numel()}")
    return log_values - (torch.logsumexp(log_values.reshape(-1).double(), 0) + math.log(grid.cell_area)).to(log_values.dtype)


def guided_log_density(dist: GaussianMixture, cond: int, w: float, grid: Grid, sigma: float = 0.0,
                       negative: GaussianMixture | None = None) -> Tensor:
    """The guided target density log p_w(x | c; sigma) on `grid` [H * W], normalized there:
        w log p_1(x | c; sigma) + (1 - w) log p_0(x; sigma) - log Z      (w = 1: p_1 itself)
    CFG: p_1 = p(. | c), p_0 = the marginal p(.) of `dist` (default). Autoguidance with an exact guide: pass
    `negative`, a mixture standing in for the guide's p_0(. | c)."""
    w = check_nonnegative(w, "w")
    pts = grid.points
    log_1 = dist.log_prob(pts, sigma, cond)
    log_0 = dist.log_prob(pts, sigma, None) if negative is None else negative.log_prob(pts, sigma, cond)
    return normalize_on_grid(w * log_1 + (1 - w) * log_0, grid)


def sample_tv(x: Tensor, grid: Grid, log_density: Tensor) -> float:
    """Total variation distance between the histogram of samples x [N, 2] on the grid's cells and a density
    normalized on the grid (`log_density` [H * W], e.g. `guided_log_density`):
        TV = 1/2 (sum_cells |n_cell / N - p_cell * area| + share of x outside the grid)    in [0, 1]
    (the density has no mass outside the grid; samples off the grid count there, none is moved into an edge
    cell). 0 = the samples fall exactly as the density says, per cell. `toydiff.histogram.total_variation`."""
    x = check_points(x, 2, "x")
    if log_density.numel() != grid.resolution ** 2:
        raise ValueError(f"log_density must have {grid.resolution ** 2} entries (the grid), got {log_density.numel()}")
    q = histogram.sample_histogram(x.double(), *grid.edges)                           # x-major, outside last
    mass = grid.image(log_density.reshape(-1).double().exp() * grid.cell_area).T.reshape(-1)   # [y, x] -> x-major
    return histogram.total_variation(q, torch.cat([mass, mass.new_zeros(1)]))


def gaussian_power_product(mean1: Tensor, cov1: Tensor, mean0: Tensor, cov0: Tensor, w: float) -> tuple[Tensor, Tensor]:
    """N(mean1, cov1)^w N(mean0, cov0)^(1 - w), normalized, is N(m, S) with
        S^-1 = w cov1^-1 + (1 - w) cov0^-1,   m = S (w cov1^-1 mean1 + (1 - w) cov0^-1 mean0)
    (the guided density of CFG for single Gaussians). ValueError if S^-1 is not positive definite (no density)."""
    w = check_nonnegative(w, "w")
    p1, p0 = torch.linalg.inv(cov1.double()), torch.linalg.inv(cov0.double())
    prec = w * p1 + (1 - w) * p0
    if torch.linalg.eigvalsh(prec).min() <= 0:
        raise ValueError(f"w={w}: w cov1^-1 + (1 - w) cov0^-1 is not positive definite, the product is not normalizable")
    cov = torch.linalg.inv(prec)
    return cov @ (w * p1 @ mean1.double() + (1 - w) * p0 @ mean0.double()), cov


def ratio_gradient(d1: Denoiser, d0: Denoiser, x: Tensor, sigma: float, cond: Any = None) -> Tensor:
    """grad_x log(p_1 / p_0)(x; sigma) [N, 2] = (D_1(x; sigma) - D_0(x; sigma)) / sigma^2 for any two denoisers
    (mixtures or networks; Tweedie: D = x + sigma^2 grad log p). Autoguidance moves samples along (w - 1) times this."""
    x = check_points(x, 2, "x")
    s = float(as_sigma(sigma, 1)[0])
    if s <= 0:
        raise ValueError(f"sigma must be > 0 for a score, got {sigma}")
    with torch.no_grad():
        return (d1(x, s, cond) - d0(x, s, cond)) / s ** 2


def log_ratio(p1: Any, p0: Any, x: Tensor, sigma: float = 0.0, cond: Any = None, **ode_kwargs) -> Tensor:
    """log p_1(x; sigma) - log p_0(x; sigma) [N] for two mixtures (exact) or denoisers (probability-flow ODE,
    `ode_log_density`, sigma > 0), in any combination. `ode_kwargs` go to `ode_log_density`."""
    def logp(p: Any) -> Tensor:
        if isinstance(p, GaussianMixture):
            return p.log_prob(x.double(), sigma, cond)
        return ode_log_density(p, x, cond, sigma=sigma, **ode_kwargs).double()
    return logp(p1) - logp(p0)


def energy_log_density(model: Any, grid: Grid, sigma: float, cond: Any = None) -> Tensor:
    """An energy-head network's log p(x | c; sigma) on `grid` [H * W]: its unnormalized `log_density`
    normalized on the grid (Karras et al. 2024 parametrize their 2D toy models this way)."""
    if not hasattr(model, "log_density"):
        raise TypeError(f"model must have an energy head (a log_density method), got {type(model).__name__}")
    pts = grid.points.float()
    with torch.no_grad():
        return normalize_on_grid(model.log_density(pts, sigma, cond).double(), grid)


def _drift_and_divergence(denoiser: Denoiser, x: Tensor, sigma: float, cond: Any, dtype: torch.dtype
                          ) -> tuple[Tensor, Tensor]:
    """PF-ODE drift dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 3) [N, 2] and, in u = log sigma,
    d log p(x(u); e^u) / du = -div_x(x - D) = tr(dD/dx) - 2 [N]. The trace of the 2x2 Jacobian is exact: one
    vector-Jacobian product per output coordinate (each row of a batch depends only on its own point); for an
    MLPDenoiser, forward-mode tangents instead (`mlp_jacobian`: the same trace, ~30% less CPU, no graph)."""
    if has_exact_divergence(denoiser):
        d, div = denoise_and_divergence(denoiser, x.to(dtype), sigma, cond)
        return (x - d.double()) / sigma, div.double() - 2
    with torch.enable_grad():
        xg = x.detach().to(dtype).requires_grad_(True)
        d = denoiser(xg, sigma, cond)
        (g0,) = torch.autograd.grad(d[:, 0].sum(), xg, retain_graph=True)
        (g1,) = torch.autograd.grad(d[:, 1].sum(), xg)
    return (x - d.detach().double()) / sigma, (g0[:, 0] + g1[:, 1]).double() - 2


def ode_log_density(denoiser: Denoiser, x: Tensor, cond: Any = None, *, sigma: float = 0.002,
                    sigma_max: float = 80.0, steps: int = 64, rho: float = 7.0, data_std: float = 0.5,
                    dtype: torch.dtype | None = None, progress: bool = False) -> Tensor:
    """log p(x | c; sigma) [N] of the distribution a denoiser defines, by the probability-flow ODE.

    Instantaneous change of variables (Chen et al. 2018, "Neural Ordinary Differential Equations", Thm. 1;
    Song et al. 2021, App. D.2): along dx/dsigma = (x - D) / sigma, d log p / d log sigma = tr(dD/dx) - 2, so
        log p(x(sigma); sigma) = log p(x(sigma_max); sigma_max) + integral (2 - tr dD/dx) d log sigma
    with p(.; sigma_max) ~= N(0, (sigma_max^2 + data_std^2) I) (error O(|mean|^2 / sigma_max^2)). Heun's method
    on the augmented state (x, log p) over the EDM schedule (Karras et al. 2022, Eq. 5) run upwards from
    `sigma` to `sigma_max`: x is stepped in sigma, where the drift is nearly constant at large sigma, and the
    log-density term in log sigma, where it is bounded. Works for any denoiser D(x, sigma, cond) differentiable
    in x, guided ones included (then it is the density the guided ODE sampler produces; the guidance's run is
    started along these levels, so LinearCFG's time and CFG-Zero*'s zero-init follow them). On the exact mixture
    denoiser it reproduces `log_prob` (see the tests). `dtype`: what the denoiser is called with (default:
    float64 for a GaussianMixture, float32 otherwise, as networks are); the integration itself runs in float64.
    """
    x = check_points(x, 2, "x").double()
    steps = check_positive_int(steps, "steps")
    sigma, sigma_max, data_std, rho = (check_nonnegative(v, n) for v, n in (
        (sigma, "sigma"), (sigma_max, "sigma_max"), (data_std, "data_std"), (rho, "rho")))
    if not 0 < sigma < sigma_max:
        raise ValueError(f"need 0 < sigma < sigma_max, got sigma={sigma}, sigma_max={sigma_max}")
    cond = as_cond(cond, x.shape[0], None)
    dtype = dtype or (torch.float64 if isinstance(denoiser, GaussianMixture) else torch.float32)
    levels = edm_sigmas(steps + 1, sigma, sigma_max, rho)                          # sigma_max > ... > sigma, 0
    denoiser = start_run(denoiser, levels.double())                 # one run: a guided denoiser's state is its own
    sigmas = levels[:-1].flip(0).tolist()                                          # EDM's levels, upwards
    delta = torch.zeros(x.shape[0], dtype=torch.float64)                         # integral of (2 - tr J) du
    f, g = _drift_and_divergence(denoiser, x, sigmas[0], cond, dtype)
    for i in tqdm(range(steps), desc="pf-ode density", disable=not progress, leave=False):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_pred = x + (s_next - s) * f
        f2, g2 = _drift_and_divergence(denoiser, x_pred, s_next, cond, dtype)
        x = x + 0.5 * (s_next - s) * (f + f2)
        delta = delta - 0.5 * math.log(s_next / s) * (g + g2)
        if i + 1 < steps:
            f, g = _drift_and_divergence(denoiser, x, s_next, cond, dtype)
    var = sigma_max ** 2 + data_std ** 2
    return -0.5 * x.square().sum(1) / var - math.log(2 * math.pi * var) + delta
