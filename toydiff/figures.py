"""The reproductions behind `toydiff demo`: each returns a matplotlib Figure and the numbers it shows.

- `tree_figure`: Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself"), Fig. 1, on
  `tree()`: true samples, no guidance, CFG, naive score scaling and autoguidance over the true density, the
  main and guide densities (probability-flow ODE), their log-ratio with the score-difference arrows, and
  zoomed sampling trajectories.
- `cfg_figure`: Ho & Salimans 2022, Fig. 2, on `three_gaussians()`: the exact guided conditionals
  p(x|c)^w p(x)^(1-w) beside what the CFG sampler really produces with the EXACT denoiser.
- `sweep`: w from 1 to 6 for CFG and autoguidance (the 2D analogue of the FID/IS tables).
- `degradation_study`: Karras et al. 2024, Sec. 5 (synthetic degradations): main and guide degraded by dropout
  or input noise; matched vs mismatched degradations.

Weights follow toydiff.guidance: w = 1 is no guidance (Ho & Salimans' w is w - 1).
Sampling: EDM Heun, 32 steps, sigma in [0.002, SIGMA_MAX], rho = 7 (Karras et al. 2022). SIGMA_MAX = 10 = 20
sigma_data: the data's std 0.5 changes the std of p(x; 10) by 0.1%, so starting from N(0, 10^2 I) is exact
for all practical purposes, while 80 (the image value) would spend steps on sigmas where nothing happens.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import torch
from matplotlib import ticker
from matplotlib.figure import Figure
from torch import Tensor

from . import datasets, density, metrics, plot, samplers
from .guidance import CFG, AutoGuidance, ScoreScaling, guided, to_ho_salimans
from .nets import MLPDenoiser
from .training import load_model, save_checkpoint, torch_threads, train
from .validation import check_positive_int

__all__ = ["SIGMA_MAX", "STEPS", "WEIGHTS", "CFG_INTERVAL", "METHODS", "CHECKPOINT_DIR", "MODEL_SPECS", "ToyModels",
           "class_a_box", "outer_branch_box", "train_model", "train_models", "save_model",
           "save_models", "load_models", "pretrained", "method_denoiser", "draw", "Degraded", "tree_figure",
           "cfg_figure", "sweep", "degradation_study", "demo", "format_table"]

SIGMA_MAX = 10.0
STEPS = 32
WEIGHTS = {"none": 1.0, "cfg": 4.0, "score_scaling": 1.5, "autoguidance": 3.0}   # the paper's toy: CFG 4, auto 3
# CFG only where sigma <= 0.3 (Kynkaanniemi et al. 2024): full-range CFG overshoots class A to the far branch tips,
# where the network is poor (cf. Chidambaram et al. 2024, "What does guidance do?"), see the sweep
CFG_INTERVAL = (0.0, 0.3)
CHECKPOINT_DIR = Path(__file__).with_name("checkpoints")
# main 4 x 64; guide 4 x 32 trained 1/8 as long (Karras et al. 2024, Sec. 4 toy); both class-conditional with
# condition dropout 0.1 (Ho & Salimans 2022) so that CFG works too
MODEL_SPECS = {"tree_main": dict(width=64, depth=4, steps=4096), "tree_guide": dict(width=32, depth=4, steps=512)}
CLASS_A = 0


@dataclass
class ToyModels:
    """The main and guide denoisers of the tree toy (EMA weights, eval mode)."""
    main: MLPDenoiser
    guide: MLPDenoiser


def train_model(name: str, seed: int = 0, progress: bool = True) -> MLPDenoiser:
    """Train one model of MODEL_SPECS on tree() from scratch and return its EMA (seeded, bit-reproducible)."""
    if name not in MODEL_SPECS:
        raise ValueError(f"name must be one of {sorted(MODEL_SPECS)}, got {name!r}")
    spec = MODEL_SPECS[name]
    model = MLPDenoiser(num_classes=2, width=spec["width"], depth=spec["depth"], seed=seed)
    return train(model, datasets.tree(), steps=spec["steps"], p_uncond=0.1, seed=seed, progress=progress).ema


def train_models(seed: int = 0, progress: bool = True) -> ToyModels:
    """Train the main and guide models on tree() from scratch (MODEL_SPECS)."""
    return ToyModels(train_model("tree_main", seed, progress), train_model("tree_guide", seed, progress))


def save_model(name: str, model: MLPDenoiser, directory: str | os.PathLike = CHECKPOINT_DIR, seed: int = 0) -> Path:
    """Write a model's float32 EMA weights (only) as the toydiff checkpoint `<directory>/<name>.pt`."""
    os.makedirs(directory, exist_ok=True)
    path = Path(directory) / f"{name}.pt"
    steps = MODEL_SPECS[name]["steps"]
    empty = torch.optim.Adam(model.parameters())              # no moments: the shipped file holds weights only
    save_checkpoint(path, model, model, empty, steps, dict(steps=steps, p_uncond=0.1, seed=seed, dataset="tree"))
    return path                                               # (model is its own EMA: one copy of the tensors)


def save_models(models: ToyModels, directory: str | os.PathLike = CHECKPOINT_DIR, seed: int = 0) -> list[Path]:
    """Write tree_main.pt and tree_guide.pt into `directory`."""
    return [save_model("tree_main", models.main, directory, seed), save_model("tree_guide", models.guide, directory, seed)]


def load_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> ToyModels:
    """Load tree_main.pt and tree_guide.pt (FileNotFoundError / ValueError from toydiff.training when bad)."""
    return ToyModels(load_model(Path(directory) / "tree_main.pt"), load_model(Path(directory) / "tree_guide.pt"))


def pretrained(retrain: bool = False, seed: int = 0, progress: bool = True) -> ToyModels:
    """The shipped checkpoints, or freshly trained models with `retrain=True`."""
    return train_models(seed, progress) if retrain else load_models()


METHODS = (*WEIGHTS, "cfg_interval")


def method_denoiser(models: ToyModels, method: str, w: float | None = None) -> Callable:
    """The denoiser of a named method: none, cfg, score_scaling, autoguidance, or cfg_interval (CFG limited to
    CFG_INTERVAL); w defaults to WEIGHTS (cfg_interval: the CFG weight)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    w = WEIGHTS.get(method, WEIGHTS["cfg"]) if w is None else w
    if method == "none" or w == 1:
        return models.main
    guidance = {"cfg": lambda: CFG(w), "score_scaling": lambda: ScoreScaling(w),
                "cfg_interval": lambda: CFG(w, interval=CFG_INTERVAL),
                "autoguidance": lambda: AutoGuidance(models.guide, w)}[method]()
    return guided(models.main, guidance)


def draw(denoiser: Callable, n: int, cls: int, seed: int, trajectory: bool = False) -> Any:
    """n samples of class `cls` with EDM Heun (STEPS steps up from SIGMA_MAX), start noise from `seed`."""
    n = check_positive_int(n, "n")
    return samplers.sample(denoiser, (n, 2), torch.full((n,), cls, dtype=torch.long), steps=STEPS,
                           sigma_max=SIGMA_MAX, generator=torch.Generator().manual_seed(seed),
                           return_trajectory=trajectory)


class Degraded:
    """A synthetically degraded copy of a network (Karras et al. 2024, Sec. 5).

    `kind="dropout"`: a fixed random share `amount` of the hidden units is switched off (the rest scaled by
    1 / (1 - amount)); the units are ranked by one draw from `seed`, so with the same seed a stronger dropout
    removes a superset of the units of a weaker one, "the same kind of error, only more".
    `kind="input_noise"`: D(x + amount * sigma * n; sigma) with fresh noise n on every call: a model that sees
    noisier inputs than it is told.
    """

    def __init__(self, model: MLPDenoiser, kind: str, amount: float, seed: int = 0):
        if kind not in ("dropout", "input_noise"):
            raise ValueError(f"kind must be 'dropout' or 'input_noise', got {kind!r}")
        if not 0 <= amount < 1:
            raise ValueError(f"amount must lie in [0, 1), got {amount}")
        self.kind, self.amount, self.gen = kind, float(amount), torch.Generator().manual_seed(seed)
        self.model = copy.deepcopy(model)
        if kind == "dropout":
            for layer in self.model.hidden:
                keep = torch.rand(layer.out_features, generator=self.gen) >= self.amount
                layer.register_forward_hook(lambda mod, inp, out, keep=keep: out * keep / (1 - self.amount))

    def __call__(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        if self.kind == "input_noise":
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
            x = x + self.amount * s * torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
        return self.model(x, sigma, cond)

    def __repr__(self) -> str:
        return f"Degraded({self.kind}={self.amount})"


# ---------------------------------------------------------------------------------------------------------
def class_a_box(dist, pad: float = 0.1) -> tuple[float, float, float, float]:
    """A square box around the component means of class A, padded."""
    m = dist.means[dist.labels == CLASS_A]
    lo, hi = m.min(0).values - pad, m.max(0).values + pad
    c, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return (float(c[0]) - half, float(c[0]) + half, float(c[1]) - half, float(c[1]) + half)


def _reference(dist, n: int, seed: int) -> Tensor:
    return dist.sample(n, cond=CLASS_A, generator=torch.Generator().manual_seed(seed + 1))[0]


def tree_figure(models: ToyModels, *, n: int = 4000, seed: int = 0, grid_res: int = 160, density_res: int = 64,
                density_sigma: float = 0.03) -> tuple[Figure, dict[str, dict[str, float]]]:
    """Autoguidance Fig. 1 on tree(), class A. Returns the figure and {method: metrics} (plus "true")."""
    tree = datasets.tree()
    grid = density.make_grid(class_a_box(tree), grid_res)
    true_logp = tree.log_prob(grid.points, 0.0, CLASS_A)
    ref = _reference(tree, n, seed)
    true = tree.sample(n, cond=CLASS_A, generator=torch.Generator().manual_seed(seed + 2))[0]
    results = {"true": metrics.evaluate(true, tree, CLASS_A, reference=ref, seed=seed)}
    fig, axes = plot.figure(2, 5, size=3.2)
    plot.samples_panel(true, axes[0, 0], grid=grid, log_density=true_logp, color=plot.COLORS["true"],
                       title=plot.title_with_metrics("ground truth", results["true"]))
    labels = {"none": "no guidance", "cfg": "CFG", "score_scaling": "score scaling", "autoguidance": "autoguidance"}
    for i, method in enumerate(WEIGHTS):
        x = draw(method_denoiser(models, method), n, CLASS_A, seed)
        results[method] = dict(w=WEIGHTS[method], **metrics.evaluate(x, tree, CLASS_A, reference=ref, seed=seed))
        name = labels[method] + ("" if method == "none" else f" (w={WEIGHTS[method]:g})")
        plot.samples_panel(x, axes[0, i + 1], grid=grid, log_density=true_logp,
                           title=plot.title_with_metrics(name, results[method]))
    # row 2: learned densities of main and guide at a small sigma (PF-ODE), their ratio and its gradient
    zoom = outer_branch_box(tree)
    dgrid = density.make_grid(zoom, density_res)
    cond = torch.full((dgrid.points.shape[0],), CLASS_A, dtype=torch.long)
    logp = {}
    for k, (name, model) in enumerate((("main", models.main), ("guide", models.guide))):
        logp[name] = density.normalize_on_grid(density.ode_log_density(
            model, dgrid.points, cond, sigma=density_sigma, sigma_max=SIGMA_MAX, steps=32), dgrid)
        plot.density_panel(dgrid, logp[name], axes[1, k], log_scale=True,
                           title=f"{name}: log p(x|A; s={density_sigma:g})\nPF-ODE, zoom")
    plot.ratio_panel(dgrid, logp["main"] - logp["guide"], axes[1, 2], every=max(1, density_res // 12),
                     field=lambda p: density.ratio_gradient(models.main, models.guide, p, density_sigma,
                                                             torch.full((p.shape[0],), CLASS_A, dtype=torch.long)),
                     title="log(p_main / p_guide)\narrows: (D_1 - D_0) / s^2")
    zgrid = density.make_grid(zoom, 100)
    zoom_logp = tree.log_prob(zgrid.points, 0.0, CLASS_A)
    for k, method in enumerate(("none", "autoguidance")):
        _, traj = draw(method_denoiser(models, method), 300, CLASS_A, seed + 7, trajectory=True)
        plot.samples_panel(torch.empty(0, 2), axes[1, 3 + k], grid=zgrid, log_density=zoom_logp)
        plot.trajectories_panel(traj, axes[1, 3 + k], title=f"trajectories (zoom)\n{labels[method]}")
        axes[1, 3 + k].set_xlim(zoom[:2]), axes[1, 3 + k].set_ylim(zoom[2:])
    fig.suptitle("Autoguidance Fig. 1 on tree(), class A (Karras et al. 2024); w = 1 is no guidance", y=1.0)
    return fig, results


def outer_branch_box(tree) -> tuple[float, float, float, float]:
    """A box on the outer branches of class A (where unguided models leave outliers)."""
    m = tree.means[tree.labels == CLASS_A]
    tip = m[(m.norm(dim=1)).argsort()[int(0.8 * len(m))]]
    half = 0.2 * float((tree.means.max(0).values - tree.means.min(0).values).max())
    return (float(tip[0]) - half, float(tip[0]) + half, float(tip[1]) - half, float(tip[1]) + half)


def cfg_figure(*, n: int = 4000, seed: int = 0, ws: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0),
               grid_res: int = 120) -> tuple[Figure, dict[str, Any]]:
    """CFG Fig. 2 (Ho & Salimans 2022) on three_gaussians(): top, the marginal and the exact guided conditionals
    p_w(x|c) for each class (one colour per class); bottom, what the CFG sampler produces with the exact
    denoiser. Total variation between the two on a 40 x 40 histogram grid in the titles (w = 1: the noise floor)."""
    dist = datasets.three_gaussians()
    grid = density.make_grid((-3.0, 3.0, -3.0, 3.0), grid_res)
    hist_grid = density.make_grid(grid.extent, 40)
    colors = torch.tensor([[0.84, 0.15, 0.16], [0.12, 0.47, 0.71], [0.17, 0.63, 0.17]], dtype=torch.float64)
    fig, axes = plot.figure(2, len(ws) + 1, size=2.8)
    plot.density_panel(grid, dist.log_prob(grid.points, 0.0), axes[0, 0], title="marginal p(x)")
    tv = {}
    for j, w in enumerate(ws):
        img = torch.ones(grid_res, grid_res, 3, dtype=torch.float64)
        tvs = []
        for c in range(dist.num_classes):
            logp = density.guided_log_density(dist, c, w, grid)
            p = grid.image((logp - logp.max()).exp())
            img = img * (1 - p[..., None] * (1 - colors[c]))                   # multiply-blend one colour per class
            x = draw(guided(dist, CFG(w)), n, c, seed + c)
            axes[1, j + 1].scatter(x[:, 0], x[:, 1], s=0.5, color=colors[c].numpy(), linewidths=0, alpha=0.6)
            hist = torch.histogramdd(x.double().clamp(-2.999, 2.999), bins=[40, 40],
                                     range=list(grid.extent)).hist.T.reshape(-1) / n
            exact = density.guided_log_density(dist, c, w, hist_grid).exp() * hist_grid.cell_area
            tvs.append(0.5 * float((hist - exact).abs().sum()))
        tv[str(w)] = sum(tvs) / len(tvs)
        axes[0, j + 1].imshow(img.numpy(), origin="lower", extent=grid.extent)
        axes[0, j + 1].set_title(f"exact p_w(x|c), w={w:g}\n(Ho-Salimans w={to_ho_salimans(w):g})")
        axes[1, j + 1].set_xlim(grid.extent[:2]), axes[1, j + 1].set_ylim(grid.extent[2:])
        axes[1, j + 1].set_title(f"sampler, w={w:g}\nTV to p_w: {tv[str(w)]:.2f}")
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, "Top: the density CFG is said to sample.\nBottom: what the ODE sampler\nproduces "
                    "with the exact denoiser.\nThey differ for w > 1: the guided\nscores are not the scores of "
                    "one\ndiffused density.", fontsize=7, va="center")
    fig.suptitle("CFG Fig. 2 on three_gaussians() (Ho & Salimans 2022): p_w(x|c) ~ p(x|c)^w p(x)^(1-w) vs the sampler",
                 y=1.02)
    return fig, {"tv_sampler_vs_exact": tv}


def sweep(models: ToyModels, *, ws: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0), n: int = 4000,
          seed: int = 0) -> tuple[Figure, dict[str, dict[str, dict[str, float]]]]:
    """CFG, autoguidance (and CFG limited to CFG_INTERVAL) for each w: outlier fraction, precision, recall,
    class accuracy (class A of tree(); w = 1 is the unguided model for all three)."""
    tree = datasets.tree()
    ref = _reference(tree, n, seed)
    table: dict[str, dict[str, dict[str, float]]] = {"cfg": {}, "autoguidance": {}, "cfg_interval": {}}
    unguided = metrics.evaluate(draw(models.main, n, CLASS_A, seed), tree, CLASS_A, reference=ref, seed=seed)
    for method in table:
        for w in ws:
            table[method][f"{w:g}"] = unguided if w == 1 else metrics.evaluate(
                draw(method_denoiser(models, method, w), n, CLASS_A, seed), tree, CLASS_A, reference=ref, seed=seed)
    keys = ("outlier_fraction", "precision", "recall", "class_accuracy")
    fig, axes = plot.figure(1, len(keys), size=2.4)
    for ax, key in zip(axes[0], keys):
        ax.set_aspect("auto"), ax.set_xticks(list(ws)), ax.yaxis.set_major_locator(ticker.AutoLocator())
        for method, style in (("cfg", "o-"), ("autoguidance", "s-"), ("cfg_interval", "^:")):
            ax.plot(ws, [table[method][f"{w:g}"][key] for w in ws], style, ms=3, lw=1, label=method)
        if key == "outlier_fraction":
            ax.axhline(0.01, color="0.5", lw=0.5, ls="--", label="true samples")
        ax.set_xlabel("w (1 = no guidance)"), ax.set_title(key)
    axes[0, 2].legend(fontsize=6)
    fig.suptitle("Guidance weight sweep on tree(), class A", y=1.02)
    fig.tight_layout()
    return fig, table


def degradation_study(models: ToyModels, *, n: int = 4000, seed: int = 0, w: float = 2.0,
                      main_amount: dict[str, float] | None = None, guide_amount: dict[str, float] | None = None
                      ) -> tuple[Figure, dict[str, dict[str, float]]]:
    """Karras et al. 2024, Sec. 5, in 2D: the main model degraded by dropout or input noise, guided (w) by the
    main model degraded more strongly in the same way (matched) or the other way (mismatched)."""
    main_amount = main_amount or {"dropout": 0.05, "input_noise": 0.3}
    guide_amount = guide_amount or {"dropout": 0.1, "input_noise": 0.6}
    tree = datasets.tree()
    ref = _reference(tree, n, seed)
    rows: dict[str, dict[str, float]] = {}
    grid = density.make_grid(class_a_box(tree), 120)
    true_logp = tree.log_prob(grid.points, 0.0, CLASS_A)
    fig, axes = plot.figure(2, 3, size=3.6)
    for i, kind in enumerate(("dropout", "input_noise")):
        main = Degraded(models.main, kind, main_amount[kind], seed)
        cases = [(f"main: {kind} {main_amount[kind]:g}, unguided", main)]
        for gkind in ("dropout", "input_noise"):
            guide = Degraded(models.main, gkind, guide_amount[gkind], seed)
            tag = "matched" if gkind == kind else "mismatched"
            cases.append((f"main: {kind} {main_amount[kind]:g}, guide: {gkind} {guide_amount[gkind]:g} ({tag})",
                          guided(main, AutoGuidance(guide, w))))
        for j, (name, den) in enumerate(cases):
            x = draw(den, n, CLASS_A, seed)
            rows[name] = metrics.evaluate(x, tree, CLASS_A, reference=ref, seed=seed)
            plot.samples_panel(x, axes[i, j], grid=grid, log_density=true_logp,
                               title=plot.title_with_metrics(name.replace(", ", "\n"), rows[name]))
    fig.suptitle(f"Degradation study (Karras et al. 2024, Sec. 5), autoguidance w={w:g}", y=1.03)
    return fig, rows


# ---------------------------------------------------------------------------------------------------------
def format_table(results: dict[str, dict[str, float]], keys=("outlier_fraction", "precision", "recall",
                                                              "class_accuracy", "log_likelihood")) -> str:
    """A fixed-width text table, one row per method."""
    width = max(len(k) for k in results) + 2
    lines = [f"{'method':{width}s}" + "".join(f"{k[:16]:>17s}" for k in keys)]
    for name, m in results.items():
        lines.append(f"{name:{width}s}" + "".join(f"{m[k]:17.4f}" for k in keys))
    return "\n".join(lines)


def demo(out: str | os.PathLike = "toydiff-demo", *, retrain: bool = False, fast: bool = False, seed: int = 0,
         progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything `toydiff demo` does: models (shipped or retrained), the four reproductions as PNGs in `out`,
    metrics.json ({"methods": {none, cfg, score_scaling, autoguidance}, "sweep", "degradation", ...}) and a table.
    `fast`: small sample counts and grids (for tests). Runs on one torch thread (see `training.torch_threads`)."""
    with torch_threads(1):
        return _demo(Path(out), retrain, fast, seed, progress, log)


def _demo(out: Path, retrain: bool, fast: bool, seed: int, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    n = 1500 if fast else 4000
    t0 = time.perf_counter()
    models = pretrained(retrain, seed, progress)
    timing = {"models": time.perf_counter() - t0}
    report: dict[str, Any] = {"settings": dict(n=n, seed=seed, fast=fast, retrain=retrain, steps=STEPS,
                                               sigma_max=SIGMA_MAX, weights=WEIGHTS, cfg_interval=CFG_INTERVAL)}
    jobs = [("tree", lambda: tree_figure(models, n=n, seed=seed, grid_res=100 if fast else 160,
                                         density_res=24 if fast else 64)),
            ("cfg", lambda: cfg_figure(n=500 if fast else n, seed=seed, grid_res=60 if fast else 120)),
            ("sweep", lambda: sweep(models, n=n // 2 if fast else n, seed=seed,
                                    ws=(1.0, 3.0, 6.0) if fast else (1.0, 2.0, 3.0, 4.0, 5.0, 6.0))),
            ("degradation", lambda: degradation_study(models, n=n // 2 if fast else n, seed=seed))]
    for name, job in jobs:
        t = time.perf_counter()
        fig, numbers = job()
        fig.savefig(out / f"{name}.png", dpi=60 if fast else 90, bbox_inches="tight")
        plt.close(fig)
        report["methods" if name == "tree" else name] = numbers
        timing[name] = time.perf_counter() - t
        log(f"[{timing[name]:5.1f} s] wrote {out / (name + '.png')}")
    report["true_samples"] = report["methods"].pop("true")
    timing["total"] = time.perf_counter() - t0
    report["timing_s"] = timing
    with open(out / "metrics.json", "w") as f:
        json.dump(report, f, indent=1)
    log("\nclass A of tree(), " + f"{n} samples per method (EDM Heun {STEPS} steps); w = 1 is no guidance\n"
        + format_table({"true samples": report["true_samples"], **{f"{k} (w={v['w']:g})": v
                                                                   for k, v in report["methods"].items()}}))
    log("\nweight sweep (w = 1: unguided):\n" + format_table(
        {f"{method} w={w}": m for method, rows in report["sweep"].items() for w, m in rows.items()},
        keys=("outlier_fraction", "precision", "recall", "class_accuracy")))
    log("\ndegradation study:\n" + format_table(report["degradation"], keys=("outlier_fraction", "precision", "recall")))
    log(f"\nwrote {out / 'metrics.json'} in {timing['total']:.1f} s")
    return report
