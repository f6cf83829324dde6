"""Training a noise-aware classifier p(c | x; sigma) on a class-labelled mixture, for classifier guidance
(Dhariwal & Nichol 2021, Sec. 4), with the toy trainer's settings (toydiff.training)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .loop import optimize
from .nets import NoiseAwareClassifier
from .training import torch_threads
from ..infra.validation import check_positive_int, check_real

__all__ = ["ClassifierResult", "train_classifier"]


@dataclass
class ClassifierResult:
    """The trained classifier (eval mode), per-step cross-entropies [steps] and wall-clock seconds."""
    model: NoiseAwareClassifier
    losses: Tensor
    seconds: float


def train_classifier(model: NoiseAwareClassifier, mixture: Any, *, steps: int = 2048, batch_size: int = 1024,
                     lr: float = 1e-2, lr_decay_steps: int = 512, p_mean: float = -1.2, p_std: float = 1.5,
                     target: str = "labels", seed: int = 0, pool_size: int = 1 << 16, progress: bool = True,
                     threads: int | None = 1) -> ClassifierResult:
    """Train a noise-aware classifier p(c | x; sigma) on a class-labelled mixture, in place (Adam, betas 0.9/0.99,
    lr / sqrt(max(t / lr_decay_steps, 1)) as `train`), for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

    Each step: (y, c) from a pool of ``pool_size`` samples of the mixture (drawn once from ``seed``), ln sigma ~
    N(p_mean, p_std^2) as in EDM training (Karras et al. 2022, Table 1; the defaults reach sigma ~ 10 at 2.5 std),
    x = y + sigma n, and cross-entropy of the logits against
      - ``target="labels"``: the sample's own label c (what one can do with any labelled data), or
      - ``target="posterior"``: the mixture's exact p(c | x; sigma) as soft labels: the same minimizer, since
        E[1{c = k} | x; sigma] = p(k | x; sigma), with far less variance.
    One seeded torch.Generator drives every draw, so the same seed gives the same weights.
    """
    if not isinstance(model, NoiseAwareClassifier):
        raise TypeError(f"model must be a toydiff.nets.NoiseAwareClassifier, got {type(model).__name__}")
    if not (hasattr(mixture, "sample") and hasattr(mixture, "class_log_posterior")):
        raise TypeError(f"mixture must be a class-labelled GaussianMixture, got {type(mixture).__name__}")
    if mixture.num_classes != model.num_classes or mixture.means.shape[1] != model.dim:
        raise ValueError(f"mixture has {mixture.num_classes} classes in {mixture.means.shape[1]}D, the model "
                         f"{model.num_classes} in {model.dim}D")
    if target not in ("labels", "posterior"):
        raise ValueError(f"target must be 'labels' or 'posterior', got {target!r}")
    steps, batch_size = check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")
    pool_size, lr_decay_steps = check_positive_int(pool_size, "pool_size"), check_positive_int(lr_decay_steps,
                                                                                               "lr_decay_steps")
    lr, p_mean = check_real(lr, "lr", 0, lo_open=True), check_real(p_mean, "p_mean", -math.inf)
    p_std = check_real(p_std, "p_std", 0)
    pool_x, pool_y = mixture.sample(pool_size, generator=torch.Generator().manual_seed(seed))
    pool_x = pool_x.to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    losses, t0 = torch.zeros(steps), time.perf_counter()

    def batch_loss(step: int) -> Tensor:
        idx = torch.randint(pool_size, (batch_size,), generator=gen)
        sigma = (torch.randn(batch_size, generator=gen) * p_std + p_mean).exp()       # ln s ~ N(P_mean, P_std^2)
        x = pool_x[idx] + sigma[:, None] * torch.randn(batch_size, model.dim, generator=gen)     # x = y + s n
        logp = model.log_prob(x, sigma)                                             # [B, C]
        if target == "labels":
            return F.nll_loss(logp, pool_y[idx])
        return -(mixture.class_posterior(x, sigma).to(logp.dtype) * logp).sum(1).mean()

    model.train().requires_grad_(True)
    with torch_threads(threads):
        optimize(opt, losses, batch_loss, steps=steps, lr=lr, lr_decay_steps=lr_decay_steps, progress=progress,
                 desc="train classifier")
    return ClassifierResult(model.eval().requires_grad_(False), losses, time.perf_counter() - t0)
