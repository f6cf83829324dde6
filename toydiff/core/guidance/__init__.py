"""Guidance: turn denoisers into a guided denoiser. Shape-agnostic: [N, 2] points and [N, 3, H, W] images alike.

Weight convention (Karras et al. 2024; EDM2; diffusers' `guidance_scale`): w = 1 is no guidance and

    D_w(x; sigma, c) = D_0 + w (D_1 - D_0) = D_1 + (w - 1) (D_1 - D_0)

where D_1 is the model being guided and D_0 the "negative" prediction it is pushed away from. In score
terms, s_w = s_0 + w (s_1 - s_0), since D = x + sigma^2 s. Ho & Salimans (2022) write the same rule as
(1 + w') D_1 - w' D_0, so their w' = w - 1 (`to_ho_salimans` / `from_ho_salimans`).

Every method below supplies the unguided prediction D_1 and the guidance direction D_1 - D_0; the shared
machinery adds a per-sigma weight schedule (`w` may be a callable of sigma), a guidance interval
(Kynkaanniemi et al. 2024) and CFG rescale (Lin et al. 2023). `APG` (Sadat et al. 2024) and `CFGpp`
(Chung et al. 2024) reshape the update of any of them (`on=`). `guided(denoiser, guidance)` returns an
object that obeys the denoiser contract, so samplers never know about guidance; it keeps the contract's
extensions (toydiff.denoiser: `start_run(sigmas)`, `denoise_with_renoise`). `make(name, w, ...)` builds a guidance from
the registry of named recipes (`register`), which the CLIs, benchmarks and apps list.

Modules: base (this machinery, `guided`), methods (CFG, autoguidance, score scaling, classifier guidance),
modifiers (APG, CFG++), recent (CFG-Zero*, linear-schedule CFG: methods since 2024), registry (names -> builders).
"""
from __future__ import annotations
from .base import Guidance, GuidedDenoiser, Weight, from_ho_salimans, guided, to_ho_salimans
from .methods import CFG, AutoGuidance, ClassifierGuidance, NoGuidance, ScoreScaling
from .modifiers import APG, CFGpp
from .recent import CFGZeroStar, LinearCFG, optimized_scale
from .registry import (CFG_INTERVAL, RECIPES, Recipe, SeparateCFG, default_weight, describe, make, names,
                       register, takes_weight, weight)

__all__ = ["Guidance", "Weight", "NoGuidance", "CFG", "AutoGuidance", "ClassifierGuidance", "ScoreScaling", "APG",
           "CFGpp", "CFGZeroStar", "LinearCFG", "optimized_scale", "SeparateCFG", "GuidedDenoiser", "guided", "to_ho_salimans",
           "from_ho_salimans", "Recipe", "RECIPES", "register", "make", "names", "default_weight", "takes_weight",
           "weight", "describe", "CFG_INTERVAL"]
