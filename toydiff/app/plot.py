"""Matplotlib panels with one consistent style: densities, samples over the true density, score fields,
trajectories and ratio plots. Every function draws into `ax` (a new figure when None) and returns the Axes;
`figure(...)` returns (Figure, Axes array) in constrained layout. Figures are for projecting in a lecture: density
and ratio maps carry a colorbar with units, `save` writes PNGs at 150 dpi, figures shown in a notebook are stored at
`NOTEBOOK_DPI` (`use_style()`, the first cell of every notebook), and no text is smaller than `FONT` points.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ..infra.atomic import naming_full_disk
from ..toy.density import Grid

__all__ = ["STYLE", "DPI", "NOTEBOOK_DPI", "FONT", "TITLE_SIZE", "MIN_WIDTH", "COLORS", "use_style", "figure",
           "figure_rows", "density_panel", "samples_panel", "score_field", "trajectories_panel",
           "ratio_panel", "title_with_metrics", "outline", "class_regions", "colorbar", "mark_box", "arrows", "save",
           "interact", "show_figure"]

DPI = 150                   # every PNG toydiff writes
NOTEBOOK_DPI = 110          # figures stored in the notebooks: projectable, and every notebook file stays under 2 MB
FONT = 9                    # the smallest text (points): tick labels, colorbar labels, legends
TITLE_SIZE = 10             # panel titles (points)
MIN_WIDTH = 6.0             # inches: every figure of `figure` is at least 660 px wide in a notebook, 900 px in a PNG
# read from the back of a lecture hall: at 9 pt in a figure at most 15 in wide, text is >= 1/120 of the picture's width
STYLE = {"font.size": FONT, "axes.titlesize": TITLE_SIZE, "axes.labelsize": FONT + 1, "xtick.labelsize": FONT,
         "ytick.labelsize": FONT, "legend.fontsize": FONT, "figure.titlesize": TITLE_SIZE + 1, "axes.linewidth": 0.6,
         "figure.dpi": NOTEBOOK_DPI, "savefig.dpi": DPI, "image.cmap": "Greys", "savefig.bbox": "tight"}
COLORS = {"samples": "#d62728", "true": "#1f77b4", "outline": "0.35", "arrows": "#2ca02c", "traj": "#ff7f0e",
          "other_class": "0.88", "other_class_edge": "0.65", "class": "#ffcc99", "class_edge": "#cc9980"}


def use_style() -> None:
    """Make `STYLE` the matplotlib default (every notebook's first cell calls it): figures shown inline are stored at
    NOTEBOOK_DPI with fonts of at least FONT points."""
    plt.rcParams.update(STYLE)


def figure(rows: int = 1, cols: int = 1, size: float = 2.6) -> tuple[Figure, Any]:
    """A rows x cols grid of square panels of `size` inches (larger when the figure would be narrower than
    MIN_WIDTH) without ticks, in the toolkit's style."""
    size = max(size, MIN_WIDTH / cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.set_aspect("equal")
    return fig, axes


def figure_rows(*cols: int, width: float = 15.0, title_room: float = 0.7) -> tuple[Figure, list[Any]]:
    """Rows of square panels without ticks across `width` inches, row i split into cols[i] panels (a row of fewer
    panels gets larger ones); returns (Figure, [Axes array of each row]) in constrained layout."""
    heights = [width / c + title_room for c in cols]
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(width, sum(heights)), layout="constrained")
        fig.get_layout_engine().set(h_pad=0.08)             # a suptitle clears the rows' titles
        subs = fig.subfigures(len(cols), 1, height_ratios=heights, squeeze=False)[:, 0]
        rows = [sub.subplots(1, c, squeeze=False)[0] for sub, c in zip(subs, cols)]
    for axes in rows:
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([]), ax.set_aspect("equal")
    return fig, rows


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG at `DPI` (150) with a tight bounding box; returns the path. A full disk raises OSError
    naming the path (toydiff.atomic.naming_full_disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_full_disk(path):
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _ax(ax: Axes | None) -> Axes:
    return figure()[1][0, 0] if ax is None else ax


def colorbar(ax: Axes, mappable: Any, label: str) -> Any:
    """A slim colorbar beside `ax` with its units in `label`; returns it."""
    cbar = ax.figure.colorbar(mappable, ax=ax, shrink=0.8, pad=0.02, aspect=25)
    cbar.set_label(label, fontsize=FONT)
    cbar.ax.tick_params(labelsize=FONT, width=0.5, length=2.5)
    cbar.outline.set_linewidth(0.4)
    return cbar


def density_panel(grid: Grid, log_density: Tensor, ax: Axes | None = None, *, log_scale: bool = False,
                  floor: float = 12.0, cmap: str = "Greys", title: str | None = None, with_colorbar: bool = True,
                  label: str | None = None) -> Axes:
    """A density heatmap from log p [H * W] on `grid`: p relative to its maximum (default) or log p clipped `floor`
    nats below its max, with a colorbar in those units (`label` overrides the unit text)."""
    ax = _ax(ax)
    img = grid.image(log_density.detach().double().cpu())
    img = img.clamp_min(img.max() - floor) if log_scale else (img - img.max()).exp()
    im = ax.imshow(img.numpy(), origin="lower", extent=grid.extent, cmap=cmap, interpolation="bilinear")
    if with_colorbar:
        colorbar(ax, im, label or (r"$\log p$ (nats)" if log_scale else r"$p\,/\,\max\,p$"))
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax


def outline(ax: Axes, grid: Grid, log_density: Tensor, levels: float = 6.0) -> None:
    """Contours of the true density at 1 and `levels` nats (relative, log-spaced) below its maximum."""
    img = grid.image(log_density.detach().double().cpu())
    img = img - img.max()
    ax.contour(grid.xs.numpy(), grid.ys.numpy(), img.numpy(), levels=[-levels, -levels / 3], colors=COLORS["outline"],
               linewidths=0.4)


def samples_panel(x: Tensor, ax: Axes | None = None, *, grid: Grid | None = None, log_density: Tensor | None = None,
                  color: str | None = None, size: float = 0.6, title: str | None = None) -> Axes:
    """Samples x [N, 2] as dots over the true density (a faint heatmap plus its outline) when given."""
    ax = _ax(ax)
    if grid is not None and log_density is not None:
        density_panel(grid, log_density, ax, log_scale=True, cmap="Greys", with_colorbar=False)   # shading, not a map
        ax.images[-1].set_alpha(0.35)
        outline(ax, grid, log_density)
        ax.set_xlim(grid.extent[:2]), ax.set_ylim(grid.extent[2:])
    x = x.detach().cpu()
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=size, c=color or COLORS["samples"], linewidths=0, alpha=0.7)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax


def score_field(field: Callable[[Tensor], Tensor], grid: Grid, ax: Axes | None = None, *, every: int = 10,
                color: str | None = None, normalize: bool = True) -> Axes:
    """Arrows of a vector field [M, 2] (a score, or a score difference) on every `every`-th grid point."""
    ax = _ax(ax)
    sub = grid.points.reshape(grid.resolution, grid.resolution, 2)[every // 2::every, every // 2::every].reshape(-1, 2)
    v = field(sub.float()).detach().double().cpu()
    if normalize:   # directions, with length growing slowly with magnitude (log-compressed)
        n = v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        v = v / n * torch.log1p(n) / torch.log1p(n).max()
    ax.quiver(sub[:, 0].numpy(), sub[:, 1].numpy(), v[:, 0].numpy(), v[:, 1].numpy(), color=color or COLORS["arrows"],
              angles="xy", scale_units="xy", scale=1 / (0.9 * every * (grid.extent[1] - grid.extent[0]) / grid.resolution),
              width=0.004)
    return ax


def trajectories_panel(trajectory: Tensor, ax: Axes | None = None, *, color: str | None = None,
                       title: str | None = None, max_paths: int = 200, alpha: float = 0.6, width: float = 0.4,
                       label: str | None = None) -> Axes:
    """Sampling paths [steps + 1, N, 2] (from `samplers.sample(..., return_trajectory=True)`), end points dotted
    (in black, or in `color` when the paths carry a legend `label`)."""
    ax = _ax(ax)
    t = trajectory.detach().cpu()[:, :max_paths]
    color = color or COLORS["traj"]
    for i in range(t.shape[1]):
        ax.plot(t[:, i, 0].numpy(), t[:, i, 1].numpy(), lw=width, color=color, alpha=alpha,
                label=label if i == 0 else None)
    ax.scatter(t[-1, :, 0].numpy(), t[-1, :, 1].numpy(), s=4 if label else 2, c=color if label else "k",
               linewidths=0, zorder=3)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax


def ratio_panel(grid: Grid, log_ratio: Tensor, ax: Axes | None = None, *, field: Callable[[Tensor], Tensor] | None = None,
                clip: float = 4.0, title: str | None = None, every: int = 10, with_colorbar: bool = True,
                label: str = r"$\log(p_1 / p_0)$ (nats)") -> Axes:
    """log(p_1 / p_0) on `grid` as a diverging heatmap (red: p_1 larger, blue: p_0 larger; clipped at +-`clip`
    nats) with its colorbar, and the arrows of its gradient (the autoguidance direction) when `field` is given."""
    ax = _ax(ax)
    img = grid.image(log_ratio.detach().double().cpu()).clamp(-clip, clip)
    im = ax.imshow(img.numpy(), origin="lower", extent=grid.extent, cmap="RdBu_r", vmin=-clip, vmax=clip,
                   interpolation="bilinear")
    if with_colorbar:
        colorbar(ax, im, label)
    if field is not None:
        score_field(field, grid, ax, every=every, color="k")
    ax.set_xlim(grid.extent[:2]), ax.set_ylim(grid.extent[2:])
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax


def title_with_metrics(name: str, m: dict[str, float]) -> str:
    """'name\\noutliers 3.1%  P 0.95  R 0.88' from a metrics dict."""
    return f"{name}\noutliers {100 * m['outlier_fraction']:.1f}%  P {m['precision']:.2f}  R {m['recall']:.2f}"


def class_regions(ax: Axes, grid: Grid, log_all: Tensor, log_class: Tensor, nats: float = 4.5) -> Axes:
    """The data as Karras et al. 2024 draw it (Fig. 1): the region where log p(x) is within `nats` of its maximum
    in light grey (the other class shows as grey), the same region of log p(x | c) in light orange, outlined."""
    for logp, fill, edge in ((log_all, COLORS["other_class"], COLORS["other_class_edge"]),
                             (log_class, COLORS["class"], COLORS["class_edge"])):
        img = grid.image(logp.detach().double().cpu())
        img = (img - img.max()).numpy()
        ax.contourf(grid.xs.numpy(), grid.ys.numpy(), img, levels=[-nats, 0], colors=[fill])
        ax.contour(grid.xs.numpy(), grid.ys.numpy(), img, levels=[-nats], colors=[edge], linewidths=0.6)
    ax.set_xlim(grid.extent[:2]), ax.set_ylim(grid.extent[2:])
    return ax


def mark_box(ax: Axes, box: tuple[float, float, float, float], color: str = "k") -> Axes:
    """Outline the region `box` = (x0, x1, y0, y1) (a zoom shown elsewhere) on `ax`."""
    x0, x1, y0, y1 = box
    ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color=color, lw=0.8, ls="--")
    return ax


def arrows(ax: Axes, at: Tensor, vectors: Tensor, length: float, color: str = "k") -> Axes:
    """Arrows of `vectors` [N, 2] at points `at` [N, 2], all scaled by one factor so the longest is `length`
    (data units): relative lengths stay comparable within a panel."""
    at, v = at.detach().double().cpu(), vectors.detach().double().cpu()
    v = v * (length / v.norm(dim=1).max().clamp_min(1e-12))
    ax.quiver(at[:, 0].numpy(), at[:, 1].numpy(), v[:, 0].numpy(), v[:, 1].numpy(), color=color, angles="xy",
              scale_units="xy", scale=1, width=0.006, headwidth=4, headlength=3, headaxislength=2.5)
    return ax


def interact(draw: Callable[..., Figure], **controls: Any) -> Any:
    """Sliders and menus that redraw `draw(**values)` below them, like `ipywidgets.interact`, safe under nbconvert.

    `controls` are ipywidgets abbreviations ((min, max, step) -> slider, a list -> menu) or widgets, one per
    argument of `draw`, which returns a matplotlib Figure, shown by `show_figure` in the box's Output widget.
    Returns the box, or None (drawing nothing) without ipywidgets.
    """
    try:
        import ipywidgets
        from IPython.display import display
    except ImportError:
        return None
    import inspect

    params = inspect.signature(draw).parameters
    widgets = {}
    for name, abbrev in controls.items():
        if name not in params:
            raise ValueError(f"interact: {draw.__name__} has no argument {name!r}")
        widget = ipywidgets.interactive.widget_from_abbrev(abbrev, params[name].default)
        if widget is None:
            raise ValueError(f"interact: cannot make a control from {name}={abbrev!r}")
        widget.description = name
        widgets[name] = widget
    output = ipywidgets.Output()

    def redraw(_change: Any = None) -> None:
        fig = draw(**{k: w.value for k, w in widgets.items()})
        if not isinstance(fig, Figure):
            raise TypeError(f"interact: {draw.__name__} must return a matplotlib Figure, got {type(fig).__name__}")
        show_figure(output, fig)

    for widget in widgets.values():
        widget.observe(redraw, names="value")
    redraw()
    box = ipywidgets.VBox([*widgets.values(), output])
    box.add_class("widget-interact")                       # the layout class of ipywidgets.interact's box
    display(box)
    return box


def show_figure(output: Any, fig: Figure) -> None:
    """Show `fig` (a PNG at NOTEBOOK_DPI) in the ipywidgets Output widget `output`, replacing what it
    showed, and close the figure.

    It sets the widget's `outputs`, never captures output inside `with output:` (which `ipywidgets.interact` and
    `interactive_output` do). Why: whoever executes a notebook through nbclient (`jupyter nbconvert --execute`,
    Voila) mimics a capturing Output widget by sending comm messages on the shell socket while it awaits the cell's
    reply there, and then misses the reply: measured, 7 of 10 runs of a notebook of 12 interact cells stalled for a
    whole cell timeout (forever with none, nbconvert's default), 0 of 8 with this. Voila executes its pages the
    same way.
    """
    import base64
    import io

    buf = io.BytesIO()               # zlib level 3: the same pixels in 15% less time than 6, and no more bytes
    fig.savefig(buf, format="png", dpi=NOTEBOOK_DPI, bbox_inches="tight", pil_kwargs={"compress_level": 3})
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    output.outputs = ({"output_type": "display_data", "data": {"image/png": png, "text/plain": "<Figure>"},
                       "metadata": {}},)
