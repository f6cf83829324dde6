"""The samplers at equal cost: every sampling method of `toydiff.samplers` on a bench dataset, at the same number
of denoiser evaluations, on the exact denoiser (only the sampler's error remains) and on the bench model guided by
CFG at w = SAMPLER_W, scored by the bench's metrics against the same true samples as the guidance sweep.

Rows (SAMPLER_ROWS): EDM's Heun (Alg. 1) and its stochastic sampler (Alg. 2 with EDM's ImageNet-64 churn, Karras
et al. 2022, Table 5), Euler, DPM-Solver++(2M) (Lu et al. 2022), DDPM ancestral and Euler-Maruyama on EDM's rho = 7
schedule; and Euler on the flow schedule with SD3's shift 3 (Esser et al. 2024), Euler in t as flow models sample.
Budgets (EVALS): Heun costs 2 evaluations a step but the last, so E evaluations are (E + 1) / 2 Heun steps and
E steps of every other method. Every row starts from the same noise (common random numbers).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import guidance, samplers
from .models import BenchModels

__all__ = ["SAMPLER_ROWS", "EVALS", "SAMPLER_W", "steps_for", "sampler_table"]

EDM_CHURN = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)      # EDM Table 5, ImageNet-64
# row: (method, its options, the schedule and its arguments; None = EDM's with the bench's rho)
SAMPLER_ROWS: dict[str, tuple[str, dict, tuple[str, dict] | None]] = {
    "heun": ("heun", {}, None),
    "heun_churn": ("heun", EDM_CHURN, None),
    "euler": ("euler", {}, None),
    "dpmpp_2m": ("dpmpp_2m", {}, None),
    "ddpm": ("ddpm", {}, None),
    "euler_maruyama": ("euler_maruyama", {}, None),
    "flow_euler": ("euler", {}, ("flow", dict(shift=3.0))),
}
EVALS = (15, 63)
SAMPLER_W = 2.0
DENOISERS = ("exact", "cfg")


def steps_for(method: str, evals: int) -> int:
    """Steps of `method` that cost `evals` denoiser evaluations (Heun: 2 a step, 1 on the last)."""
    return (evals + 1) // 2 if method == "heun" else evals


def sampler_table(models: BenchModels, n: int, seed: int, sigma_range: tuple[float, float, float],
                  score: Callable[[Tensor, Tensor], dict[str, float]], progress: bool = False) -> dict:
    """{"w": SAMPLER_W, "results": {denoiser: {str(evals): {row: metrics}}}} over DENOISERS x EVALS x SAMPLER_ROWS.
    `sigma_range`: the bench's (sigma_min, sigma_max, rho) (rho for EDM's schedule only); `score(x [n, 2],
    labels [n])`: the bench's metrics."""
    sigma_min, sigma_max, rho = sigma_range
    labels = torch.arange(n) % models.data.num_classes
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))     # the start is sigmas[0] eps
    denoisers = {"exact": (models.data, torch.float64),
                 "cfg": (guidance.guided(models.main, guidance.make("cfg", SAMPLER_W)), torch.float32)}
    out: dict = {}
    cases = [(d, e, r) for d in DENOISERS for e in EVALS for r in SAMPLER_ROWS]
    for den_name, evals, row in tqdm(cases, desc="samplers", disable=not progress, leave=False):
        method, options, schedule = SAMPLER_ROWS[row]
        name, arguments = schedule or ("edm", dict(rho=rho))
        sigmas = samplers.SCHEDULES[name](steps_for(method, evals), sigma_min, sigma_max, **arguments)
        denoiser, dtype = denoisers[den_name]
        x = samplers.sample(denoiser, (sigmas[0] * eps).to(dtype), labels, method=method, sigmas=sigmas,
                            generator=torch.Generator().manual_seed(seed + 1), **options)
        out.setdefault(den_name, {}).setdefault(str(evals), {})[row] = score(x.float(), labels)
    return dict(w=SAMPLER_W, results=out)
