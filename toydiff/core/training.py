"""The training core shared by the toy trainer and imagenet_ext.train: one EDM loss, two EMA rules, and the
checkpoint format (toydiff.core.checkpoint, re-exported here).

Loss (Karras et al. 2022, EDM eq. 2 and Table 1), x = y + s n, ln s ~ N(P_mean, P_std^2):
    L = E[ lambda(s) |D(x; s, c) - target|^2 ],   lambda(s) = (s^2 + sd^2) / (s sd)^2
|.|^2 is the squared norm, SUMMED over every non-batch dim (EDM's reference code sums over pixels too), averaged
over the batch.

EMA rules: `ema_beta_power` (EDM2's power function, a profile relative to the run length; the toy trainer) and
`ema_beta_halflife` (EDM's half-life in images; imagenet_ext). Checkpoints: one dict format, written atomically,
read back only by `load_checkpoint` with torch.load(weights_only=True).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import Tensor

from ..infra.validation import check_positive_int
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint

__all__ = ["edm_weight", "edm_loss", "ema_beta_power", "ema_beta_halflife", "ema_update", "torch_threads",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

def edm_weight(sigma: Tensor | float, sigma_data: float) -> Tensor | float:
    """EDM's loss weight lambda(s) = (s^2 + sd^2) / (s sd)^2 (Karras et al. 2022, Table 1)."""
    sd2 = sigma_data ** 2
    return (sigma ** 2 + sd2) / (sigma ** 2 * sd2)


def edm_loss(denoised: Tensor, target: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """Per-sample EDM loss [N] = lambda(s) |D - target|^2, the square summed over all non-batch dims (EDM eq. 2);
    `denoised` is cast to the target's dtype (a bf16-autocast network is scored in float32)."""
    return edm_weight(sigma, sigma_data) * (denoised.to(target.dtype) - target).square().flatten(1).sum(1)


def ema_beta_power(step: int, ema_std: float) -> float:
    """Power-function EMA decay for the update after ``step`` steps (Karras et al. 2024, EDM2, Sec. 3.1).

    The EMA averages the weights of steps 1..t with a profile ~ tau^gamma, where gamma solves
    std^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) (std relative to the training length), so it adapts to
    any run length: beta_t = (1 - 1/t)^(gamma + 1), t = step + 1 (beta = 0 at the first step). The EMA after T
    steps is then exactly sum_t theta_t (t^(gamma+1) - (t-1)^(gamma+1)) / T^(gamma+1).
    """
    return (1 - 1 / (step + 1)) ** (_ema_gamma(ema_std) + 1)


@functools.lru_cache
def _ema_gamma(ema_std: float) -> float:
    return float(max(np.roots([1, 7, 16 - ema_std ** -2, 12 - ema_std ** -2]).real))


def ema_beta_halflife(batch: int, nimg: int, halflife_kimg: float, rampup: float | None) -> float:
    """EMA decay per step for a half-life in images (EDM's training loop, Karras et al. 2022): beta =
    0.5 ** (batch / h), h = 1000 halflife_kimg capped at `rampup * nimg` early in training (nimg images seen)."""
    h = halflife_kimg * 1000
    if rampup is not None and rampup > 0:
        h = min(h, nimg * rampup)
    return 0.5 ** (batch / max(h, 1e-8))


@torch.no_grad()
def ema_update(ema_params: list[Tensor], params: list[Tensor], beta: float) -> None:
    """ema = beta ema + (1 - beta) params, in place."""
    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - beta)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run torch on ``threads`` intra-op threads inside the block (None: leave as is), restored afterwards.
    These tiny MLPs and [N, K] mixture blocks gain nothing from threads, and on a shared 2-core machine thread
    contention made training steps 10x and sampling ~50x slower (measured)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(saved if threads is None else check_positive_int(threads, "threads"))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
