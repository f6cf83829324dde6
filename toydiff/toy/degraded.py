"""Synthetically degraded copies of a network, the autoguidance paper's controlled experiment (Karras et al. 2024,
Guiding a Diffusion Model with a Bad Version of Itself, arXiv 2406.02507, Sec. 5); re-exported by toydiff.zoo."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from .nets import MLPDenoiser

__all__ = ["Degraded"]


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
