"""The exercise checks of the class assignments (notebooks/assignments/): one per student function.

Each `check_*` function calls the student's function on fixed seeds, compares it with toydiff's own
implementation (the library is the reference: the same formulas the walkthroughs use) and raises an
AssertionError whose message says what differs and what usually causes it. A student function that still
raises NotImplementedError (the stub of the generated student notebook) propagates that error unchanged.
While the student's function runs, the toydiff function that would solve the exercise refuses to work
(`forbid.own_work`): a submission that only calls the library scores nothing. Every check prints one line per
passed part and returns None. `seed` changes the inputs (the autograder's hidden
tests call the checks again with other seeds, so an answer tuned to the visible cases fails there).

Conventions (as everywhere in toydiff): w = 1 is no guidance, D_w = D_0 + w (D_1 - D_0); Ho & Salimans'
(2022) weight is w - 1.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor

from ...core import samplers
from ...core.guidance import CFG, AutoGuidance, Guidance, guided
from ...toy import datasets, metrics, training
from ...toy.nets import MLPDenoiser
from ...toy.training import train
from .forbid import own_work

__all__ = ["check_drop_labels", "check_training_loss", "check_cfg_combine", "check_cfg_denoiser",
           "check_euler_step", "check_heun_step", "check_sampler", "check_autoguidance", "check_outlier_fraction",
           "check_interval_weight", "toy_model"]


def _ok(msg: str) -> None:
    print(f"  ok  {msg}")


def _close(a: Tensor, b: Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol))


def _tensor(out, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
    assert isinstance(out, Tensor), f"{name} must return a torch.Tensor, got {type(out).__name__}"
    if shape is not None:
        assert tuple(out.shape) == tuple(shape), f"{name} returned shape {tuple(out.shape)}, expected {tuple(shape)}"
    return out


def toy_model(num_classes: int = 3, width: int = 32, depth: int = 3, seed: int = 0, out_std: float = 0.3) -> MLPDenoiser:
    """A small conditional MLP denoiser whose zero-initialised output layer is randomized, so that its
    prediction depends on the label and the noise level (a fresh model ignores the label entirely)."""
    model = MLPDenoiser(num_classes=num_classes, width=width, depth=depth, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.out.weight.copy_(torch.randn(model.out.weight.shape, generator=g) * out_std)
        model.out.bias.copy_(torch.randn(model.out.bias.shape, generator=g) * out_std)
    return model.eval()


# ---- assignment 1: condition dropout ---------------------------------------------------------------------
def check_drop_labels(drop_labels: Callable[[Tensor, float, torch.Generator], Tensor], seed: int = 7) -> None:
    """drop_labels(labels [B] int64, p_uncond, generator) -> labels with each entry set to -1 (null) with
    probability p_uncond (Ho & Salimans 2022, Algorithm 1), drawing ONE torch.rand(B) from the generator."""
    labels = torch.arange(4096) % 3
    before = labels.clone()
    for p in (0.0, 0.1, 0.5, 1.0):
        out = _tensor(drop_labels(labels, p, torch.Generator().manual_seed(seed)), "drop_labels", labels.shape)
        assert torch.equal(labels, before), "drop_labels must not modify its input in place (use masked_fill, not masked_fill_)"
        assert out.dtype == torch.int64, f"labels must stay int64, got {out.dtype}"
        assert bool(((out == labels) | (out == -1)).all()), \
            "every output label must be either the input label or -1 (the null label)"
        frac = float((out == -1).double().mean())
        assert abs(frac - p) < 0.03, (f"with p_uncond={p} you dropped {frac:.3f} of the labels; each label should "
                                      f"become -1 with probability p_uncond (did you use > instead of < ?)")
        ref = labels.masked_fill(torch.rand(labels.shape[0], generator=torch.Generator().manual_seed(seed)) < p, -1)
        assert torch.equal(out, ref), (f"p_uncond={p}: right fraction, but not the library's draw. Draw exactly one "
                                       f"torch.rand(B, generator=generator) and drop where it is < p_uncond")
    _ok("drop_labels: right fraction, labels kept or -1, input untouched, same draws as toydiff.training")


def check_training_loss(loss_fn: Callable[..., Tensor], p_unconds: tuple[float, ...] = (0.0, 0.1, 0.5),
                        seeds: tuple[int, ...] = (0, 1)) -> None:
    """loss_fn(model, x0 [B, 2], labels [B], p_uncond, generator) -> scalar EDM loss of one training step with
    condition dropout, compared with the first-step loss that `toydiff.training.train` records on the same seed."""
    loss_fn = own_work(loss_fn, ((training, "train"), (training, "edm_loss")), "loss_fn")
    data = datasets.three_gaussians()
    x, y = data.sample(2048, generator=torch.Generator().manual_seed(3))
    for p in p_unconds:
        for seed in seeds:
            model = toy_model(seed=seed)
            ref = float(train(copy.deepcopy(model).train(), (x, y), steps=1, batch_size=256, p_uncond=p, seed=seed,
                              progress=False).losses[0])
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randint(x.shape[0], (256,), generator=gen)          # what train() draws first
            out = loss_fn(model, x[idx], y[idx], p, gen)
            out = _tensor(out, "loss_fn")
            assert out.ndim == 0, f"the loss must be a scalar (0-d tensor), got shape {tuple(out.shape)}"
            got = float(out.detach())
            hint = ("with p_uncond=0 no label is dropped, so look at the noise level (ln sigma ~ N(-2.3, 1.5^2)), the "
                    "weight lambda = (sigma^2 + sd^2) / (sigma sd)^2, the squared error summed over the 2 coordinates "
                    "and averaged over the batch, and the ORDER of the random draws: torch.rand(B) for the dropout "
                    "first, then torch.randn(B) for ln sigma, then torch.randn(B, 2) for the noise"
                    if p == 0 else "the loss is right at p_uncond=0, so the condition dropout differs: use your "
                                   "drop_labels (one torch.rand(B) < p_uncond -> -1) before drawing sigma")
            assert math.isclose(got, ref, rel_tol=1e-4, abs_tol=1e-6), \
                f"p_uncond={p}, seed={seed}: your loss {got:.6f}, toydiff.training.train's {ref:.6f}. Hint: {hint}"
        _ok(f"loss with p_uncond={p} equals toydiff.training.train's first step ({len(seeds)} seeds)")


# ---- assignment 2: CFG and a sampler step ----------------------------------------------------------------
def check_cfg_combine(cfg_combine: Callable[[Tensor, Tensor, float], Tensor], seed: int = 0) -> None:
    """cfg_combine(d_cond, d_uncond, w) -> D_w = d_uncond + w (d_cond - d_uncond) (w = 1: no guidance)."""
    cfg_combine = own_work(cfg_combine, ((Guidance, "combine"),), "cfg_combine")
    g = torch.Generator().manual_seed(seed)
    d1, d0 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    out = _tensor(cfg_combine(d1, d0, 1.0), "cfg_combine", d1.shape)
    if _close(out, d0):
        raise AssertionError("at w = 1 you return the UNconditional prediction. In toydiff w = 1 is no guidance "
                             "(the conditional model itself): D_w = D_0 + w (D_1 - D_0)")
    if _close(out, 2 * d1 - d0):
        raise AssertionError("at w = 1 you return 2 D_1 - D_0: that is Ho & Salimans' convention ((1 + w) D_1 - w D_0). "
                             "toydiff's w is theirs plus 1: D_w = D_0 + w (D_1 - D_0)")
    assert _close(out, d1), "at w = 1 (no guidance) cfg_combine must return d_cond unchanged"
    assert _close(cfg_combine(d1, d0, 0.0), d0), "at w = 0 cfg_combine must return d_uncond (the unconditional model)"
    for w in (2.0, 4.0, 7.5, 1.0 + float(torch.rand((), generator=g)) * 5):
        assert _close(cfg_combine(d1, d0, w), d0 + w * (d1 - d0)), f"w={w}: expected D_0 + w (D_1 - D_0)"
    _ok("cfg_combine: w = 0 unconditional, w = 1 conditional, w > 1 extrapolates (toydiff convention)")


def check_cfg_denoiser(cfg_denoise: Callable[..., Tensor], seed: int = 1) -> None:
    """cfg_denoise(denoiser, x, sigma, cond, w) == guided(denoiser, CFG(w))(x, sigma, cond), on the exact
    three_gaussians() mixture and on a small network."""
    cfg_denoise = own_work(cfg_denoise, ((CFG, "branches"),), "cfg_denoise")
    dist, net = datasets.three_gaussians(), toy_model(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 2, generator=g) * 1.5
    cond = torch.arange(300) % 3
    calls = {"n": 0}

    def counting(x, sigma, c):
        calls["n"] += 1
        return net(x, sigma, c)

    for name, den in (("three_gaussians()", dist), ("an MLP", net)):
        for sigma in (0.05, 0.5, 3.0):
            for w in (1.0, 2.0, 4.0):
                with torch.no_grad():
                    ref = guided(den, CFG(w))(x, sigma, cond)
                    out = _tensor(cfg_denoise(den, x, sigma, cond, w), "cfg_denoise", x.shape)
                assert _close(out.to(ref.dtype), ref, atol=1e-4), (
                    f"{name}, sigma={sigma}, w={w}: differs from guidance.CFG by up to {float((out - ref).abs().max()):.3g}. "
                    "D_1 = denoiser(x, sigma, cond), D_0 = denoiser(x, sigma, null) with null = -1 for every row")
    with torch.no_grad():
        cfg_denoise(counting, x, 0.5, cond, 3.0)
    _ok("cfg_denoise matches toydiff.guidance.CFG (exact mixture and an MLP, 3 sigmas, 3 weights)")
    if calls["n"] == 1:
        _ok("both branches in ONE batched call, as toydiff.guidance.CFG does")
    else:
        print(f"  note: you called the network {calls['n']} times per step; concatenating [x; x] with labels "
              "[cond; -1] does both branches in one call (what CFG does, and what a GPU likes)")


# the library's steps and loop: a step or sampler exercise may not call them
_SAMPLER_CODE = ((samplers, "sample"), *((samplers.METHODS, k, f"samplers.METHODS[{k!r}]") for k in samplers.METHODS))


def _step_check(step: Callable, method: str, name: str, seed: int) -> None:
    dist = datasets.three_gaussians()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 2, generator=g) * 2
    cond = torch.arange(200) % 3
    step = own_work(step, _SAMPLER_CODE, name)
    for den_name, den in (("the exact mixture", dist), ("CFG w=3 on it", guided(dist, CFG(3.0)))):
        for s, s_next in ((5.0, 2.0), (0.5, 0.3), (0.01, 0.0)):
            levels = torch.tensor([s, s_next, 0.0] if s_next > 0 else [s, 0.0], dtype=torch.float64)
            ref = samplers.sample(den, x, cond, method=method, sigmas=levels, return_trajectory=True)[1][1]
            out = _tensor(step(den, x, s, s_next, cond), name, x.shape)
            if not _close(out, ref, atol=1e-5):
                extra = " (the last step to sigma = 0 must be a plain Euler step: no correction, no division by 0)" \
                    if s_next == 0 else ""
                raise AssertionError(f"{name} with {den_name}, sigma {s} -> {s_next}: differs from "
                                     f"toydiff.samplers by up to {float((out - ref).abs().max()):.3g}{extra}")
    _ok(f"{name} matches toydiff.samplers '{method}' (exact and CFG-guided denoisers, 3 step sizes incl. the last)")


def check_euler_step(euler_step: Callable, seed: int = 2) -> None:
    """euler_step(denoiser, x, sigma, sigma_next, cond) -> x at sigma_next: one Euler step of the probability-flow
    ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Eq. 3)."""
    _step_check(euler_step, "euler", "euler_step", seed)


def check_heun_step(heun_step: Callable, seed: int = 2) -> None:
    """heun_step(denoiser, x, sigma, sigma_next, cond): EDM Algorithm 1 (Karras et al. 2022), one step."""
    _step_check(heun_step, "heun", "heun_step", seed)


def check_sampler(sample_fn: Callable, method: str = "heun", seed: int = 4, steps: int = 16) -> None:
    """sample_fn(denoiser, noise [N, 2], cond, sigmas) -> x0: the whole loop over an EDM schedule, compared with
    toydiff.samplers.sample on the same start noise."""
    dist = datasets.three_gaussians()
    sample_fn = own_work(sample_fn, _SAMPLER_CODE, "sample_fn")
    sigmas = samplers.edm_sigmas(steps, sigma_max=10.0)
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(seed)) * 10.0
    cond = torch.arange(500) % 3
    for w in (1.0, 4.0):
        den = guided(dist, CFG(w))
        ref = samplers.sample(den, noise, cond, method=method, sigmas=sigmas)
        out = _tensor(sample_fn(den, noise.clone(), cond, sigmas), "sample_fn", noise.shape)
        assert _close(out, ref, atol=1e-4), (f"w={w}: your samples differ from toydiff.samplers.sample(method={method!r}) "
                                             f"by up to {float((out - ref).abs().max()):.3g}: loop over consecutive "
                                             "pairs (sigmas[i], sigmas[i+1]), the last one going to 0")
    _ok(f"the sampling loop reproduces toydiff.samplers.sample(method={method!r}) with and without CFG")


# ---- assignment 3: autoguidance and outliers -------------------------------------------------------------
def check_autoguidance(autoguide: Callable[..., Tensor], seed: int = 3) -> None:
    """autoguide(main, guide, x, sigma, cond, w) == guided(main, AutoGuidance(guide, w))(x, sigma, cond)."""
    autoguide = own_work(autoguide, ((AutoGuidance, "branches"),), "autoguide")
    main, guide = toy_model(num_classes=2, width=32, seed=seed), toy_model(num_classes=2, width=16, seed=seed + 5)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 2, generator=g)
    cond = torch.arange(256) % 2
    with torch.no_grad():
        for sigma in (0.02, 0.3, 2.0):
            for w in (1.0, 2.0, 3.0):
                ref = guided(main, AutoGuidance(guide, w))(x, sigma, cond)
                out = _tensor(autoguide(main, guide, x, sigma, cond, w), "autoguide", x.shape)
                if not _close(out, ref, atol=1e-5):
                    null = guided(main, CFG(w))(x, sigma, cond)
                    why = ("you used the null label: autoguidance calls the guide with the SAME condition as the main model"
                           if _close(out, null, atol=1e-5) else
                           "expected D_guide + w (D_main - D_guide) (Karras et al. 2024, Eq. 2; w = 1: the main model)")
                    raise AssertionError(f"sigma={sigma}, w={w}: {why}")
        out = autoguide(main, guide, x, 0.3, None, 2.5)
        ref = guided(main, AutoGuidance(guide, 2.5))(x, 0.3, None)
        assert _close(out, ref, atol=1e-5), "autoguidance must also work for unconditional calls (cond=None)"
    _ok("autoguide matches toydiff.guidance.AutoGuidance (3 sigmas, 3 weights, conditional and unconditional)")


def check_outlier_fraction(outlier_fraction: Callable[..., float], seed: int = 9) -> None:
    """outlier_fraction(x [N, 2], dist, cls, quantile=0.01, n_ref=10000, seed=0) -> share of x whose true
    log p(x | cls) lies below the `quantile` of log p(x | cls) over n_ref true samples of cls, compared with
    toydiff.metrics.outlier_fraction."""
    outlier_fraction = own_work(outlier_fraction, ((metrics, "outlier_fraction"), (metrics, "outlier_threshold")),
                                "outlier_fraction")
    cases = [("three_gaussians()", datasets.three_gaussians(), 1), ("tree()", datasets.tree(), 0)]
    for name, dist, cls in cases:
        g = torch.Generator().manual_seed(seed)
        true, _ = dist.sample(1000, cond=cls, generator=g)
        wide = true * 1.3                                                    # a blurred copy: many outliers
        for label, x in (("true samples", true), ("stretched samples", wide)):
            ref = metrics.outlier_fraction(x, dist, cls, n_ref=2000, seed=seed + 1)
            got = outlier_fraction(x, dist, cls, quantile=0.01, n_ref=2000, seed=seed + 1)
            assert isinstance(got, float), f"outlier_fraction must return a python float, got {type(got).__name__}"
            assert abs(got - ref) <= 2 / x.shape[0], (
                f"{name}, {label}: you report {got:.4f}, toydiff.metrics {ref:.4f}. The threshold is "
                f"torch.quantile of metrics.class_log_prob(ref, dist)[:, cls] (= dist.log_prob(ref, 0.0, cls), faster) over ref = dist.sample(n_ref, cond=cls, generator="
                f"torch.Generator().manual_seed(seed), dtype=torch.float64)[0]; an outlier has log p(x | cls) < threshold")
        _ok(f"outlier_fraction on {name}: true samples ~1%, stretched ones far more, same as toydiff.metrics")


# ---- assignment 4: guidance methods on exact ground truth ------------------------------------------------
def check_interval_weight(interval_weight: Callable[[float, Tensor, float, float], Tensor], seed: int = 5) -> None:
    """interval_weight(w, sigma [N], lo, hi) -> [N]: w where lo < sigma <= hi, 1 elsewhere (Kynkaanniemi et al. 2024,
    Eq. 2), compared with toydiff.guidance.Guidance.weight."""
    interval_weight = own_work(interval_weight, ((Guidance, "weight"), (Guidance, "active")), "interval_weight")
    g = torch.Generator().manual_seed(seed)
    sigma = torch.cat([torch.tensor([0.3, 1.0, 0.0]), (torch.randn(200, generator=g) * 1.5 - 1).exp()])
    for w, (lo, hi) in ((3.0, (0.3, 1.0)), (2.0, (0.0, 0.3)), (0.5 + float(torch.rand((), generator=g)) * 4, (0.1, 5.0))):
        ref = CFG(w, interval=(lo, hi)).weight(sigma)
        out = _tensor(interval_weight(w, sigma, lo, hi), "interval_weight", sigma.shape)
        if not _close(out, ref):
            bad = int((out.double() - ref.double()).abs().argmax())
            raise AssertionError(f"w={w:g}, interval ({lo}, {hi}]: at sigma={float(sigma[bad]):.4g} you give "
                                 f"{float(out[bad]):.4g}, expected {float(ref[bad]):.4g}. Guidance is on where lo < sigma "
                                 "<= hi (open below, closed above) and the weight is 1 (no guidance, not 0) elsewhere")
    _ok("interval_weight matches toydiff.guidance (on in (lo, hi], weight 1 outside, both ends right)")
