"""toydiff: diffusion guidance on 2D Gaussian mixtures with exact ground truth, and a path to ImageNet-64.

The package is layered (docs/DESIGN.md, "Layout"); arrows point downwards only:
    core/   the contract shared with imagenet_ext: denoiser, guidance/, samplers, checkpoint, training core
    infra/  validation, atomic writes, run ownership (locks, signals, resume), CLI plumbing
    toy/    the 2D world with exact answers: distributions, datasets, nets, trainer, zoo, density, metrics
    bench/  the guidance benchmark: run, models, report
    app/    the teaching app: plot, figures, demo, explore, cli, grading

The flat names users and notebooks write (`from toydiff import datasets, guidance, samplers`,
`import toydiff.zoo`) are the stable public API: `_FLAT` maps each to its module, and a finder hands out that
very module object (not a copy), so `toydiff.samplers is toydiff.core.samplers`. Nothing is imported eagerly:
`import toydiff.core.samplers` loads no toy module.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_FLAT = {
    "denoiser": "core.denoiser", "guidance": "core.guidance", "samplers": "core.samplers",
    "checkpoint": "core.checkpoint",
    "validation": "infra.validation", "atomic": "infra.atomic", "runs": "infra.runs", "clitools": "infra.clitools",
    "distributions": "toy.distributions", "datasets": "toy.datasets", "nets": "toy.nets", "training": "toy.training",
    "classifier": "toy.classifier", "zoo": "toy.zoo", "density": "toy.density", "histogram": "toy.histogram",
    "metrics": "toy.metrics", "optimal_weight": "toy.optimal_weight",
    "bench_models": "bench.models", "bench_report": "bench.report",
    "plot": "app.plot", "figures": "app.figures", "demo": "app.demo", "explore": "app.explore", "cli": "app.cli", "weight_study": "app.weight_study",
    "grading": "app.grading",
}


class _FlatNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `toydiff.<flat name>[.<sub>]` to the module at its place in the layout (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        flat, _, sub = rest.partition(".")
        if head != __name__ or flat not in _FLAT or _FLAT[flat] == flat:
            return None
        real = f"{__name__}.{_FLAT[flat]}" + (f".{sub}" if sub else "")
        return importlib.util.spec_from_loader(fullname, self, origin=real)

    def create_module(self, spec):
        module = importlib.import_module(spec.origin)
        spec.loader_state = module.__spec__  # the import system stamps `spec` on the module next: keep the real one
        return module

    def exec_module(self, module):
        # the real module has run already; restore its own __spec__ (relative imports check __spec__.parent)
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _FlatNames) for f in sys.meta_path):
    sys.meta_path.insert(0, _FlatNames())
