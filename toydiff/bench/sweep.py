"""The guidance benchmark: every method of the guidance registry, swept over its weight, scored against the exact
ground truth.

For each dataset (`toydiff.bench_models.BENCH_DATASETS`) and method (`method_names()`: every recipe registered in
`toydiff.guidance`, plus the exact denoiser as a reference row), n samples per weight, the classes in turn
(label i % C), are drawn with the toy sampler, EDM Heun, zoo.STEPS = 32 steps (a re-noising method, CFG++: Euler
with the same 63 denoiser evaluations), from the SAME start noise for every method and weight (common random
numbers), but from sigma_max = 10, not the zoo's 5. The data's extent (std <= 0.71) would allow 5, but every class
starts from N(0, sigma_max^2 I) while p(x; sigma_max | c) is centred on the class mean mu_c, and the probability
flow is a bijection, so even the exact denoiser's samples keep the start's TV of about
|mu_c| / (sigma_max sqrt(2 pi)): on three_gaussians (|mu_c| = 0.70) 0.056 from 5, 0.028 from 10; measured there
(exact denoiser, 60000 samples per class, 32 x 32 bins, floor 0.036): TV 0.063 from 5, 0.042 from 10
(benchmarks/bench_start_bias.py; every dataset is closer to its floor from 10).
One sampler call covers the whole sweep of a method: each row carries its own weight (a per-row schedule
w(sigma)); a recipe that only takes a number gets one call per weight.

Per class c, then averaged over the classes, against true samples of p(x | c): every metric of
toydiff.metrics.DEFINITIONS (metrics.evaluate), among them
  outlier_fraction   share below the 1% quantile of the true log p(x | c)
  precision, recall   k-NN manifolds, k = 3 (Kynkaanniemi et al. 2019)
  class_accuracy     share whose exact MAP class is c
  energy_distance    energy distance to true samples (Szekely & Rizzo 2013)
  tv, kl     the sample histogram against the EXACT mass of p(x | c) in each bin (toydiff.histogram); its noise
             floor, the TV of n true samples (mean and std over FLOOR_SEEDS seeds), is reported beside it
CRITERION: the best weight of a method is the one with the smallest tv (ties: the smaller weight), and the
leaderboard ranks the methods by that tv. Weights: w = 1 is no guidance (Ho & Salimans' w is w - 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import guidance, samplers
from ..toy import metrics
from .models import BENCH_DATASETS, BenchModels, bench_models
from .sampler_table import sampler_table
from ..core.denoiser import renoise_of
from ..toy.histogram import noise_floor
from ..infra.validation import check_positive_int
from ..toy.zoo import STEPS

__all__ = ["BenchConfig", "FULL", "FAST", "CRITERION", "METRICS", "GRIDS", "grid", "method_names", "run_method",
           "bench_dataset", "check_names", "run"]

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 10.0, 7.0      # sigma_max 10, not zoo.SIGMA_MAX = 5: the class means (docstring)
CRITERION = "tv"
FLOOR_SEEDS = 4
METRICS = tuple(metrics.DEFINITIONS)             # the one vocabulary: toydiff.metrics
# CFG++'s lambda acts like CFG's w_t = lambda sigma / (sigma - sigma') per Euler step (toydiff.guidance.CFGpp):
# with these 63 steps sigma / (sigma - sigma') is about 7, so lambda ~ 0.14 is no guidance and 0.4 about w = 3
CFGPP_GRID = (0.1, 0.15, 0.2, 0.3, 0.4, 0.6)


# weights swept where the shared grid does not fit: the exact row has only w = 1, CFG++'s lambda lives in [0, 1]
GRIDS: dict[str, tuple[float, ...]] = {"exact": (1.0,), "cfgpp": CFGPP_GRID}
LABELS = {"exact": "exact denoiser", "none": "no guidance", "cfg": "CFG (null label)", "cfg_interval": "CFG + interval",
          "cfg_rescale": "CFG + rescale 0.7", "apg": "APG", "cfg_separate": "CFG (separate uncond.)",
          "cfgpp": r"CFG++ ($\lambda$)", "classifier": "classifier guid.", "autoguidance_interval": "autoguid. + interval",
          "cfg_zero_star": "CFG-Zero*", "linear_cfg": "CFG, linear schedule"}   # others: the name
EXACT = "exact"   # the reference row: the true mixture's denoiser, unguided


def method_names() -> list[str]:
    """The benchmark's methods: every recipe of the toydiff.guidance registry, after the exact reference row."""
    return [EXACT, *guidance.names()]


def grid(name: str, config: BenchConfig) -> tuple[float, ...]:
    """The weights method `name` is swept over: GRIDS', w = 1 alone for a recipe without a weight
    (toydiff.guidance.takes_weight: "none"), else the shared grid."""
    if name in GRIDS:
        return GRIDS[name]
    return config.grid if guidance.takes_weight(name) else (1.0,)


def _denoiser(name: str, models: BenchModels, w: guidance.Weight) -> Callable:
    """The denoiser of method `name` at weight w (a number, or a per-row schedule)."""
    if name == EXACT:
        return models.data
    made = guidance.make(name, w, guide=models.guide, classifier=models.classifier.log_prob, uncond=models.uncond)
    return guidance.guided(models.main, made)


@dataclass(frozen=True)
class BenchConfig:
    """n: samples per weight (all classes together); grid: the weights > 1 swept (w = 1 is the "none" row, where
    every curve starts); bins: histogram bins per axis; samplers: also the samplers at equal cost
    (`sampler_table`)."""
    n: int = 4096
    grid: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0)
    bins: int = 32
    seed: int = 0
    samplers: bool = True


FULL = BenchConfig()
FAST = BenchConfig(n=600, grid=(1.5, 3.0), bins=12)


def _rows(values: Tensor) -> guidance.Weight:
    """A weight schedule that gives row i the weight values[i] at every sigma."""
    return lambda sigma: values.to(sigma.dtype)


def run_method(name: str, models: BenchModels, config: BenchConfig) -> tuple[tuple[float, ...], Tensor, Tensor]:
    """Sample method `name` over its whole grid: (weights [G], samples [G, n, 2], labels [n]). One sampler call
    with a weight per row where the recipe takes a schedule; one call per weight where it wants a number."""
    weights = grid(name, config)
    n, classes = config.n, models.data.num_classes
    labels = torch.arange(n) % classes
    start = torch.randn(n, 2, generator=torch.Generator().manual_seed(config.seed)) * SIGMA_MAX
    try:
        w_rows = torch.tensor(weights, dtype=torch.float64).repeat_interleave(n)
        calls = [(_denoiser(name, models, weights[0] if len(weights) == 1 else _rows(w_rows)), len(weights))]
    except (TypeError, ValueError):                                             # a recipe that takes numbers only
        calls = [(_denoiser(name, models, w), 1) for w in weights]
    dtype = torch.float64 if name == EXACT else torch.float32
    out = []
    for denoiser, k in calls:
        sampler = "euler" if renoise_of(denoiser) is not None else "heun"       # CFG++ re-noises: Euler only
        steps = 2 * STEPS - 1 if sampler == "euler" else STEPS                  # the same denoiser evaluations
        out.append(samplers.sample(denoiser, start.repeat(k, 1).to(dtype), labels.repeat(k), method=sampler,
                                   steps=steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO))
    return weights, torch.cat(out).float().reshape(len(weights), n, 2), labels


def _score(x: Tensor, labels: Tensor, models: BenchModels, references: list[Tensor], bins: int) -> dict[str, float]:
    """The METRICS of samples x [n, 2] meant to follow p(x | labels) (toydiff.metrics.evaluate per class, against
    its true samples), averaged over the classes."""
    per_class = [metrics.evaluate(x[labels == c], models.data, c, reference=ref, bins=bins)
                 for c, ref in enumerate(references)]
    return {k: sum(m[k] for m in per_class) / len(per_class) for k in METRICS}


def bench_dataset(name: str, models: BenchModels, config: BenchConfig, methods: list[str],
                  progress: bool = False) -> dict:
    """The sweep and the best weight (CRITERION) of every method on one dataset, with the histogram noise floor."""
    data, n = models.data, config.n
    counts = [int((torch.arange(n) % data.num_classes == c).sum()) for c in range(data.num_classes)]
    references = [data.sample(k, cond=c, generator=torch.Generator().manual_seed(config.seed + 1 + c))[0].float()
                  for c, k in enumerate(counts)]
    # the divergences of true samples, per seed averaged over the classes; their spread says which gaps are noise
    floors = torch.tensor([[[noise_floor(data, c, k, bins=config.bins, seed=config.seed + 100 + 10 * s + c)[m]
                             for m in ("tv", "kl")] for c, k in enumerate(counts)] for s in range(FLOOR_SEEDS)])
    per_seed = floors.mean(1)                                                   # [seeds, 2]
    out = dict(noise_floor=dict(tv=float(per_seed[:, 0].mean()), kl=float(per_seed[:, 1].mean()),
                                tv_std=float(per_seed[:, 0].std()), seeds=FLOOR_SEEDS), methods={})
    for method in tqdm(methods, desc=name, disable=not progress, leave=False):
        t0 = time.perf_counter()
        weights, x, labels = run_method(method, models, config)
        sweep = [dict(w=w, **_score(xs, labels, models, references, config.bins)) for w, xs in zip(weights, x)]
        best = min(sweep, key=lambda r: (round(r[CRITERION], 12), r["w"]))
        out["methods"][method] = dict(label=LABELS.get(method, method.replace("_", " ")), best=best, sweep=sweep,
                                      from_none=grid(method, config) == config.grid, seconds=time.perf_counter() - t0)
    if config.samplers:
        out["samplers"] = sampler_table(models, n, config.seed, (SIGMA_MIN, SIGMA_MAX, RHO),
                                        lambda x, y: _score(x, y, models, references, config.bins), progress)
    return out


def check_names(methods: list[str] | None, datasets: list[str] | None) -> tuple[list[str], list[str]]:
    """The method and dataset lists (all when None), or ValueError naming the unknown ones."""
    known_methods = method_names()
    methods, datasets = list(methods or known_methods), list(datasets or BENCH_DATASETS)
    for kind, names, known in (("method", methods, known_methods), ("dataset", datasets, BENCH_DATASETS)):
        unknown = [x for x in names if x not in known]
        if unknown or not names:
            raise ValueError(f"unknown {kind}(s) {unknown}; expected some of {sorted(known)}")
    return methods, datasets


def run(config: BenchConfig = FULL, methods: list[str] | None = None, datasets: list[str] | None = None,
        retrain: bool = False, progress: bool = False) -> dict:
    """The whole benchmark as a JSON-ready dict: the config, the criterion, and per dataset the noise floor and
    every method's sweep and best weight. Deterministic: the same config gives the same numbers."""
    methods, datasets = check_names(methods, datasets)
    check_positive_int(config.n, "n")
    result = dict(config=dict(n=config.n, grid=list(config.grid), bins=config.bins, seed=config.seed, steps=STEPS,
                              sigma_max=SIGMA_MAX), criterion=CRITERION, datasets={})
    for name in datasets:
        t0 = time.perf_counter()
        models = bench_models(name, retrain=retrain, seed=config.seed)
        result["datasets"][name] = bench_dataset(name, models, config, methods, progress)
        result["datasets"][name]["seconds"] = time.perf_counter() - t0
    return result
