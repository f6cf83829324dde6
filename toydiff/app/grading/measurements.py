"""The measurement checks of the class assignments: the numbers a student's code measures, compared with the numbers
toydiff's own implementation computes on the same seeds (never hard-coded, so they follow the data and the shipped
models). Each check prints one line per passed part, returns None and raises an AssertionError that says what
differs."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ...core import samplers
from ...core.guidance import Guidance, guided
from ...toy import density, metrics, training
from ...toy.nets import MLPDenoiser
from .exercises import _ok, _tensor
from .forbid import own_work

__all__ = ["check_trained_denoiser", "check_samples", "check_sample_tv", "method_table", "check_method_table"]


def check_trained_denoiser(model: Callable, data, sigma: float = 0.3, factor: float = 0.3) -> None:
    """Both the conditional (class 0) and the unconditional (null) predictions of a model trained with condition
    dropout must have an EDM-weighted error (`training.denoiser_error`) below `factor` x that of the untrained 3 x 64
    MLP of the assignment: the unconditional branch only learns from the dropped labels (Ho & Salimans 2022)."""
    untrained = MLPDenoiser(num_classes=data.num_classes, width=64, depth=3, seed=0).eval()
    with torch.no_grad():
        for name, cond in (("conditional (class 0)", 0), ("unconditional (null)", None)):
            before = training.denoiser_error(untrained, data, sigma, cond=cond)
            after = training.denoiser_error(model, data, sigma, cond=cond)
            hint = (" The null label is only trained where labels were dropped: is p_uncond > 0 and do you pass the "
                    "dropped labels to the model?" if cond is None else "")
            assert after < factor * before, (f"{name}: error at sigma={sigma} is {after:.3f}, untrained {before:.3f}; "
                                             f"expected below {factor} x untrained.{hint}")
            _ok(f"{name}: error {before:.2f} -> {after:.2f} (below {factor} x untrained)")


def check_samples(xs: dict[str, Tensor], denoisers: dict[str, Callable], noise: Tensor, cond: Tensor, dist, cls: int,
                  *, steps: int = 32, sigma_max: float = 10.0, atol: float = 1e-3) -> None:
    """Each xs[name] must equal toydiff.samplers.sample(denoisers[name], noise, cond) (EDM Heun) to `atol`; the
    class accuracy and outlier fraction (toydiff.metrics) of both are printed side by side."""
    assert isinstance(xs, dict) and set(xs) == set(denoisers), \
        f"expected samples for {sorted(denoisers)}, got {sorted(xs) if isinstance(xs, dict) else type(xs).__name__}"
    for name, den in denoisers.items():
        got = _tensor(xs[name], f"samples[{name!r}]", noise.shape)
        with torch.no_grad():
            ref = samplers.sample(den, noise, cond, steps=steps, sigma_max=sigma_max)
        acc = [metrics.class_accuracy(v, dist, cls) for v in (got, ref)]
        out = [metrics.outlier_fraction(v, dist, cls) for v in (got, ref)]
        assert bool(torch.allclose(got.double(), ref.double(), atol=atol)), (
            f"{name}: your samples differ from toydiff's by up to {float((got - ref).abs().max()):.3g} (class accuracy "
            f"{acc[0]:.3f} vs {acc[1]:.3f}, outliers {out[0]:.3f} vs {out[1]:.3f}): same start noise, same method?")
        _ok(f"{name}: class accuracy {acc[1]:.3f}, outliers {out[1]:.3f}, as toydiff computes them")


def check_sample_tv(sample_tv: Callable, data, cls: int, seed: int = 1) -> None:
    """sample_tv(x, grid, log_density) -> the TV between the histogram of x on the grid's cells and the density,
    compared with toydiff's on true samples of class `cls`, the same shifted by 0.5 and far away (all outside)."""
    fn = own_work(sample_tv, ((density, "sample_tv"),), "sample_tv")
    grid = density.make_grid((-3.0, 3.0, -3.0, 3.0), 30)
    target = density.guided_log_density(data, cls, 1.0, grid)
    true, _ = data.sample(4000, cond=cls, generator=torch.Generator().manual_seed(seed))
    for name, x in (("true samples", true), ("shifted by 0.5", true + 0.5), ("far away", true + 10)):
        tv, ref = fn(x, grid, target), density.sample_tv(x, grid, target)
        assert isinstance(tv, float), f"sample_tv must return a python float, got {type(tv).__name__}"
        assert abs(tv - ref) < 1e-9, (f"{name}: you give {tv:.4f}, expected {ref:.4f}. Count the samples per cell "
                                      "(row = y bin, col = x bin), divide by N, compare with exp(log_density) * cell "
                                      "area, and add the share of samples outside the grid before halving")
        _ok(f"{name}: TV {tv:.3f}")


def method_table(methods: dict[str, Guidance], data, cls: int, w: float, *, n: int = 4000, seed: int = 0,
                 grid: density.Grid | None = None, sample_tv: Callable = density.sample_tv) -> dict[str, dict[str, float]]:
    """Guidance methods compared on exact ground truth (the mixture is the denoiser, EDM Heun 32 steps from sigma 10,
    the same start noise for all): class accuracy, mean true log p(x|c), and the total variation on `grid` to the
    class density p(x|c) and to the tilted target p(x|c)^w p(x)^(1-w) (Ho & Salimans 2022, Eq. 5)."""
    grid = grid or density.make_grid((-3.0, 3.0, -3.0, 3.0), 30)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10.0
    cond = torch.full((n,), cls)
    targets = {"tv_class": density.guided_log_density(data, cls, 1.0, grid),
               "tv_tilted": density.guided_log_density(data, cls, w, grid)}
    table = {}
    for name, g in methods.items():
        x = samplers.sample(guided(data, g), noise, cond, steps=32, sigma_max=10.0)
        table[name] = dict(accuracy=metrics.class_accuracy(x, data, cls), log_lik=metrics.mean_log_likelihood(x, data, cls),
                           **{k: sample_tv(x, grid, t) for k, t in targets.items()})
    return table


def check_method_table(table: dict[str, dict[str, float]], methods: dict[str, Guidance], data, cls: int, w: float,
                       *, atol: float = 2e-3, **kwargs) -> None:
    """The measured table must match `method_table` computed by toydiff on the same seeds (every entry to `atol`)."""
    ref = method_table(methods, data, cls, w, **kwargs)
    assert isinstance(table, dict) and set(table) == set(ref), \
        f"expected rows {sorted(ref)}, got {sorted(table) if isinstance(table, dict) else type(table).__name__}"
    for name, row in ref.items():
        for key, value in row.items():
            got = table[name].get(key) if isinstance(table[name], dict) else None
            assert got is not None and abs(float(got) - value) <= atol, \
                f"{name}, {key}: you measured {got}, toydiff computes {value:.4f} on the same seeds"
        _ok(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
