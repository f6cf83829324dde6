"""Named guidance recipes: one name -> builder table that every front end lists (both CLIs, benchmarks, apps).

A builder takes the weight w, the models the recipe `needs` (keyword roles: "guide" = a weaker denoiser for
autoguidance, "classifier" = a noise-aware log p(c | x; sigma)) and the shared modifiers (`interval`, `rescale`),
and returns a `Guidance`. `register` a new one and it appears wherever `names()` is offered, with no other edits.
The builder never sees the sampler: a method whose formula depends on the sampling schedule (sigma_max, the step
count) takes the run's levels in `reset(sigmas)`, which every toydiff sampler calls before its first step
(CFGZeroStar's zero-init, LinearCFG's time t); driving a guided denoiser with your own loop, call it yourself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..denoiser import SeparateNull, reset
from .base import Guidance, Weight
from .methods import CFG, AutoGuidance, ClassifierGuidance, NoGuidance, ScoreScaling
from .modifiers import APG, CFGpp
from .recent import CFGZeroStar, LinearCFG

__all__ = ["Recipe", "RECIPES", "CFG_INTERVAL", "register", "make", "names", "default_weight"]

ROLES = ("guide", "classifier", "uncond")
# CFG only where sigma <= 0.3 (Kynkaanniemi et al. 2024), tuned on the thin tree (figures.sweep): full-range CFG
# overshoots class A to the far branch tips, where the network is poor (Chidambaram et al. 2024); on the paper's
# tree it keeps far more of the branches (w = 4: recall 0.78 vs 0.43 for full-range CFG, outliers 0.019 vs 0.024;
# benchmarks/RESULTS.md)
CFG_INTERVAL = (0.0, 0.3)


@dataclass(frozen=True)
class Recipe:
    """A named guidance: `build(w, **models, **modifiers) -> Guidance`, the model roles it needs, its default w."""
    name: str
    build: Callable[..., Guidance]
    needs: tuple[str, ...] = ()
    default_w: float = 1.0
    help: str = ""


RECIPES: dict[str, Recipe] = {}


def register(name: str, build: Callable[..., Guidance], *, needs: tuple[str, ...] = (), default_w: float = 1.0,
             help: str = "") -> Recipe:
    """Add a recipe under `name` (an existing name is refused: one meaning per name)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier string, got {name!r}")
    if name in RECIPES:
        raise ValueError(f"guidance recipe {name!r} is already registered")
    bad = [r for r in needs if r not in ROLES]
    if bad:
        raise ValueError(f"needs must name roles among {ROLES}, got {bad}")
    RECIPES[name] = Recipe(name, build, tuple(needs), float(default_w), help)
    return RECIPES[name]


def names(available: tuple[str, ...] = ROLES) -> list[str]:
    """The registered recipe names whose needed models are among `available` (a CLI offers what it can load)."""
    return [k for k, r in RECIPES.items() if set(r.needs) <= set(available)]


def default_weight(name: str) -> float:
    """The recipe's default w (the toy paper's values for cfg / autoguidance / score_scaling)."""
    return _recipe(name).default_w


def make(name: str, w: Weight | None = None, *, guide: Any = None, classifier: Any = None, uncond: Any = None,
         **modifiers: Any) -> Guidance:
    """The Guidance of recipe `name` at weight `w` (None: its default; a callable sigma -> w works for the
    built-in recipes but "none"), given the models it needs; `modifiers`: `interval`, `rescale`
    (toydiff.guidance.Guidance)."""
    recipe = _recipe(name)
    models = {"guide": guide, "classifier": classifier, "uncond": uncond}
    missing = [r for r in recipe.needs if models[r] is None]
    if missing:
        raise ValueError(f"guidance {name!r} needs {' and '.join(missing)} (a model), got None")
    return recipe.build(recipe.default_w if w is None else w, **{r: models[r] for r in recipe.needs}, **modifiers)


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"guidance must be one of {list(RECIPES)}, got {name!r}")
    return RECIPES[name]


def _minus_one(w: Weight) -> Weight:
    """w - 1, for a number or a schedule sigma -> w (the classifier scale of weight w)."""
    return (lambda sigma: w(sigma) - 1) if callable(w) else w - 1


class _SeparateCFG(CFG):
    """CFG with D_0 a separate unconditional model: CFG on `SeparateNull(denoiser, uncond)` (the D_1 and D_0 of
    Karras et al. 2024's toy CFG), so the two-network idea has one implementation (toydiff.denoiser)."""

    def __init__(self, uncond: Any, w: Weight = 1.0, **kwargs: Any):
        if not callable(uncond):
            raise TypeError(f"uncond must be a denoiser callable D(x, sigma, cond), got {type(uncond).__name__}")
        super().__init__(w, **kwargs)
        self.uncond = uncond

    def reset(self, sigmas: Any = None) -> None:
        reset(self.uncond, sigmas)

    def branches(self, denoiser, x, sigma, cond):
        return super().branches(SeparateNull(denoiser, self.uncond), x, sigma, cond)


def _none(w: float, **modifiers: Any) -> Guidance:
    if w != 1:
        raise ValueError(f"guidance 'none' takes no weight other than 1, got w={w}")
    return NoGuidance()


register("none", _none, help="the model as it is")
register("cfg", lambda w, **m: CFG(w, **m), default_w=4.0, help="classifier-free guidance (Ho & Salimans 2022)")
register("cfg_interval", lambda w, **m: CFG(w, **{"interval": CFG_INTERVAL, **m}), default_w=4.0,
         help=f"CFG on sigma in {CFG_INTERVAL} only (Kynkaanniemi et al. 2024)")
register("score_scaling", lambda w, **m: ScoreScaling(w, **m), default_w=1.5, help="naive score scaling")
register("autoguidance", lambda w, guide, **m: AutoGuidance(guide, w, **m), needs=("guide",), default_w=3.0,
         help="guided by a weaker model (Karras et al. 2024)")
register("classifier", lambda w, classifier, **m: ClassifierGuidance(classifier, _minus_one(w), **m),
         needs=("classifier",), default_w=2.0, help="classifier guidance at scale w - 1 (Dhariwal & Nichol 2021)")
register("apg", lambda w, **m: APG(w, eta=0.0, norm_threshold=0.0, momentum=-0.5, **m), default_w=4.0,
         help="adaptive projected guidance on CFG (Sadat et al. 2024)")
register("cfgpp", lambda w, **m: CFGpp(w, **m), default_w=0.5,
         help="CFG++, w = lambda in [0, 1] (Chung et al. 2024); euler/ddim/ddpm samplers only")
register("cfg_separate", lambda w, uncond, **m: _SeparateCFG(uncond, w, **m), needs=("uncond",),
         default_w=4.0, help="CFG with D_0 a separate unconditional model (the autoguidance paper's toy CFG)")
register("cfg_rescale", lambda w, **m: CFG(w, **{"rescale": 0.7, **m}), default_w=4.0,
         help="CFG with rescale phi = 0.7 (Lin et al. 2023)")
register("autoguidance_interval", lambda w, guide, **m: AutoGuidance(guide, w, **{"interval": CFG_INTERVAL, **m}),
         needs=("guide",), default_w=3.0, help=f"autoguidance on sigma in {CFG_INTERVAL} only")
# both take the sampler's schedule at reset(sigmas) (every toydiff sampler calls it before the first step): zero-init
# on the run's first level, the linear schedule's t = 1 there, whatever sigma_max, steps or sampler
register("cfg_zero_star", lambda w, **m: CFGZeroStar(w, **m), default_w=4.0,
         help="CFG-Zero*: optimized scale + zero-init of the first step (Fan et al. 2025)")
register("linear_cfg", lambda w, **m: LinearCFG(w, **m), default_w=4.0,
         help="CFG with a linearly increasing weight, mean w (Wang et al. 2024)")
