"""The toy world's named models: recipes as data, the shipped checkpoints, guided denoisers and degraded copies.

Each named model is a `ModelSpec` (dataset, class subset, architecture, size, loss and training settings): edit
a spec and `train_model` / `scripts/make_checkpoints.py` follow. The shipped checkpoints in toydiff/checkpoints/
are these specs trained with seed 0 (bit-reproducible). The sampling settings of every toy figure (SIGMA_MAX,
STEPS, WEIGHTS) and the guided denoisers (`guided_denoiser`, `draw`) live in toydiff.toy.sampling, re-exported here.

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

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import datasets
from ..core.denoiser import Denoiser
from ..core.flow import VelocityDenoiser
from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..infra.runs import check_resume
from ..infra.validation import check_positive_int
from ..infra.workers import Interrupted, run_jobs
from .classifier import train_classifier
from .degraded import Degraded
from .distributions import GaussianMixture
from .nets import MLPDenoiser, NoiseAwareClassifier, build_model
from .sampling import SIGMA_MAX, STEPS, WEIGHTS, draw, guided_denoiser
from .training import model_from_checkpoint, train

__all__ = ["SIGMA_MAX", "STEPS", "CHECKPOINT_DIR", "ModelSpec", "MODEL_SPECS", "TREE_MODELS", "ToyModels",
           "training_data", "train_model", "train_models", "save_model", "save_models", "load_named", "load_models",
           "thin_models",
           "FLOW_MODELS", "flow_models",
           "pretrained", "WEIGHTS",
           "guided_denoiser", "draw", "Degraded"]

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


def _meta(name: str, spec: ModelSpec, seed: int, config: dict) -> dict:
    """What a zoo checkpoint says it is (toydiff.core.checkpoint): role, dataset, architecture, recipe (spec + seed)."""
    return dict(role=name, dataset=spec.dataset, architecture={"class": spec.architecture, **config},
                recipe={**dataclasses.asdict(spec), "seed": seed})


def train_model(name: str | ModelSpec, seed: int | None = None, progress: bool = True,
                dist: GaussianMixture | None = None, directory: str | os.PathLike | None = None,
                resume: bool = False) -> MLPDenoiser | NoiseAwareClassifier:
    """Train the model of MODEL_SPECS[name] (or the ModelSpec `name`) from scratch (seed: the spec's by default)
    and return its EMA (a classifier: its weights; seeded, bit-reproducible). `dist`: a dataset in place of the
    spec's. `directory`: train with the checkpoint `<directory>/<name>.pt` (every 1024 steps and at SIGTERM/SIGINT),
    replaced by the model file (`save_model`) once trained; `resume=True` continues an interrupted one, or keeps a
    finished one of the same recipe and seed."""
    if not isinstance(name, ModelSpec) and name not in MODEL_SPECS:
        raise ValueError(f"name must be one of {sorted(MODEL_SPECS)} or a ModelSpec, got {name!r}")
    spec, name = (name, None) if isinstance(name, ModelSpec) else (MODEL_SPECS[name], name)
    if directory is not None and name is None:
        raise ValueError("directory needs a MODEL_SPECS name (the checkpoint is <directory>/<name>.pt)")
    return _train_job(name, spec, spec.seed if seed is None else seed, progress, dist, directory, resume)


def _train_job(name: str | None, spec: ModelSpec, seed: int, progress: bool, dist: GaussianMixture | None,
               directory: str | os.PathLike | None, resume: bool) -> MLPDenoiser | NoiseAwareClassifier:
    """train_model's work, given the spec itself (worker processes get the specs as they are in the parent)."""
    data = training_data(spec, dist)
    config = dict(num_classes=data.num_classes if spec.conditional else 0, width=spec.width, depth=spec.depth,
                  seed=seed, **({"position_freqs": spec.position_freqs} if spec.position_freqs else {}))
    path = None if directory is None else Path(directory) / f"{name}.pt"
    if path is not None and resume and path.exists():
        ck = load_checkpoint(path, expect={"role": name})
        check_resume(ck["meta"].get("recipe", {}), _meta(name, spec, seed, {})["recipe"], path, None)
        if ck["optimizer"] is None:                          # a finished model file of this recipe: keep it
            return model_from_checkpoint(ck, path)
    model = build_model(spec.architecture, config)
    settings = dict(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, p_mean=spec.p_mean,
                    pool_size=spec.pool_size, seed=seed, progress=progress)
    if isinstance(model, NoiseAwareClassifier):
        trained = train_classifier(model, data, target=spec.loss, **settings).model
    else:
        trained = train(model, data, loss=spec.loss, p_uncond=spec.p_uncond, ema_std=spec.ema_std,
                        objective=spec.objective, checkpoint=path, resume=resume,
                        meta=_meta(name, spec, seed, model.config), **settings).ema
    if path is not None:
        save_model(name, trained, directory, seed, spec)
    return trained


def train_models(seed: int | None = None, progress: bool = True, workers: int | None = None,
                 dist: GaussianMixture | None = None, directory: str | os.PathLike | None = None,
                 resume: bool = False) -> ToyModels:
    """Train the tree models (TREE_MODELS) from scratch, in `workers` processes of one thread each (default: one
    per CPU core, at most 2; no progress bars then; toydiff.infra.workers: a SIGINT/SIGTERM stops them within a
    step and raises workers.Interrupted). Every model is seeded on its own: the same bits either way. `dist`: a
    two-class dataset in place of tree(); `directory`, `resume`: as in `train_model`, for each model."""
    workers = min(2, os.cpu_count() or 1) if workers is None else check_positive_int(workers, "workers")
    seeds = {name: MODEL_SPECS[name].seed if seed is None else seed for name in TREE_MODELS}
    jobs = [(name, MODEL_SPECS[name], seeds[name], progress and workers == 1, dist, directory, resume)
            for name in TREE_MODELS]                   # the specs as they are here, also when edited
    if workers == 1:
        return ToyModels(*(_train_job(*job) for job in jobs))
    try:                                                # job i runs in process i mod 2: main + uncond, guide + dropout
        return ToyModels(*run_jobs(_train_job, jobs, workers))
    except Interrupted as e:
        e.report = _saved(e, directory)
        raise


def _saved(stop: Interrupted, directory: str | os.PathLike | None) -> str:
    """What an interrupted train_models left: each model's file and step, or why there is none."""
    paths = [Path(directory or ".") / f"{name}.pt" for name in TREE_MODELS]
    return "nothing saved (no models directory)" if directory is None else "; ".join(
        f"{p} finished" if i in stop.done else f"{p.stem} not started" if i not in stop.stopped or not p.exists()
        else f"{p} saved at step {load_checkpoint(p)['step']} of {MODEL_SPECS[p.stem].steps}"
        for i, p in enumerate(paths))


def save_model(name: str, model: MLPDenoiser | NoiseAwareClassifier, directory: str | os.PathLike = CHECKPOINT_DIR,
               seed: int = 0, spec: ModelSpec | None = None) -> Path:
    """Write a model's float32 EMA weights as the model file `<directory>/<name>.pt` (toydiff.core.checkpoint:
    weights only, meta = role `name`, dataset, architecture and recipe: `spec`, default MODEL_SPECS[name])."""
    os.makedirs(directory, exist_ok=True)
    path, spec = Path(directory) / f"{name}.pt", MODEL_SPECS[name] if spec is None else spec
    save_checkpoint(path, model, None, None, spec.steps, None, meta=_meta(name, spec, seed, model.config))
    return path


def save_models(models: ToyModels, directory: str | os.PathLike = CHECKPOINT_DIR, seed: int = 0) -> list[Path]:
    """Write <name>.pt of every tree model (TREE_MODELS) into `directory`."""
    return [save_model(name, getattr(models, name.removeprefix("tree_")), directory, seed) for name in TREE_MODELS]


def load_named(name: str, directory: str | os.PathLike = CHECKPOINT_DIR) -> MLPDenoiser:
    """The model file `<directory>/<name>.pt`; ValueError (one line naming the file) if it is another model's
    (its meta's role differs, e.g. tree_guide.pt renamed tree_main.pt) or an interrupted training checkpoint."""
    path = Path(directory) / f"{name}.pt"
    ck = load_checkpoint(path, expect={"role": name})
    if ck["optimizer"] is not None:                         # finished runs replace it with the model file
        raise ValueError(f"{path} is the checkpoint of an interrupted training run (step {ck['step']} of "
                         f"{ck['meta']['recipe']['steps']}): finish it with `toydiff train --out {directory} --resume`")
    return model_from_checkpoint(ck, path)


def load_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> ToyModels:
    """Load <name>.pt of every tree model (`load_named`; FileNotFoundError / ValueError when bad)."""
    return ToyModels(*(load_named(name, directory) for name in TREE_MODELS))


def flow_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> ToyModels:
    """The tree's flow-matching models (FLOW_MODELS) as denoisers (`toydiff.core.flow.VelocityDenoiser` around each
    VelocityMLP): main and guide of class A, the unconditional D_0 of CFG; no condition-dropout network (None).
    `.main.velocity` is the velocity model itself."""
    return ToyModels(*(VelocityDenoiser(load_named(name, directory)) for name in FLOW_MODELS), None)


def thin_models(directory: str | os.PathLike = CHECKPOINT_DIR) -> tuple[MLPDenoiser, MLPDenoiser]:
    """The shipped (main, guide) of the thin tree: class-conditional with condition dropout, so CFG uses the main
    model's own null label."""
    return load_named("thin_main", directory), load_named("thin_guide", directory)


def pretrained(retrain: bool = False, seed: int = 0, progress: bool = True,
               directory: str | os.PathLike | None = None) -> ToyModels:
    """The shipped checkpoints, those in `directory` (as `toydiff train --out DIR` / `save_models` write them), or
    freshly trained models with `retrain=True` (not together with `directory`)."""
    if retrain and directory is not None:
        raise ValueError("retrain=True and a models directory exclude each other")
    return train_models(seed, progress) if retrain else load_models(CHECKPOINT_DIR if directory is None else directory)
