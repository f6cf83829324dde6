"""The toy world's named models: recipes as data, the shipped checkpoints, guided denoisers and degraded copies.

Each named model is a `ModelSpec` (dataset, class subset, architecture, size, loss and training settings): edit
a spec and `train_model` / `scripts/make_checkpoints.py` follow. The shipped checkpoints in toydiff/checkpoints/
are these specs trained with seed 0 (bit-reproducible). Sampling settings of every toy figure: EDM Heun, STEPS
steps, sigma in [0.002, SIGMA_MAX], rho = 7 (Karras et al. 2022). SIGMA_MAX = 5 = 10 sigma_data, the value of
the autoguidance paper's toy: the data's std 0.5 changes the std of p(x; 5) by 0.5%, so starting from
N(0, 5^2 I) is exact for all practical purposes, while 80 (the image value) would spend steps where nothing happens.

The tree recipe (benchmarks/tree_recipe.py measured the alternatives; RESULTS.md has the tables): the setup of
Karras et al. 2024's toy on the same tree: a main model of class A alone, 4 x 64, 4096 steps at batch 4096; the
autoguidance guide, class A, 4 x 32, 1/8 of the training (512 steps); for CFG as the paper sets it up, a separate
small unconditional model of both classes, 4 x 32, 512 steps; and for CFG as it is used in practice, one
class-conditional 4 x 64 network with condition dropout 0.1 (Ho & Salimans 2022). Two changes to the paper's
recipe, both measured: every network sees 32 noise-damped random Fourier features of its position
(toydiff.nets.MLPDenoiser, position_freqs): the outliers came from the main model's error at sigma < 0.05, where a
plain MLP this small cannot draw branches 0.01 wide; and the target is the posterior mean within each sample's own
component (loss "component", as cheap as denoising score matching; the paper's exact target costs ~35 us per sample
here). With both, the shipped models leave 0.039 outliers unguided and 0.019 with autoguidance at sampling seed 0
(0.030-0.040 and 0.019-0.024 over the seeds 0 / 11 / 22 / 33; the plain-MLP DSM recipe before them: 0.124 and
0.070; the paper's code: 0.118 and 0.053).
The four take 80-92 s of CPU time on one thread, 56 s of wall time in the two processes `train_models` uses.
The flow-matching twins (FLOW_MODELS: the same recipe, objective "flow", VelocityMLP; benchmarks/flow_tree.py) load
through `flow_models()` as the same ToyModels of denoisers (toydiff.core.flow.VelocityDenoiser), without a dropout net.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from . import datasets
from ..core import guidance, samplers
from ..core.denoiser import Denoiser, SeparateNull
from ..core.flow import VelocityDenoiser
from .distributions import GaussianMixture
from .classifier import train_classifier
from .nets import MLPDenoiser, NoiseAwareClassifier, build_model
from .training import load_model, save_checkpoint, train
from ..infra.validation import check_positive_int

__all__ = ["SIGMA_MAX", "STEPS", "CHECKPOINT_DIR", "ModelSpec", "MODEL_SPECS", "TREE_MODELS", "ToyModels",
           "training_data", "train_model", "train_models", "save_model", "save_models", "load_models", "thin_models",
           "FLOW_MODELS", "flow_models",
           "pretrained", "WEIGHTS",
           "guided_denoiser", "draw", "Degraded"]

SIGMA_MAX = 5.0
STEPS = 32
CHECKPOINT_DIR = Path(__file__).parents[1] / "checkpoints"


@dataclass(frozen=True)
class ModelSpec:
    """A named model's whole recipe (toydiff.training.train's arguments; the rest at train()'s defaults).

    dataset: a toydiff.datasets.DATASETS name; classes: the class subset to train on (relabelled 0..k-1; None =
    all); conditional: False trains an unconditional model (num_classes = 0); architecture: a toydiff.nets.MODELS
    class name with width x depth and `position_freqs` Fourier features of the position (0: none), or
    "NoiseAwareClassifier" (trained by toydiff.classifier.train_classifier; loss is then its target, "labels" or
    "posterior"); loss: "dsm", "exact" or "component" (toydiff.training); p_uncond: condition dropout (Ho &
    Salimans 2022); p_mean: the mean of ln sigma in training; pool_size: training samples drawn once from the
    dataset; objective: "edm" or "flow" (flow matching of a VelocityMLP, logit t ~ N(p_mean, 1.5^2);
    toydiff.training.train).
    """
    dataset: str = "tree"
    classes: tuple[int, ...] | None = None
    conditional: bool = True
    architecture: str = "MLPDenoiser"
    width: int = 64
    depth: int = 4
    position_freqs: int = 0
    loss: str = "dsm"
    steps: int = 4096
    batch_size: int = 1024
    lr: float = 1e-2
    p_mean: float = -2.3
    ema_std: float = 0.010
    p_uncond: float = 0.1
    pool_size: int = 1 << 16
    seed: int = 0
    objective: str = "edm"


# see the module docstring; class A alone is classes=(0,) (label 0 = A, no null label: p_uncond = 0)
_TREE = dict(position_freqs=32, loss="component", batch_size=4096)
_FLOW = dict(_TREE, architecture="VelocityMLP", objective="flow")
MODEL_SPECS: dict[str, ModelSpec] = {
    "tree_main": ModelSpec(classes=(0,), width=64, steps=4096, p_uncond=0.0, **_TREE),
    "tree_guide": ModelSpec(classes=(0,), width=32, steps=512, p_uncond=0.0, **_TREE),
    "tree_uncond": ModelSpec(conditional=False, width=32, steps=512, p_uncond=0.0, **_TREE),
    "tree_dropout": ModelSpec(width=64, steps=4096, p_uncond=0.1, **_TREE),
    # the hard case (notebook 04): thin_tree() with the earlier recipe, both classes, condition dropout 0.1
    "thin_main": ModelSpec(dataset="thin_tree", width=64, steps=4096),
    "thin_guide": ModelSpec(dataset="thin_tree", width=32, steps=512),
    # the tree's three roles as flow-matching velocity models (rectified flow, toydiff.core.flow), same recipe otherwise
    "tree_flow": ModelSpec(classes=(0,), width=64, steps=4096, p_uncond=0.0, **_FLOW),
    "tree_flow_guide": ModelSpec(classes=(0,), width=32, steps=512, p_uncond=0.0, **_FLOW),
    "tree_flow_uncond": ModelSpec(conditional=False, width=32, steps=512, p_uncond=0.0, **_FLOW),
}
TREE_MODELS = ("tree_main", "tree_guide", "tree_uncond", "tree_dropout")    # the fields of ToyModels, in order
FLOW_MODELS = ("tree_flow", "tree_flow_guide", "tree_flow_uncond")          # main, guide, uncond (no dropout net)


@dataclass
class ToyModels:
    """The tree toy's denoisers (EMA weights, eval mode): `main` and its autoguidance `guide` (class A only, label
    0), `uncond` (both classes, no label: CFG's D_0 in the paper's setup) and `dropout` (both classes, condition
    dropout: CFG's D_1 and D_0 in one network)."""
    main: Denoiser
    guide: Denoiser
    uncond: Denoiser
    dropout: Denoiser | None


def training_data(spec: ModelSpec, dist: GaussianMixture | None = None) -> GaussianMixture:
    """The spec's dataset (or `dist` in its place), restricted to `spec.classes` (components of those classes,
    relabelled in that order)."""
    dist = datasets.get(spec.dataset) if dist is None else dist
    if spec.classes is None:
        return dist
    keep = torch.cat([torch.nonzero(dist.labels == c)[:, 0] for c in spec.classes])
    relabel = torch.cat([torch.full((int((dist.labels == c).sum()),), i) for i, c in enumerate(spec.classes)])
    return GaussianMixture(dist.weights[keep], dist.means[keep], dist.covs[keep], relabel, len(spec.classes))


def train_model(name: str | ModelSpec, seed: int | None = None, progress: bool = True,
                dist: GaussianMixture | None = None) -> MLPDenoiser | NoiseAwareClassifier:
    """Train the model of MODEL_SPECS[name] (or the ModelSpec `name`) from scratch (seed: the spec's by default)
    and return its EMA (a classifier: its weights; seeded, bit-reproducible). `dist`: a dataset in place of the
    spec's (the same recipe on a distribution it was not tuned on)."""
    if not isinstance(name, ModelSpec) and name not in MODEL_SPECS:
        raise ValueError(f"name must be one of {sorted(MODEL_SPECS)} or a ModelSpec, got {name!r}")
    spec = name if isinstance(name, ModelSpec) else MODEL_SPECS[name]
    seed = spec.seed if seed is None else seed
    data = training_data(spec, dist)
    config = dict(num_classes=data.num_classes if spec.conditional else 0, width=spec.width, depth=spec.depth,
                  seed=seed, **({"position_freqs": spec.position_freqs} if spec.position_freqs else {}))
    model = build_model(spec.architecture, config)
    settings = dict(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, p_mean=spec.p_mean,
                    pool_size=spec.pool_size, seed=seed, progress=progress)
    if isinstance(model, NoiseAwareClassifier):
        return train_classifier(model, data, target=spec.loss, **settings).model
    return train(model, data, loss=spec.loss, p_uncond=spec.p_uncond, ema_std=spec.ema_std,
                 objective=spec.objective, **settings).ema


def train_models(seed: int | None = None, progress: bool = True, workers: int | None = None,
                 dist: GaussianMixture | None = None) -> ToyModels:
    """Train the tree models (TREE_MODELS) from scratch, in `workers` processes of one thread each (default: one
    per CPU core, at most 2; no progress bars then). Every model is seeded on its own: the same bits either way.
    `dist`: a two-class dataset in place of tree() (the same recipe on another distribution)."""
    workers = min(2, os.cpu_count() or 1) if workers is None else check_positive_int(workers, "workers")
    if workers == 1:
        return ToyModels(*(train_model(name, seed, progress, dist) for name in TREE_MODELS))
    # TREE_MODELS's order puts main and dropout (7/8 of the work) in different processes
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        specs = [MODEL_SPECS[name] for name in TREE_MODELS]            # as they are here, also when edited
        n = len(specs)
        return ToyModels(*pool.map(train_model, specs, [seed] * n, [False] * n, [dist] * n))


def save_model(name: str, model: MLPDenoiser | NoiseAwareClassifier, directory: str | os.PathLike = CHECKPOINT_DIR,
               seed: int = 0, spec: ModelSpec | None = None) -> Path:
    """Write a model's float32 EMA weights (only) as the toydiff checkpoint `<directory>/<name>.pt`, with the
    settings of its recipe (`spec`; default MODEL_SPECS[name])."""
    os.makedirs(directory, exist_ok=True)
    path, spec = Path(directory) / f"{name}.pt", MODEL_SPECS[name] if spec is None else spec
    empty = torch.optim.Adam(model.parameters())              # no moments: the shipped file holds weights only
    save_checkpoint(path, model, model, empty, spec.steps, dict(steps=spec.steps, batch_size=spec.batch_size,
                                                                p_uncond=spec.p_uncond, seed=seed, dataset=spec.dataset,
                                                                classes=spec.classes))
    return path                                               # (model is its own EMA: one copy of the tensors)


def save_models(models: ToyModels, directory: str | os.PathLike = CHECKPOINT_DIR, seed: int = 0) -> list[Path]:
    """Write <name>.pt of every tree model (TREE_MODELS) into `directory`."""
    return [save_model(name, getattr(models, name.removeprefix("tree_")), directory, seed) for name in TREE_MODELS]


def load_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> ToyModels:
    """Load <name>.pt of every tree model (FileNotFoundError / ValueError from toydiff.training when bad)."""
    return ToyModels(*(load_model(Path(directory) / f"{name}.pt") for name in TREE_MODELS))


def flow_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> ToyModels:
    """The tree's flow-matching models (FLOW_MODELS) as denoisers (`toydiff.core.flow.VelocityDenoiser` around each
    VelocityMLP): main and guide of class A, the unconditional D_0 of CFG; no condition-dropout network (None).
    `.main.velocity` is the velocity model itself."""
    return ToyModels(*(VelocityDenoiser(load_model(Path(directory) / f"{name}.pt")) for name in FLOW_MODELS), None)


def thin_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> tuple[MLPDenoiser, MLPDenoiser]:
    """The shipped (main, guide) of the thin tree: class-conditional with condition dropout, so CFG uses the main
    model's own null label."""
    return load_model(Path(directory) / "thin_main.pt"), load_model(Path(directory) / "thin_guide.pt")


def pretrained(retrain: bool = False, seed: int = 0, progress: bool = True,
               directory: str | os.PathLike | None = None) -> ToyModels:
    """The shipped checkpoints, those in `directory` (as `toydiff train --out DIR` / `save_models` write them), or
    freshly trained models with `retrain=True` (not together with `directory`)."""
    if retrain and directory is not None:
        raise ValueError("retrain=True and a models directory exclude each other")
    return train_models(seed, progress) if retrain else load_models(CHECKPOINT_DIR if directory is None else directory)


# the paper's toy weights (Karras et al. 2024): CFG 4, autoguidance 3; score scaling 1.5 (the registry's defaults);
# "cfg_dropout" is the recipe "cfg" on the condition-dropout network
WEIGHTS = {k: guidance.default_weight(k) for k in ("none", "cfg", "score_scaling", "autoguidance")}
WEIGHTS = {**WEIGHTS, "cfg_dropout": WEIGHTS["cfg"]}


def guided_denoiser(models: ToyModels, name: str, w: float | None = None, *, uncond: Callable | None = None,
                    **modifiers: Any) -> Callable:
    """The main model under the guidance recipe `name` of toydiff.guidance's registry, with the models it needs:
    the guide for autoguidance; for CFG and the recipes built on it the main model's null label is the separate
    unconditional model (`SeparateNull`: the setup of Karras et al. 2024's toy, where the main model knows class A
    only), or `uncond` when given (e.g. `datasets.tree()`: the exact unconditional denoiser, to see what the small
    learned D_0's own errors do). "cfg_dropout": CFG on the condition-dropout network (its own null label as D_0;
    Ho & Salimans 2022). w defaults to the recipe's; "none" or w = 1: the main model itself."""
    if name != "cfg_dropout" and name not in guidance.names():
        raise ValueError(f"guidance must be one of {guidance.names() + ['cfg_dropout']}, got {name!r}")
    if name == "cfg_dropout" and models.dropout is None:
        raise ValueError("guidance 'cfg_dropout' needs a condition-dropout network; these models have none "
                         "(zoo.flow_models): use 'cfg' (the separate unconditional model as D_0)")
    if uncond is not None and name in ("none", "cfg_dropout"):
        raise ValueError(f"uncond would be unused: guidance {name!r} takes no separate D_0")
    if name == "cfg_dropout":
        return guidance.guided(models.dropout, guidance.make("cfg", w, **modifiers))
    w = guidance.weight(name, w)                                   # the recipe's default; "none": 1 or refused
    if not callable(w) and w == 1:
        return models.main
    d0 = models.uncond if uncond is None else uncond
    return guidance.guided(SeparateNull(models.main, d0), guidance.make(name, w, guide=models.guide,
                                                                                    **modifiers))


def draw(denoiser: Callable, n: int, cls: int | None, seed: int, trajectory: bool = False,
         method: str = "heun") -> Any:
    """n samples of class `cls` (None: an unconditional denoiser) with the toy sampler (`method`, STEPS steps
    down from SIGMA_MAX), start noise from `seed`."""
    n = check_positive_int(n, "n")
    cond = None if cls is None else torch.full((n,), cls, dtype=torch.long)
    return samplers.sample(denoiser, (n, 2), cond, method=method, steps=STEPS,
                           sigma_max=SIGMA_MAX, generator=torch.Generator().manual_seed(seed),
                           return_trajectory=trajectory)


class Degraded:
    """A synthetically degraded copy of a network (Karras et al. 2024, Sec. 5).

    `kind="dropout"`: a fixed random share `amount` of the hidden units is switched off (the rest scaled by
    1 / (1 - amount)); the units are ranked by one draw from `seed`, so with the same seed a stronger dropout
    removes a superset of the units of a weaker one, "the same kind of error, only more".
    `kind="input_noise"`: D(x + amount * sigma * n; sigma) with fresh noise n on every call of a sampling run: a
    model that sees noisier inputs than it is told. The noise is the run's own, drawn from `seed` anew in each
    run's copy (`start_run`, which samplers call), so a run's samples do not depend on what ran before; with the
    same seed, two such models (main and guide) see the same n at the same call, scaled by their own amounts.
    """

    def __init__(self, model: MLPDenoiser, kind: str, amount: float, seed: int = 0):
        if kind not in ("dropout", "input_noise"):
            raise ValueError(f"kind must be 'dropout' or 'input_noise', got {kind!r}")
        if not 0 <= amount < 1:
            raise ValueError(f"amount must lie in [0, 1), got {amount}")
        self.kind, self.amount, self.seed = kind, float(amount), seed
        self.model = copy.deepcopy(model)
        self._noise: torch.Generator | None = None          # input_noise's generator of one run: start_run's copy
        if kind == "dropout":
            gen = torch.Generator().manual_seed(seed)
            for layer in self.model.hidden:
                keep = torch.rand(layer.out_features, generator=gen) >= self.amount
                layer.register_forward_hook(lambda mod, inp, out, keep=keep: out * keep / (1 - self.amount))

    def start_run(self, sigmas: Tensor | None) -> Degraded:
        """This model for one sampling run: input noise from a generator seeded with `seed` (the dropout kind has
        no per-run state and returns itself)."""
        if self.kind != "input_noise":
            return self
        run = copy.copy(self)
        run._noise = torch.Generator().manual_seed(self.seed)
        return run

    def __call__(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        if self.kind == "input_noise":
            if self._noise is None:
                raise ValueError("Degraded(input_noise) draws its noise per sampling run: sample with "
                                 "toydiff.samplers.sample, or call toydiff.denoiser.start_run(model, sigmas) and use "
                                 "what it returns")
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
            x = x + self.amount * s * torch.randn(x.shape, generator=self._noise, dtype=x.dtype)   # x + a sigma n
        return self.model(x, sigma, cond)

    def __repr__(self) -> str:
        return f"Degraded({self.kind}={self.amount})"
