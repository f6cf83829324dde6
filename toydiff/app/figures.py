"""The reproductions behind `toydiff demo`: each returns a matplotlib Figure and the numbers it shows.

- `tree_figure`: Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself"), Fig. 1, on
  `tree()`, drawn as the paper draws it: true samples, no guidance, CFG (the paper's setup and condition
  dropout), naive score scaling and autoguidance; the main and guide densities (probability-flow ODE) with their
  scores, their log-ratio with its gradient, and trajectories in the zoom from sigma = 0.03.
- `cfg_figure`: Ho & Salimans 2022, Fig. 2, on `three_gaussians()`: the exact guided conditionals
  p(x|c)^w p(x)^(1-w) beside what the CFG sampler really produces with the EXACT denoiser.
- `sweep`: w from 1 to 6 for CFG and autoguidance (the 2D analogue of the FID/IS tables).
- `degradation_study`: Karras et al. 2024, Sec. 5 (synthetic degradations): main and guide degraded by dropout
  or input noise; matched vs mismatched degradations.

Weights follow toydiff.guidance: w = 1 is no guidance (Ho & Salimans' w is w - 1); the models, the sampling
settings and the guided denoisers come from toydiff.zoo. `FIGURES` holds each reproduction's sizes (full and
"fast"), used by `reproduce`, the demo and the CLI alike.
"""
from __future__ import annotations

from typing import Any

import torch
from matplotlib import ticker
from matplotlib.figure import Figure
from torch import Tensor

from ..core import samplers
from ..core.guidance import CFG, AutoGuidance, guided, to_ho_salimans
from ..toy import datasets, density, metrics
from ..toy.zoo import SIGMA_MAX, STEPS, WEIGHTS, Degraded, ToyModels, draw, guided_denoiser
from . import plot

__all__ = ["CLASS_A", "FIGURES", "FULL_VIEW", "ZOOM", "ZOOM_SIGMA", "reproduce", "class_a_box", "spread_starts",
           "tree_regions", "samples_on_tree", "tree_figure", "cfg_figure", "sweep",
           "degradation_study", "format_table"]

CLASS_A = 0
# keyword arguments of each reproduction, full size and "fast" (seconds; for tests); n is the sample count
FIGURES: dict[str, dict[str, dict[str, Any]]] = {
    "tree": {"full": dict(n=4096, grid_res=200, density_res=128), "fast": dict(n=1500, grid_res=100, density_res=24)},
    "cfg": {"full": dict(n=4000, grid_res=120), "fast": dict(n=500, grid_res=60)},
    "sweep": {"full": dict(n=4000, ws=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)), "fast": dict(n=750, ws=(1.0, 3.0, 6.0))},
    "degradation": {"full": dict(n=4000), "fast": dict(n=750)},
}


def reproduce(name: str, models: ToyModels, *, fast: bool = False, seed: int = 0) -> tuple[Figure, dict[str, Any]]:
    """The reproduction `name` (a key of FIGURES) at its full or fast sizes: (figure, numbers)."""
    if name not in FIGURES:
        raise ValueError(f"name must be one of {list(FIGURES)}, got {name!r}")
    kwargs = dict(FIGURES[name]["fast" if fast else "full"], seed=seed)
    if name == "cfg":
        return cfg_figure(**kwargs)
    return {"tree": tree_figure, "sweep": sweep, "degradation": degradation_study}[name](models, **kwargs)


# ---------------------------------------------------------------------------------------------------------
def class_a_box(dist, pad: float = 0.1) -> tuple[float, float, float, float]:
    """A square box around the component means of class A, padded."""
    m = dist.means[dist.labels == CLASS_A]
    lo, hi = m.min(0).values - pad, m.max(0).values + pad
    c, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return (float(c[0]) - half, float(c[0]) + half, float(c[1]) - half, float(c[1]) + half)


FULL_VIEW = (-0.9, 1.5, -0.9, 1.5)      # Karras et al. 2024, Fig. 1: centre (0.3, 0.3), half-size 1.2
ZOOM = (0.15, 0.75, 0.92, 1.52)         # their zoom on an outer branch of class A: centre (0.45, 1.22), half-size 0.3
ZOOM_SIGMA = 0.03                       # their sigma for the zoomed densities, arrows and trajectories
TREE_PANELS = {"none": "no guidance", "cfg": "CFG, paper setup\n(separate uncond. $D_0$)",
               "cfg_dropout": "CFG, condition dropout\n(one network)", "score_scaling": "score scaling",
               "autoguidance": "autoguidance"}


def _reference(dist, n: int, seed: int) -> Tensor:
    return dist.sample(n, cond=CLASS_A, generator=torch.Generator().manual_seed(seed + 1))[0]


def spread_starts(x: Tensor, box: tuple[float, float, float, float], spacing: float) -> Tensor:
    """The points of x [N, 2] inside `box`, the first one in each square cell of side `spacing` (evenly spread)."""
    inside = x[(x[:, 0] > box[0]) & (x[:, 0] < box[1]) & (x[:, 1] > box[2]) & (x[:, 1] < box[3])]
    cell = ((inside - torch.tensor([box[0], box[2]], dtype=x.dtype)) / spacing).long()
    _, inverse = torch.unique(cell[:, 0] * 1_000_000 + cell[:, 1], return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(inside)).scatter_reduce(0, inverse, torch.arange(len(inside)),
                                                                              "amin")
    return inside[first.sort().values]


def tree_regions(grid: density.Grid, dist=None) -> tuple[Tensor, Tensor]:
    """(log p(x), log p(x | A)) of `dist` (default tree()) on `grid`: the shading of `samples_on_tree`."""
    dist = datasets.tree() if dist is None else dist
    return dist.log_prob(grid.points, 0.0, None), dist.log_prob(grid.points, 0.0, CLASS_A)


def samples_on_tree(ax: Any, x: Tensor, dist, grid: density.Grid, regions: tuple[Tensor, Tensor],
                    title: str | None = None) -> Any:
    """Class-A samples x [N, 2] as Karras et al. 2024 draw them (Fig. 1): small black dots over the data (class B
    grey, class A orange, `plot.class_regions`), and the outliers of `metrics.outliers` as larger red dots, so a
    single stray sample shows at lecture size."""
    x = x.detach().cpu()
    bad = metrics.outliers(x, dist, CLASS_A)
    plot.class_regions(ax, grid, *regions)
    ax.scatter(x[~bad, 0].numpy(), x[~bad, 1].numpy(), s=0.5, c="k", linewidths=0, alpha=0.5)
    ax.scatter(x[bad, 0].numpy(), x[bad, 1].numpy(), s=5, c=plot.COLORS["samples"], linewidths=0, zorder=3)
    if title:
        ax.set_title(title, fontsize=plot.TITLE_SIZE)
    return ax


def tree_figure(models: ToyModels, *, n: int = 4096, seed: int = 0, grid_res: int = 200, density_res: int = 128
                ) -> tuple[Figure, dict[str, dict[str, float]]]:
    """Karras et al. 2024, Fig. 1, on tree(), class A, drawn as the paper draws it. Top: ground truth, no guidance,
    CFG (paper setup and condition dropout), score scaling and autoguidance over the data (class B grey, class A
    orange), with outliers / precision / recall; the dashed box is the zoom of the bottom row. Bottom, in the zoom at
    sigma = ZOOM_SIGMA: the main and guide models' log-densities (PF-ODE) with their score arrows at evenly spread
    starting points; log p_1 - log p_0 and the difference of the score arrows, (D_1 - D_0) / sigma^2, which is what
    autoguidance adds (times w - 1; it would be the map's gradient if each network's output were the exact score of
    its own PF-ODE density, which a network only approximates); and sampling
    trajectories from those points (from sigma = ZOOM_SIGMA) without guidance, with CFG and with autoguidance.
    Returns the figure and {method: metrics} (plus "true")."""
    tree = datasets.tree()
    full, zoom = density.make_grid(FULL_VIEW, grid_res), density.make_grid(ZOOM, density_res)
    regions = tree_regions(full, tree)
    ref = _reference(tree, n, seed)
    true = tree.sample(n, cond=CLASS_A, generator=torch.Generator().manual_seed(seed + 2))[0]
    results = {"true": metrics.evaluate(true, tree, CLASS_A, reference=ref, seed=seed)}
    fig, (top_row, bottom_row) = plot.figure_rows(6, 4)
    for ax, method in zip(top_row, (None, *TREE_PANELS)):
        x = true if method is None else draw(guided_denoiser(models, method), n, CLASS_A, seed)
        if method is not None:
            results[method] = dict(w=WEIGHTS[method], **metrics.evaluate(x, tree, CLASS_A, reference=ref, seed=seed))
        name = "ground truth" if method is None else TREE_PANELS[method] + (
            "" if method == "none" else f", $w={WEIGHTS[method]:g}$")
        samples_on_tree(ax, x, tree, full, regions, title=plot.title_with_metrics(name, results[method or "true"]))
        plot.mark_box(ax, ZOOM)
    # bottom row: the zoom at sigma = ZOOM_SIGMA, from starts spread over p(x | A; ZOOM_SIGMA)
    pool = tree.sample(8 * n, cond=CLASS_A, sigma=ZOOM_SIGMA, generator=torch.Generator().manual_seed(seed + 3))[0]
    starts = spread_starts(pool.float(), ZOOM, 0.045)
    c, cz = (torch.full((m,), CLASS_A, dtype=torch.long) for m in (starts.shape[0], zoom.points.shape[0]))
    true_zoom = tree.log_prob(zoom.points, ZOOM_SIGMA, CLASS_A)
    logp, score = {}, {}
    for k, model in (("main", models.main), ("guide", models.guide)):
        logp[k] = density.normalize_on_grid(density.ode_log_density(model, zoom.points, cz, sigma=ZOOM_SIGMA,
                                                                    sigma_max=SIGMA_MAX, steps=24), zoom)
        with torch.no_grad():
            score[k] = (model(starts, ZOOM_SIGMA, c) - starts) / ZOOM_SIGMA ** 2
    for ax, (title, img, vec, cmap) in zip(bottom_row, (
            ("main model: $\\log p_1(x|A;\\sigma)$\narrows: its score", logp["main"], score["main"], "Greens"),
            ("guide: $\\log p_0(x|A;\\sigma)$\narrows: its score", logp["guide"], score["guide"], "Reds"),
            ("$\\log p_1 - \\log p_0$ (both PF-ODE)\narrows: $(D_1 - D_0)/\\sigma^2$", logp["main"] - logp["guide"],
             score["main"] - score["guide"], "Blues"))):
        image = zoom.image(img.detach().double())
        top = float(image.max())
        im = ax.imshow(image.numpy(), origin="lower", extent=zoom.extent, cmap=cmap, vmin=top - 8, vmax=top,
                       interpolation="bilinear")
        plot.colorbar(ax, im, "nats" if cmap != "Blues" else "nats (+ const.)")
        plot.outline(ax, zoom, true_zoom)
        ax.scatter(starts[:, 0].numpy(), starts[:, 1].numpy(), s=3, c="k", linewidths=0)
        plot.arrows(ax, starts, vec, 0.035)
        ax.set_title(title, fontsize=plot.TITLE_SIZE)
    ax = bottom_row[3]
    plot.density_panel(zoom, true_zoom, ax, log_scale=True, floor=8.0, cmap="Greys",
                       label="true $\\log p(x|A;\\sigma)$ (nats)")     # shading behind the paths
    for method, color in (("none", "0.35"), ("cfg", "#1f77b4"), ("autoguidance", "#d62728")):
        _, traj = samplers.sample(guided_denoiser(models, method), starts, c, steps=STEPS, sigma_max=ZOOM_SIGMA,
                                  return_trajectory=True)
        plot.trajectories_panel(traj, ax, color=color, alpha=0.9, width=0.8, label=TREE_PANELS[method].split("\n")[0])
    ax.legend(loc="lower right", framealpha=0.85, markerscale=2)
    ax.set_title(f"trajectories from $\\sigma={ZOOM_SIGMA:g}$ to 0", fontsize=plot.TITLE_SIZE)
    ax.set_xlim(ZOOM[:2]), ax.set_ylim(ZOOM[2:])
    fig.suptitle(f"Autoguidance Fig. 1 on tree(), class A (Karras et al. 2024); bottom row: the dashed zoom at "
                 f"$\\sigma={ZOOM_SIGMA:g}$; $w = 1$ is no guidance; red: outliers", fontsize=plot.TITLE_SIZE + 1)
    return fig, results


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
    plot.density_panel(grid, dist.log_prob(grid.points, 0.0), axes[0, 0], title="marginal $p(x)$",
                       label="$p(x)\\,/\\,\\max p$")
    tv = {}
    for j, w in enumerate(ws):
        img = torch.ones(grid_res, grid_res, 3, dtype=torch.float64)
        tvs = []
        for c in range(dist.num_classes):
            logp = density.guided_log_density(dist, c, w, grid)
            p = grid.image((logp - logp.max()).exp())
            img = img * (1 - p[..., None] * (1 - colors[c]))                   # multiply-blend one colour per class
            x = draw(guided(dist, CFG(w)), n, c, seed + c)
            axes[1, j + 1].scatter(x[:, 0], x[:, 1], s=1.5, color=colors[c].numpy(), linewidths=0, alpha=0.6)
            tvs.append(density.sample_tv(x, hist_grid, density.guided_log_density(dist, c, w, hist_grid)))
        tv[str(w)] = sum(tvs) / len(tvs)
        axes[0, j + 1].imshow(img.numpy(), origin="lower", extent=grid.extent)
        axes[0, j + 1].set_title(f"exact $p_w(x|c)$, $w={w:g}$\n(Ho & Salimans' $w={to_ho_salimans(w):g}$)")
        axes[1, j + 1].set_xlim(grid.extent[:2]), axes[1, j + 1].set_ylim(grid.extent[2:])
        axes[1, j + 1].set_title(f"sampler, $w={w:g}$\nTV to $p_w$: {tv[str(w)]:.2f}")
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, "Top: the density CFG is said to sample.\nBottom: what the ODE sampler\nproduces "
                    "with the exact denoiser.\nThey differ for $w > 1$: the guided\nscores are not the scores of "
                    "one\ndiffused density.", fontsize=plot.FONT, va="center")
    fig.suptitle("CFG Fig. 2 on three_gaussians() (Ho & Salimans 2022): $p_w(x|c) \\propto p(x|c)^w p(x)^{1-w}$ "
                 "(colour: each class's $p_w$ over its maximum) vs the sampler", fontsize=plot.TITLE_SIZE + 1)
    return fig, {"tv_sampler_vs_exact": tv}


def sweep(models: ToyModels, *, ws: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0), n: int = 4000,
          seed: int = 0) -> tuple[Figure, dict[str, dict[str, dict[str, float]]]]:
    """CFG, autoguidance (and the cfg_interval recipe: CFG on small sigma only) for each w: outlier fraction, precision, recall,
    class accuracy (class A of tree(); w = 1 is the unguided model for all three). Every axis starts at 0 (the shares
    end at 1): no truncated axis makes a 1% difference look dramatic."""
    tree = datasets.tree()
    ref = _reference(tree, n, seed)
    table: dict[str, dict[str, dict[str, float]]] = {"cfg": {}, "autoguidance": {}, "cfg_interval": {}}
    x1, path = draw(models.main, n, CLASS_A, seed, trajectory=True)
    unguided = metrics.evaluate(x1, tree, CLASS_A, reference=ref, seed=seed)
    for method in table:
        for w in ws:
            table[method][f"{w:g}"] = unguided if w == 1 else metrics.evaluate(
                _draw_after(guided_denoiser(models, method, w), path, CLASS_A, seed), tree, CLASS_A, reference=ref,
                seed=seed)
    keys = ("outlier_fraction", "precision", "recall", "class_accuracy")
    fig, axes = plot.figure(1, len(keys), size=3.0)
    for ax, key in zip(axes[0], keys):
        ax.set_aspect("auto"), ax.set_xticks(list(ws)), ax.yaxis.set_major_locator(ticker.AutoLocator())
        ax.tick_params(labelsize=plot.FONT)
        for method, style in (("cfg", "o-"), ("autoguidance", "s-"), ("cfg_interval", "^:")):
            ax.plot(ws, [table[method][f"{w:g}"][key] for w in ws], style, ms=4, lw=1.2, label=method)
        if key == "outlier_fraction":
            ax.axhline(0.01, color="0.5", lw=0.8, ls="--", label="true samples")
            ax.set_ylim(0, None)
        else:                               # shares from 0 to 1: a 1% difference looks like one
            ax.set_ylim(0, 1.03), ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        ax.set_xlabel("$w$ (1 = no guidance)", fontsize=plot.FONT + 1), ax.set_title(key.replace("_", " "), fontsize=plot.TITLE_SIZE)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=plot.FONT, frameon=False)
    fig.suptitle("Guidance weight sweep on tree(), class A (metrics: toydiff.metrics.DEFINITIONS)", fontsize=plot.TITLE_SIZE + 1)
    return fig, table


def _draw_after(den: Any, path: Tensor, cls: int, seed: int) -> Tensor:
    """`draw(den, n, cls, seed)`, given `path`, the trajectory of `draw(main, n, cls, seed, trajectory=True)`: where
    `den`'s guidance has an interval (cfg_interval's), its steps before the interval call the main model alone
    (weight 1), so the run continues from the main model's x at the first step that calls the guidance (step i
    evaluates D at sigma_i and sigma_{i+1}): the same arithmetic, bit for bit, without repeating those steps."""
    interval = getattr(getattr(den, "guidance", None), "interval", None)
    if interval is None:
        return draw(den, path.shape[1], cls, seed)
    levels = samplers.SCHEDULES["edm"](STEPS, sigma_max=SIGMA_MAX)                # draw()'s levels, ending in 0
    active = (levels > interval[0]) & (levels <= interval[1])
    i = int((active[:-1] | active[1:]).nonzero()[0])
    return samplers.sample(den, path[i], torch.full((path.shape[1],), cls), sigmas=levels[i:])


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
    regions = tree_regions(grid, tree)
    fig, axes = plot.figure(2, 3, size=3.0)
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
            samples_on_tree(axes[i, j], x, tree, grid, regions,
                            title=plot.title_with_metrics(name.replace(", ", "\n").replace("_", " "), rows[name]))
    fig.suptitle(f"Degradation study (Karras et al. 2024, Sec. 5), autoguidance $w={w:g}$", fontsize=plot.TITLE_SIZE + 1)
    return fig, rows


# ---------------------------------------------------------------------------------------------------------
def format_table(results: dict[str, dict[str, float]], keys=("outlier_fraction", "precision", "recall",
                                                              "class_accuracy", "log_likelihood", "energy_distance")) -> str:
    """A fixed-width text table, one row per method, one column per metric (defined in metrics.DEFINITIONS)."""
    width = max(len(k) for k in results) + 2
    lines = [f"{'method':{width}s}" + "".join(f"{k:>{len(k) + 2}s}" for k in keys)]
    for name, m in results.items():
        lines.append(f"{name:{width}s}" + "".join(f"{m[k]:{len(k) + 2}.4f}" for k in keys))
    return "\n".join(lines)
