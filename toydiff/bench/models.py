"""The small models `toydiff.bench` guides, one set per dataset: zoo.ModelSpec recipes, shipped in the toydiff
checkpoint format as toydiff/checkpoints/bench/<dataset>/<role>.pt, which `scripts/make_checkpoints.py --check`
rebuilds bit for bit.

Per dataset (the roles of the autoguidance paper's toy, Karras et al. 2024, arXiv:2406.02507, Sec. 4), the zoo's
tree recipe (position features, component target, batch 4096) on every class of the dataset:
- `main`: the zoo's `tree_dropout`: class-conditional 4 x 64 with condition dropout 0.1 (Ho & Salimans 2022,
  arXiv:2207.12598), so CFG with the null label works; 4096 steps.
- `uncond`: the zoo's `tree_uncond`: a SEPARATE unconditional 4 x 32 model, 512 steps: the D_0 of the paper's CFG.
- `guide`: the zoo's `tree_guide` on every class: class-conditional 4 x 32, 512 steps (1/8 of the main's): the
  autoguidance guide.
- `classifier`: a noise-aware classifier p(c | x; sigma), 3 x 64, 2048 steps of batch 512 on the samples' own
  labels, for classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233).
`tree_flow` is the tree again with main, uncond and guide trained by flow matching (rectified flow, logit-normal t;
toydiff.core.flow) as velocity models (FLOW_ROLES: plain MLPs, batch 512, condition dropout 0.1 in every role, the
bench's recipe before issue 19), guided and sampled through `toydiff.core.flow.VelocityDenoiser`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.flow import VelocityDenoiser
from ..toy import datasets
from ..toy.distributions import GaussianMixture
from ..toy.nets import MLPDenoiser, NoiseAwareClassifier, VelocityMLP
from ..toy.training import load_model
from ..toy.zoo import CHECKPOINT_DIR as ZOO_DIR
from ..toy.zoo import MODEL_SPECS, ModelSpec, save_model, train_model

__all__ = ["BENCH_DATASETS", "FLOW_DATASETS", "ROLES", "FLOW_ROLES", "BenchModels", "bench_spec",
           "train_bench_models", "save_bench_models", "load_bench_models", "bench_models", "exact_models",
           "CHECKPOINT_DIR"]

CHECKPOINT_DIR = ZOO_DIR / "bench"
# bench row -> the toydiff.datasets name of its exact ground truth (datasets.get builds it)
BENCH_DATASETS: dict[str, str] = {
    "tree": "tree",                                # the autoguidance paper's tree (Fig. 1)
    "thin_tree": "thin_tree",                      # the thinner tree, on which full-range CFG overshoots
    "three_gaussians": "three_gaussians",          # overlapping, as in the CFG paper's Fig. 2
    "spirals": "spirals",
    "tree_flow": "tree",                           # the tree, learned by flow-matching velocity models
}
FLOW_DATASETS = ("tree_flow",)
# role -> its recipe, a zoo.ModelSpec (bench_spec fills in the dataset)
_CLASSIFIER = ModelSpec(architecture="NoiseAwareClassifier", width=64, depth=3, loss="labels", steps=2048,
                        batch_size=512, p_mean=-1.2, p_uncond=0.0)
ROLES: dict[str, ModelSpec] = {
    "main": MODEL_SPECS["tree_dropout"],
    "uncond": MODEL_SPECS["tree_uncond"],
    "guide": dataclasses.replace(MODEL_SPECS["tree_guide"], classes=None),
    "classifier": _CLASSIFIER,
}
_FLOW = ModelSpec(architecture="VelocityMLP", objective="flow", batch_size=512, p_uncond=0.1)
FLOW_ROLES: dict[str, ModelSpec] = {
    "main": dataclasses.replace(_FLOW, width=64, steps=4096),
    "uncond": dataclasses.replace(_FLOW, conditional=False, width=32, steps=512),
    "guide": dataclasses.replace(_FLOW, width=32, steps=512),
    "classifier": _CLASSIFIER,
}


@dataclass
class BenchModels:
    """The trained models of one dataset (eval mode, no grad) and the dataset itself (the exact ground truth)."""
    data: GaussianMixture
    main: MLPDenoiser | VelocityDenoiser
    uncond: MLPDenoiser | VelocityDenoiser
    guide: MLPDenoiser | VelocityDenoiser
    classifier: NoiseAwareClassifier


def _dataset(name: str) -> GaussianMixture:
    if name not in BENCH_DATASETS:
        raise ValueError(f"unknown bench dataset {name!r}; expected one of {sorted(BENCH_DATASETS)}")
    return datasets.get(BENCH_DATASETS[name])


def bench_spec(name: str, role: str) -> ModelSpec:
    """The recipe of model `role` on bench dataset `name`."""
    _dataset(name)
    if role not in ROLES:
        raise ValueError(f"unknown bench role {role!r}; expected one of {list(ROLES)}")
    roles = FLOW_ROLES if name in FLOW_DATASETS else ROLES
    return dataclasses.replace(roles[role], dataset=BENCH_DATASETS[name])


def _as_denoiser(net: MLPDenoiser | VelocityMLP | NoiseAwareClassifier):
    """A velocity model as a denoiser (VelocityDenoiser), the rest as they are; eval mode, no grad."""
    net = net.eval().requires_grad_(False)
    return VelocityDenoiser(net) if isinstance(net, VelocityMLP) else net


def train_bench_models(name: str, seed: int = 0, progress: bool = False) -> BenchModels:
    """Train the four models of dataset `name` from scratch by their specs (seeded: the same seed, the same weights)."""
    models = {role: _as_denoiser(train_model(bench_spec(name, role), seed, progress)) for role in ROLES}
    return BenchModels(_dataset(name), **models)


def save_bench_models(name: str, models: BenchModels, directory: str | os.PathLike = CHECKPOINT_DIR,
                      seed: int = 0) -> list[Path]:
    """Write the four models as `<directory>/<name>/<role>.pt` (toydiff checkpoints, atomically)."""
    nets = {role: getattr(models, role) for role in ROLES}
    return [save_model(role, getattr(net, "velocity", net), Path(directory) / name, seed, bench_spec(name, role))
            for role, net in nets.items()]


def load_bench_models(name: str, directory: str | os.PathLike = CHECKPOINT_DIR) -> BenchModels:
    """Load `<directory>/<name>/<role>.pt`; FileNotFoundError if one is missing, ValueError if corrupt or of
    another format (toydiff.training.load_model)."""
    data, models = _dataset(name), {}
    for role in ROLES:
        path = Path(directory) / name / f"{role}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"bench checkpoint not found: {path} (run scripts/make_checkpoints.py "
                                    "--only bench)")
        models[role] = _as_denoiser(load_model(path))
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
