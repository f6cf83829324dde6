"""The toy world's sampling settings and guided denoisers, shared by every toy figure, notebook and the bench.

Sampling: EDM Heun, STEPS steps, sigma in [0.002, SIGMA_MAX], rho = 7 (Karras et al. 2022, arXiv 2206.00364).
SIGMA_MAX = 5 = 10 sigma_data, the value of the autoguidance paper's toy (Karras et al. 2024, arXiv 2406.02507):
the data's std 0.5 changes the std of p(x; 5) by 0.5%, so starting from N(0, 5^2 I) is exact for all practical
purposes, while 80 (the image value) would spend steps where nothing happens. The names are re-exported by
toydiff.toy.zoo (`zoo.draw`, `zoo.guided_denoiser`, ...).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..core import guidance, samplers
from ..core.denoiser import SeparateNull
from ..infra.validation import check_positive_int

__all__ = ["SIGMA_MAX", "STEPS", "WEIGHTS", "guided_denoiser", "draw"]

SIGMA_MAX = 5.0
STEPS = 32

# the paper's toy weights (Karras et al. 2024): CFG 4, autoguidance 3; score scaling 1.5 (the registry's defaults);
# "cfg_dropout" is the recipe "cfg" on the condition-dropout network
WEIGHTS = {k: guidance.default_weight(k) for k in ("none", "cfg", "score_scaling", "autoguidance")}
WEIGHTS = {**WEIGHTS, "cfg_dropout": WEIGHTS["cfg"]}


def guided_denoiser(models: Any, name: str, w: float | None = None, *, uncond: Callable | None = None,
                    **modifiers: Any) -> Callable:
    """The main model of `models` (a toydiff.toy.zoo.ToyModels) under the guidance recipe `name` of toydiff.guidance's
    registry, with the models it needs:
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
