"""The optimal-weight study on the tree (notebook 07): w*(sigma) of CFG and autoguidance against the exact denoiser,
where the best weight could remove error, and an oracle guidance that samples with w*(sigma) as its schedule.

Both guides act on the same main model (class A of `datasets.tree()`, the zoo's `tree_main`): CFG with the paper's
separate unconditional D_0 (`tree_uncond`), autoguidance with the small, short-trained guide (`tree_guide`).
w*(sigma) is pooled over two sets of points (toydiff.optimal_weight): noisy true samples of class A ("typical
points") and the unguided sampler's own trajectories that END as outliers (where guidance has something to fix).
The oracle samples with the second schedule: the best w(sigma) of that guide, in the least-squares sense, for the
samples that go wrong.
"""
from __future__ import annotations

from typing import Any

import matplotlib.colors as mcolors
import torch
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..core import samplers
from ..core.denoiser import SeparateNull
from ..core.guidance import CFG, AutoGuidance, Guidance
from ..toy import datasets, metrics
from ..toy.density import make_grid
from ..toy.optimal_weight import WeightProfile, oracle_schedule, optimal_weight, weight_profile
from ..toy.zoo import SIGMA_MAX, STEPS, ToyModels, draw, guided_denoiser
from . import plot

__all__ = ["GUIDES", "WS", "branches", "profiles", "oracle_table", "optimal_weight_figure"]

CLASS_A = 0
GUIDES = {"cfg": "CFG (separate uncond. $D_0$)", "autoguidance": "autoguidance"}
WS = (1.5, 2.0, 3.0, 4.0)                              # the constant weights the oracle is compared with
VIEW = (-0.9, 1.5, -0.9, 1.5)                          # Karras et al. 2024, Fig. 1's view of the tree


def branches(models: ToyModels, name: str) -> tuple[Any, Guidance]:
    """(denoiser, guidance) whose `branches` give the D_1 and D_0 of guide `name` ("cfg" or "autoguidance")."""
    if name == "cfg":
        return SeparateNull(models.main, models.uncond), CFG()
    if name == "autoguidance":
        return models.main, AutoGuidance(models.guide)
    raise ValueError(f"name must be one of {list(GUIDES)}, got {name!r}")


def profiles(models: ToyModels, *, n: int = 4096, seed: int = 0) -> dict[str, dict[str, WeightProfile]]:
    """profiles[guide][points] for points "typical" (noisy true samples of class A, n of them) and "outliers" (the
    unguided sampler's trajectories, n started, that end below the outlier threshold), at the sampler's levels."""
    tree = datasets.tree()
    x, traj = draw(models.main, n, CLASS_A, seed, trajectory=True)
    bad = metrics.class_log_prob(x, tree)[:, CLASS_A] < metrics.outlier_threshold(tree, CLASS_A)
    sigmas = samplers.edm_sigmas(STEPS, 0.002, SIGMA_MAX)[:-1]
    out = {}
    for name in GUIDES:
        den, g = branches(models, name)
        out[name] = {"typical": weight_profile(den, g, tree, CLASS_A, sigmas, n=n, seed=seed),
                     "outliers": weight_profile(den, g, tree, CLASS_A, sigmas, points=traj[:-1][:, bad])}
    return out


def oracle_table(models: ToyModels, found: dict[str, dict[str, WeightProfile]], *, n: int = 2048,
                 seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """table[guide][label] = {outlier_fraction, precision, recall} of class A, n samples from the same start noise:
    label "1" (unguided), the constant weights WS, and "oracle" (w*(sigma) on the outlier trajectories)."""
    tree = datasets.tree()
    ref, _ = tree.sample(n, cond=CLASS_A, generator=torch.Generator().manual_seed(seed + 1))

    def measure(den) -> dict[str, float]:
        m = metrics.evaluate(draw(den, n, CLASS_A, seed), tree, CLASS_A, reference=ref, seed=seed)
        return {k: m[k] for k in ("outlier_fraction", "precision", "recall")}
    none = measure(models.main)
    return {name: {"1": none, **{f"{w:g}": measure(guided_denoiser(models, name, w)) for w in WS},
                   "oracle": measure(guided_denoiser(models, name, oracle_schedule(found[name]["outliers"])))}
            for name in GUIDES}


def _maps(models: ToyModels, sigma: float, resolution: int) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
    """The main model's error |D_1 - D*|^2 and, per guide, the removable part (w*(x) - 1)^2 |dD|^2 on a grid."""
    tree, grid = datasets.tree(), make_grid(VIEW, resolution)
    x = grid.points.float()
    cond = torch.full((x.shape[0],), CLASS_A)
    exact = tree(x.double(), sigma, cond)
    maps = {}
    with torch.no_grad():
        for name in GUIDES:
            den, g = branches(models, name)
            d1, delta = g.branches(den, x, torch.full((x.shape[0],), sigma), cond)
            best = optimal_weight(d1, d1 - delta, exact)
            maps[name], maps["error"] = best.removable, best.error
    return grid, maps, tree.log_prob(grid.points, sigma, CLASS_A)


def optimal_weight_figure(models: ToyModels, found: dict[str, dict[str, WeightProfile]],
                          table: dict[str, dict[str, dict[str, float]]], *, map_sigma: float = 0.1,
                          resolution: int = 160) -> Figure:
    """Top: w*(sigma) (lines: pooled; band: |dD|^2-weighted quartiles on the outlier trajectories), the share of the
    error w*(sigma) removes, and the outlier/recall plane (constant w vs the oracle). Bottom: at `map_sigma`, the
    main model's error and what each guide's best weight could remove of it, per x."""
    fig, axes = plot.figure(2, 3, size=3.6)
    colors = {"cfg": "#1f77b4", "autoguidance": "#d62728"}
    ax_w, ax_f, ax_p = axes[0]
    for ax in (ax_w, ax_f, ax_p):
        ax.set_aspect("auto"), ax.yaxis.set_major_locator(ticker.AutoLocator())
        ax.xaxis.set_major_locator(ticker.AutoLocator())
    for name, label in GUIDES.items():
        for points, style in (("outliers", "-"), ("typical", ":")):
            p = found[name][points]
            s = p.sigmas.numpy()
            ax_w.plot(s, p.w.numpy(), style, color=colors[name], lw=1.5,
                      label=f"{label}, {'outlier trajectories' if points == 'outliers' else 'typical points'}")
            ax_f.plot(s, p.fraction.numpy(), style, color=colors[name], lw=1.5)
            if points == "outliers":
                ax_w.fill_between(s, p.quartiles[:, 0].numpy(), p.quartiles[:, 2].numpy(), color=colors[name], alpha=0.15)
        rows = table[name]
        ws = ["1", *(f"{w:g}" for w in WS)]
        ax_p.plot([rows[w]["recall"] for w in ws], [rows[w]["outlier_fraction"] for w in ws], "o-", color=colors[name],
                  ms=4, lw=1.2)
        for w in ws[1:]:
            ax_p.annotate(w, (rows[w]["recall"], rows[w]["outlier_fraction"]), fontsize=plot.TITLE_SIZE - 1,
                          textcoords="offset points", xytext=(4, 3), color=colors[name])
        ax_p.plot(rows["oracle"]["recall"], rows["oracle"]["outlier_fraction"], "*", color=colors[name], ms=12)
    ax_w.axhline(1, color="0.5", lw=0.8, ls="--")
    for ax in (ax_w, ax_f):
        ax.set_xscale("log")
    for ax, ylabel, title in ((ax_w, r"$w^*(\sigma)$", r"least-squares weight $w^*(\sigma)$"),
                              (ax_f, "share of $|D_1 - D^*|^2$ removed", r"what $w^*(\sigma)$ removes")):
        ax.set_xlabel(r"$\sigma$"), ax.set_ylabel(ylabel), ax.set_title(title)
    ax_f.set_ylim(0, None)
    ax_p.axhline(0.01, color="0.5", lw=0.8, ls="--")
    ax_p.set_xlabel("recall (higher: more coverage)"), ax_p.set_ylabel("outlier fraction (0.01 = true samples)")
    ax_p.set_title("class A, outliers vs recall")
    handles, labels = ax_w.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.4", marker="o", ms=4, lw=1.2), Line2D([], [], color="0.4", marker="*", ms=12, lw=0)]
    labels += ["constant $w$ (numbers beside the points; 1 = none)", r"oracle: $w^*(\sigma)$ of the outlier trajectories"]
    fig.legend(handles, labels, loc="outside upper center", ncol=2, frameon=False)
    grid, maps, log_p = _maps(models, map_sigma, resolution)
    inside = (log_p - log_p.max()) > -6                            # where class A has mass at this sigma
    values = {k: v.clamp_min(1e-8) for k, v in maps.items()}
    norm = mcolors.LogNorm(vmin=float(values["error"][inside].quantile(0.1)), vmax=float(values["error"][inside].max()))
    titles = {"error": "main model's error $|D_1 - D^*|^2$",
              **{k: f"removable with {v.split(' (')[0]}: $(w^* - 1)^2|D_1 - D_0|^2$" for k, v in GUIDES.items()}}
    for ax, key in zip(axes[1], ("error", *GUIDES)):
        img = grid.image(torch.where(inside, values[key], torch.full_like(values[key], float("nan"))))
        im = ax.imshow(img.numpy(), origin="lower", extent=grid.extent, cmap="magma_r", norm=norm,
                       interpolation="nearest")
        plot.outline(ax, grid, log_p)
        ax.set_title(titles[key] + f"\n$\\sigma = {map_sigma:g}$", fontsize=plot.TITLE_SIZE)
        plot.colorbar(ax, im, "squared error (data units$^2$)")
    return fig
