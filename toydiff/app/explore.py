"""`toydiff explore`: the classroom explorer. One page with the tree (Karras et al. 2024, Fig. 1; the shipped main
and guide networks) and the three Gaussians (Ho & Salimans 2022, Fig. 2; the exact mixture as the denoiser), the
guidance method, its weight w, the guidance interval (Kynkaanniemi et al. 2024) and the sampler as controls, the
samples over the true density and the metrics (toydiff.metrics) recomputed on every change.

The logic lives here and is tested without a browser; the page (explore.ipynb, shipped in the package) only wires
ipywidgets to `Explorer.update`, and `serve` runs it under Voila (the notebook's outputs only, no code) on
127.0.0.1. Weights: w = 1 is no guidance, D_w = D_0 + w (D_1 - D_0); Ho & Salimans' weight is w - 1.
"""
from __future__ import annotations

import html
import importlib.util
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..core import guidance, samplers
from ..core.denoiser import SeparateNull
from ..core.guidance import Guidance, NoGuidance, guided, to_ho_salimans
from ..infra.allocator import keep_freed_memory
from ..infra.workers import stop
from ..toy import datasets, density, metrics, zoo
from ..toy.distributions import GaussianMixture
from . import figures, plot

__all__ = ["PROBLEMS", "methods", "SAMPLERS", "NOTEBOOK", "Problem", "problem", "make_guidance", "weight_control",
           "set_weight_control", "samplers_for", "restrict_samplers", "description", "Explorer", "LatestOnly", "voila_command", "serve"]

NOTEBOOK = Path(__file__).with_name("explore.ipynb")
PROBLEMS = ("tree", "tree_flow", "three_gaussians")
SAMPLERS = tuple(samplers.METHODS)
SIGMA_MAX = zoo.SIGMA_MAX
METRICS = ("outlier_fraction", "precision", "recall", "class_accuracy")


def methods() -> list[str]:
    """The guidance recipes the page offers: every name of the toydiff.guidance registry that needs at most a guide
    model (a recipe registered later appears with no other edit)."""
    return guidance.names(("guide",))


def weight_control(method: str) -> dict[str, Any]:
    """The slider of `method`'s own parameter, from its registry entry (toydiff.guidance.Recipe.weight_range):
    {description, min, max, step, value (the recipe's default), disabled}; "none" has none (a disabled slider at 1).
    CFG++'s lambda in [0, 1] is not CFG's w, so it gets its own label and range."""
    recipe = guidance.RECIPES[method] if method in methods() else None
    if recipe is None:
        raise ValueError(f"method must be one of {methods()}, got {method!r}")
    if not guidance.takes_weight(method):
        return dict(description="(no parameter)", min=0.0, max=8.0, step=0.25, value=1.0, disabled=True)
    label, lo, hi = recipe.weight_range
    return dict(description=label.replace("$", "").replace("\\lambda", "λ"), min=lo, max=hi,
                step=0.25 if hi - lo > 2 else 0.05, value=recipe.default_w, disabled=False)


def set_weight_control(slider: Any, method: str) -> None:
    """Make the ipywidgets slider `slider` `method`'s own parameter: its label, range and the recipe's default value.
    The value goes first when it fits the old range, else the range does: never is a value outside the slider's
    range, which the browser would clamp and send back after the kernel's value (a race the last message wins)."""
    spec = weight_control(method)
    value = spec.pop("value")
    first = slider.min <= value <= slider.max
    if first:
        slider.value = value
    with slider.hold_trait_notifications():
        for key, v in spec.items():
            setattr(slider, key, v)
    if not first:
        slider.value = value


def samplers_for(method: str) -> tuple[str, ...]:
    """The samplers `method` runs with: all of them, or for a recipe that re-noises with its own prediction (CFG++)
    only toydiff.samplers.RENOISE_METHODS."""
    if method not in methods():
        raise ValueError(f"method must be one of {methods()}, got {method!r}")
    return tuple(samplers.RENOISE_METHODS) if guidance.RECIPES[method].method.renoises else SAMPLERS


def restrict_samplers(dropdown: Any, method: str) -> None:
    """Offer in the ipywidgets `dropdown` only the samplers `method` runs with, keeping its choice where allowed
    (else the first allowed): picking CFG++ with Heun selected moves to Euler instead of failing."""
    allowed, keep = samplers_for(method), dropdown.value
    if tuple(dropdown.options) != allowed:
        dropdown.options = allowed                      # ipywidgets then selects the first option
        dropdown.value = keep if keep in allowed else allowed[0]


def description(method: str) -> str:
    """The page's two lines on `method` (toydiff.guidance.describe: what it is and its paper; its formula), as HTML
    with the formula left in $...$ for MathJax."""
    first, formula = guidance.describe(method).split("\n", 1)
    return f"<b>{method}</b>: {html.escape(first, quote=False)}<br>{html.escape(formula, quote=False)}"


@dataclass
class Problem:
    """A toy problem: the data (exact), the main denoiser, the weaker guide, the class shown (index and the name
    the page uses for it) and the plotted box."""
    name: str
    data: GaussianMixture
    main: Callable
    guide: Callable
    cls: int
    grid: density.Grid
    class_name: str


def problem(name: str) -> Problem:
    """`tree`: the shipped main (4 x 64, class A) and guide (4 x 32, 1/8 the training) MLPs, class A; CFG's D_0 is the
    separate unconditional model (the paper's setup, `zoo.guided_denoiser`). `three_gaussians`: the
    exact mixture is the main denoiser and the same mixture with every covariance doubled (a blurrier model, the
    "bad version") the guide, class 0. `tree_flow`: the tree's roles as flow-matching models (`zoo.flow_models`)."""
    if name in ("tree", "tree_flow"):
        data, models = datasets.tree(), zoo.pretrained(progress=False) if name == "tree" else zoo.flow_models()
        main = SeparateNull(models.main, models.uncond)          # CFG's D_0: the separate unconditional model
        return Problem(name, data, main, models.guide, 0, density.make_grid(figures.class_a_box(data), 120), "class A")
    if name == "three_gaussians":
        data = datasets.three_gaussians()
        blurred = GaussianMixture(data.weights, data.means, data.covs * 2.0, labels=data.labels,
                                  num_classes=data.num_classes)
        return Problem(name, data, data, blurred, 0, density.make_grid((-3.0, 3.0, -3.0, 3.0), 120), "class 0")
    raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {name!r}")


def make_guidance(method: str, w: float, interval: tuple[float, float], guide: Callable) -> Guidance:
    """The guidance of a registry recipe (toydiff.guidance.make) at weight w (ignored by a recipe that takes no
    weight, toydiff.guidance.takes_weight: the page keeps its slider). `interval` =
    (sigma_lo, sigma_hi): guidance only where sigma_lo < sigma <= sigma_hi; (0, SIGMA_MAX) or wider leaves the
    recipe's own (none, or cfg_interval's), an empty one (lo >= hi) means no guidance at all."""
    if method not in methods():
        raise ValueError(f"method must be one of {methods()}, got {method!r}")
    lo, hi = (float(v) for v in interval)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"interval must be two finite sigmas, got {interval!r}")
    if lo >= hi or not guidance.takes_weight(method):
        return NoGuidance()
    modifiers = {} if lo <= 0 and hi >= SIGMA_MAX else {"interval": (lo, hi)}
    return guidance.make(method, w, guide=guide, **modifiers)


class Explorer:
    """The state behind the page: `update(...)` samples with the chosen settings and returns the figure and metrics.

    Problems are built on first use and kept (the tree's models load once) with what depends on them only: the true
    samples the metrics compare with (those `metrics.evaluate` would draw: their k-NN radii, ... are computed once)
    and a figure with the density, laid out once; a redraw replaces the samples and the title. The start noise is
    fixed by `seed`, so moving one control changes only what that control does."""

    def __init__(self, n: int = 1500, steps: int = zoo.STEPS, seed: int = 0):
        keep_freed_memory()                    # the page's process: warm pages for every redraw (infra.allocator)
        self.n, self.steps, self.seed = n, steps, seed
        self._problems: dict[str, Problem] = {}
        self._reference, self._figures = {}, {}          # by problem: [n, 2] true samples; (Figure, Axes, scatter)

    def problem(self, name: str) -> Problem:
        if name not in self._problems:
            p = self._problems[name] = problem(name)
            self._reference[name], _ = p.data.sample(self.n, p.cls, generator=torch.Generator().manual_seed(self.seed + 1))
            fig = Figure(figsize=(6.0, 6.6), dpi=plot.NOTEBOOK_DPI, layout="constrained")
            ax = fig.add_subplot(aspect="equal", xticks=[], yticks=[])
            plot.samples_panel(torch.empty(0, 2), ax, size=2.0, grid=p.grid, title="a\n$w$ = 1, $\\sigma \\in (0, 1]$\nb",
                               log_density=p.data.log_prob(p.grid.points, 0.0, p.cls))
            fig.draw_without_rendering(), fig.set_layout_engine("none")    # laid out for 3-line titles, once
            self._figures[name] = fig, ax, ax.collections[-1]          # the (empty) scatter of the samples
        return self._problems[name]

    def sample(self, name: str, method: str, w: float, interval: tuple[float, float], sampler: str) -> Tensor:
        """n samples of the problem's class, EDM schedule from SIGMA_MAX, the same start noise for every setting."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
        p = self.problem(name)
        den = guided(p.main, make_guidance(method, w, interval, p.guide))
        with torch.no_grad():
            return samplers.sample(den, (self.n, 2), p.cls, method=sampler, steps=self.steps, sigma_max=SIGMA_MAX,
                                   generator=torch.Generator().manual_seed(self.seed))

    def update(self, problem: str = "tree", method: str = "autoguidance", w: float = 3.0,
               interval: tuple[float, float] = (0.0, SIGMA_MAX), sampler: str = "heun") -> tuple[Figure, dict[str, float]]:
        """Sample, measure against the exact density (toydiff.metrics.evaluate) and draw the samples over it."""
        x = self.sample(problem, method, w, interval, sampler)
        p = self.problem(problem)
        m = metrics.evaluate(x, p.data, p.cls, reference=self._reference[problem], seed=self.seed)
        g = make_guidance(method, w, interval, p.guide)
        if isinstance(g, NoGuidance):
            setting = "no guidance"
        else:
            label = guidance.RECIPES[method].weight_range[0]
            hs = f" (Ho & Salimans {to_ho_salimans(w):g})" if label.startswith("$w$") else ""
            where = ("all $\\sigma$" if g.interval is None else
                     f"$\\sigma \\in ({g.interval[0]:g}, {g.interval[1]:g}]$")
            setting = f"{label.split(' (')[0]} = {w:g}{hs}, guidance on {where}"
        name = f"{problem} ({p.class_name}), {method}, {sampler}\n{setting}"
        fig, ax, dots = self._figures[problem]
        dots.set_offsets(x.detach().cpu().numpy()), ax.set_title(plot.title_with_metrics(name, m), fontsize=plot.TITLE_SIZE)
        return fig, {k: m[k] for k in METRICS}


class LatestOnly:
    """Run `compute(state)` in one worker thread and hand its result to `show(result)` (or `fail(error)` for a
    ValueError), always for the LATEST submitted state: a state superseded while it was being computed is dropped
    before it is shown, and states submitted meanwhile are skipped but the last. So under load the page settles on
    the controls' final position instead of replaying every intermediate one (the kernel's main thread only
    records the state: the next control message is read at once)."""

    def __init__(self, compute: Callable[[Any], Any], show: Callable[[Any], None],
                 fail: Callable[[Exception], None] = lambda error: None):
        self.compute, self.show, self.fail = compute, show, fail
        self._latest: Any = None
        self._version = 0
        self._lock = threading.Lock()
        self._wake: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="toydiff-explore-redraw").start()

    def submit(self, state: Any) -> None:
        with self._lock:
            self._latest, self._version = state, self._version + 1
        self._wake.put(None)

    def _run(self) -> None:
        done = 0
        while True:
            self._wake.get()
            while True:
                with self._lock:
                    state, version = self._latest, self._version
                if version == done:
                    break
                try:
                    result, error = self.compute(state), None
                except ValueError as err:            # e.g. a sampler CFG++ refuses: the page says why
                    result, error = None, err
                with self._lock:
                    stale = self._version != version
                done = version
                if stale:                              # superseded while computing: drop, compute the newest
                    continue
                if error is not None:
                    self.fail(error)
                else:
                    self.show(result)


def voila_command(port: int, notebook: str | os.PathLike = NOTEBOOK) -> list[str]:
    """The Voila command line that serves the explorer page on 127.0.0.1:port without opening a browser."""
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1",
            "--theme=light", "--show_tracebacks=True"]


def _free_port(port: int = 0) -> int:
    """`port` if a server could listen on it at 127.0.0.1 now (0: a free one the system picks); ValueError if
    taken (Voila would quietly move to the next port while we printed this one)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)          # as a server binds: TIME_WAIT is no use
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ValueError(f"port {port} on 127.0.0.1 is in use ({e.strerror}): pick another --port, or leave it "
                             f"out for a free one") from None
        return s.getsockname()[1]


def serve(port: int = 0, *, open_browser: bool = False) -> int:
    """Run the explorer under Voila until interrupted; prints the URL first. port 0 = a free one. Returns the exit code."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535] (0 = a free one), got {port!r}")
    if importlib.util.find_spec("voila") is None:
        raise FileNotFoundError("voila is not installed: python -m pip install 'toydiff[teaching]'")
    port = _free_port(port)
    url = f"http://127.0.0.1:{port}/"
    print(f"toydiff explore: {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser
        webbrowser.open(url)
    proc = subprocess.Popen(voila_command(port))
    # SIGTERM to this process must reach Voila: without it Voila and its kernels outlive `kill` (and keep the port)
    forward = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate()) if forward else None
    try:
        return proc.wait()
    except KeyboardInterrupt:                   # Ctrl-C reached Voila too (same process group): let it finish
        return 0
    finally:
        stop(proc, grace=10)
        if forward:
            signal.signal(signal.SIGTERM, previous)
