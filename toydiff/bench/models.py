"""The small models `toydiff.bench` guides, one set per dataset, trained by fixed seeded recipes and shipped as
checkpoints that `scripts/make_checkpoints.py --check` rebuilds bit for bit.

Per dataset (the roles of the autoguidance paper's toy, Karras et al. 2024, Sec. 4 and its released code):
- `main`: class-conditional 4 x 64 MLP with condition dropout 0.1 (Ho & Salimans 2022), so CFG with the null
  label works; 4096 steps.
- `uncond`: a SEPARATE unconditional 4 x 32 model, 512 steps: the D_0 of the paper's CFG.
- `guide`: class-conditional 4 x 32, 512 steps (1/8 of the main's): the autoguidance guide.
- `classifier`: a noise-aware classifier p(c | x; sigma), 3 x 64, 2048 steps on the samples' own labels, for
  classifier guidance (Dhariwal & Nichol 2021).
All train with denoising score matching on a pool of true samples, batch 512, single-threaded, in about 15 s
per dataset on a 2-core CPU. `tree_flow` is the tree again with main, uncond and guide trained by flow matching
(rectified flow, logit-normal t; toydiff.core.flow) as velocity models, guided and sampled through
`toydiff.core.flow.VelocityDenoiser`: the same methods on the parametrization CFG-Zero* was designed for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.flow import VelocityDenoiser
from ..infra.atomic import save_atomic
from ..toy import datasets
from ..toy.distributions import GaussianMixture
from ..toy.nets import MLPDenoiser, NoiseAwareClassifier, VelocityMLP
from ..toy.classifier import train_classifier
from ..toy.training import train

__all__ = ["BENCH_DATASETS", "FLOW_DATASETS", "RECIPES", "BenchModels", "train_bench_models", "save_bench_models",
           "load_bench_models", "bench_models", "exact_models", "CHECKPOINT_DIR"]

FORMAT = "toydiff-bench-models"
CHECKPOINT_DIR = Path(__file__).parents[1] / "checkpoints" / "bench"
# bench row -> the toydiff.datasets name of its exact ground truth (datasets.get builds it)
BENCH_DATASETS: dict[str, str] = {
    "tree": "tree",                                # the autoguidance paper's tree (Fig. 1)
    "thin_tree": "thin_tree",                      # the thinner tree, on which full-range CFG overshoots
    "three_gaussians": "three_gaussians",          # overlapping, as in the CFG paper's Fig. 2
    "spirals": "spirals",
    "tree_flow": "tree",                           # the tree, learned by flow-matching velocity models
}
FLOW_DATASETS = ("tree_flow",)
# role -> (constructor kwargs, training steps); the number of classes comes from the dataset
RECIPES: dict[str, tuple[dict, int]] = {
    "main": (dict(width=64, depth=4), 4096),
    "uncond": (dict(width=32, depth=4, num_classes=0), 512),
    "guide": (dict(width=32, depth=4), 512),
    "classifier": (dict(width=64, depth=3), 2048),
}
BATCH = 512
_CLASSES = {"MLPDenoiser": MLPDenoiser, "NoiseAwareClassifier": NoiseAwareClassifier, "VelocityMLP": VelocityMLP}


@dataclass
class BenchModels:
    """The trained models of one dataset (eval mode, no grad) and the dataset itself (the exact ground truth)."""
    data: GaussianMixture
    main: MLPDenoiser
    uncond: MLPDenoiser
    guide: MLPDenoiser
    classifier: NoiseAwareClassifier


def _dataset(name: str) -> GaussianMixture:
    if name not in BENCH_DATASETS:
        raise ValueError(f"unknown bench dataset {name!r}; expected one of {sorted(BENCH_DATASETS)}")
    return datasets.get(BENCH_DATASETS[name])


def train_bench_models(name: str, seed: int = 0, progress: bool = False) -> BenchModels:
    """Train the four models of dataset `name` from scratch by RECIPES (seeded: the same seed, the same weights)."""
    data = _dataset(name)
    models = {}
    for role, (kwargs, steps) in RECIPES.items():
        kwargs = dict(num_classes=data.num_classes, seed=seed) | kwargs
        if role == "classifier":
            net = NoiseAwareClassifier(**kwargs)
            models[role] = train_classifier(net, data, steps=steps, batch_size=BATCH, seed=seed,
                                            progress=progress).model
        else:
            flow = name in FLOW_DATASETS
            net = (VelocityMLP if flow else MLPDenoiser)(**kwargs)
            ema = train(net, data, steps=steps, batch_size=BATCH, p_uncond=0.1, seed=seed, progress=progress,
                        objective="flow" if flow else "edm").ema.eval().requires_grad_(False)
            models[role] = VelocityDenoiser(ema) if flow else ema
    return BenchModels(data, **models)


def save_bench_models(name: str, models: BenchModels, directory: str | os.PathLike = CHECKPOINT_DIR) -> Path:
    """Write the weights of the four models as `<directory>/<name>.pt` (atomically; deterministic bytes)."""
    payload = dict(format=FORMAT, version=1, dataset=name, models={
        role: dict(cls=type(net).__name__, config=dict(net.config), state=net.state_dict())
        for role in RECIPES for net in [getattr(getattr(models, role), "velocity", getattr(models, role))]})
    return save_atomic(payload, Path(directory) / f"{name}.pt")


def load_bench_models(name: str, directory: str | os.PathLike = CHECKPOINT_DIR) -> BenchModels:
    """Load `<directory>/<name>.pt`; FileNotFoundError if missing, ValueError if corrupt or of another format."""
    data = _dataset(name)
    path = Path(directory) / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"bench checkpoint not found: {path} (run scripts/make_checkpoints.py --only bench)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or ck.get("format") != FORMAT or set(ck["models"]) != set(RECIPES):
            raise ValueError(f"not a {FORMAT} file with the roles {sorted(RECIPES)}")
        models = {}
        for role, entry in ck["models"].items():
            net = _CLASSES[entry["cls"]](**entry["config"])
            net.load_state_dict(entry["state"])
            net = net.eval().requires_grad_(False)
            models[role] = VelocityDenoiser(net) if isinstance(net, VelocityMLP) else net
    except Exception as e:  # truncated zip, wrong keys, shapes that do not fit: one clear error
        raise ValueError(f"bench checkpoint {path} is corrupt or incompatible: {e}") from e
    return BenchModels(data, **models)


def bench_models(name: str, retrain: bool = False, seed: int = 0) -> BenchModels:
    """The shipped models of dataset `name`, or freshly trained ones with `retrain=True`."""
    return train_bench_models(name, seed) if retrain else load_bench_models(name)


class _ExactClassifier:
    """A mixture's exact noisy posterior log p(c | x; sigma) under the classifier role's interface (`log_prob`)."""

    def __init__(self, data: GaussianMixture):
        self.log_prob = data.class_log_posterior


class _ExactMarginal:
    """A mixture's exact unconditional denoiser, whatever label it is called with (the "uncond" role)."""

    def __init__(self, data: GaussianMixture):
        self.data = data

    def __call__(self, x, sigma, cond=None):
        return self.data(x, sigma, None)


def exact_models(name: str) -> BenchModels:
    """Dataset `name` with its exact denoisers in every role: main = guide = the mixture (so autoguidance is the
    identity), uncond = its marginal, classifier = its exact noisy posterior. The bench run on these shows what each
    guidance method does by itself, with no network error to correct (notebook 07)."""
    data = _dataset(name)
    return BenchModels(data, data, _ExactMarginal(data), data, _ExactClassifier(data))
