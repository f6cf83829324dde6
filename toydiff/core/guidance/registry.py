"""Named guidance recipes: the one table of names every front end lists (both CLIs, the benchmark, the explorer).

A recipe is data: a name, the `Guidance` class it builds, fixed parameters of that class (e.g. cfg_interval's
interval), the models it `needs` (keyword roles: "guide" = a weaker denoiser for autoguidance, "classifier" = a
noise-aware log p(c | x; sigma), "uncond" = a separate unconditional model), its default weight, or None for a recipe
that takes no weight ("none"), a line of help, its formula and paper (`describe`: the explorer's description of
each method) and its weight's label and sensible range (`weight_range`: CFG++'s lambda lives in [0, 1]). `make(name, w, models..., modifiers...)` builds it through the
class's `from_weight(w, ...)`; `recipe.to_dict()` prints or saves it. `register` a new one and it appears wherever
`names()` is offered, with no other edits. A recipe never sees the sampler: a method whose formula depends on the
sampling schedule (sigma_max, the step count) takes the run's levels in `start_run(sigmas)`, which every toydiff
sampler calls before its first step (CFGZeroStar's zero-init, LinearCFG's time t).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..denoiser import SeparateNull, start_run
from .base import Guidance, Weight
from .methods import CFG, AutoGuidance, ClassifierGuidance, NoGuidance, ScoreScaling
from .modifiers import APG, CFGpp
from .recent import CFGZeroStar, LinearCFG

__all__ = ["Recipe", "RECIPES", "CFG_INTERVAL", "register", "make", "names", "default_weight", "takes_weight",
           "weight", "describe", "SeparateCFG"]

ROLES = ("guide", "classifier", "uncond")
WEIGHT_RANGE = ("$w$ (1 = none)", 0.0, 8.0)         # a weight's label and range on a slider, unless a recipe says
# CFG only where sigma <= 0.3 (Kynkaanniemi et al. 2024), tuned on the thin tree (figures.sweep): full-range CFG
# overshoots class A to the far branch tips, where the network is poor (Chidambaram et al. 2024); on the paper's
# tree it keeps far more of the branches (w = 4: recall 0.78 vs 0.43 for full-range CFG, outliers 0.019 vs 0.024;
# benchmarks/RESULTS.md)
CFG_INTERVAL = (0.0, 0.3)


@dataclass(frozen=True)
class Recipe:
    """A named guidance: `method.from_weight(w, **params, **models, **modifiers)`, the model roles it needs, its
    default w (None: the recipe takes no weight, w is 1), a line of help, its formula (mathtext) and paper, and
    its weight's (label, lo, hi)."""
    name: str
    method: type[Guidance]
    params: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    default_w: float | None = 1.0
    help: str = ""
    formula: str = ""
    paper: str = ""
    weight_range: tuple[str, float, float] = WEIGHT_RANGE

    def build(self, w: Weight | None = None, **kwargs: Any) -> Guidance:
        """The guidance at weight `w` (None: the default), `kwargs` = the models it needs and the modifiers."""
        return self.method.from_weight(weight(self, w), **{**self.params, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (json-able but for non-plain params): name, method (the class name), params, needs,
        default_w, help, formula, paper, weight_range."""
        return {"name": self.name, "method": self.method.__name__, "params": dict(self.params),
                "needs": list(self.needs), "default_w": self.default_w, "help": self.help, "formula": self.formula,
                "paper": self.paper, "weight_range": list(self.weight_range)}


RECIPES: dict[str, Recipe] = {}


def register(name: str,
             method: type[Guidance],
             *,
             params: dict[str, Any] | None = None,
             needs: tuple[str, ...] = (),
             default_w: float | None = 1.0,
             help: str = "",
             formula: str = "",
             paper: str = "",
             weight_range: tuple[str, float, float] = WEIGHT_RANGE) -> Recipe:
    """Add a recipe under `name` (an existing name is refused: one meaning per name)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier string, got {name!r}")
    if name in RECIPES:
        raise ValueError(f"guidance recipe {name!r} is already registered")
    if not (isinstance(method, type) and issubclass(method, Guidance)):
        raise TypeError(f"method must be a toydiff.guidance.Guidance subclass, got {method!r}")
    bad = [r for r in needs if r not in ROLES]
    if bad:
        raise ValueError(f"needs must name roles among {ROLES}, got {bad}")
    label, lo, hi = weight_range
    if default_w is not None and not lo <= default_w <= hi:
        raise ValueError(f"weight_range must hold default_w={default_w}, got {weight_range!r}")
    RECIPES[name] = Recipe(name, method, dict(params or {}), tuple(needs),
                           None if default_w is None else float(default_w), help, formula, paper,
                           (str(label), float(lo), float(hi)))
    return RECIPES[name]


def describe(name: str) -> str:
    """Two lines on recipe `name`: what it is, with the paper it comes from; its formula (mathtext)."""
    r = _recipe(name)
    return r.help + (f" ({r.paper})" if r.paper else "") + "\n" + r.formula


def names(available: tuple[str, ...] = ROLES) -> list[str]:
    """The registered recipe names whose needed models are among `available` (a CLI offers what it can load)."""
    return [k for k, r in RECIPES.items() if set(r.needs) <= set(available)]


def default_weight(name: str) -> float:
    """The recipe's default w (the toy paper's values for cfg / autoguidance / score_scaling; 1 for "none")."""
    return weight(name, None)


def takes_weight(name: str) -> bool:
    """Whether recipe `name` has a weight ("none" has not: its w is 1)."""
    return _recipe(name).default_w is not None


def weight(recipe: str | Recipe, w: Weight | None) -> Weight:
    """The weight recipe `recipe` runs at for a requested `w` (None: its default). The one place that says a recipe
    without a weight ("none") takes no w but 1: any other is refused, naming w."""
    r = recipe if isinstance(recipe, Recipe) else _recipe(recipe)
    if r.default_w is None:
        if w is not None and (callable(w) or w != 1):
            shown = "a schedule" if callable(w) else f"w={w:g}"
            raise ValueError(f"guidance {r.name!r} takes no weight other than 1: {shown} would be unused "
                             "(leave w out or pick a recipe)")
        return 1.0
    return r.default_w if w is None else w


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
    return recipe.build(w, **{r: models[r] for r in recipe.needs}, **modifiers)


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"guidance must be one of {list(RECIPES)}, got {name!r}")
    return RECIPES[name]


class SeparateCFG(CFG):
    """CFG with D_0 a separate unconditional model: CFG on `SeparateNull(denoiser, uncond)` (the D_1 and D_0 of
    Karras et al. 2024's toy CFG), so the two-network idea has one implementation (toydiff.denoiser)."""

    def __init__(self, uncond: Any, w: Weight = 1.0, **kwargs: Any):
        if not callable(uncond):
            raise TypeError(f"uncond must be a denoiser callable D(x, sigma, cond), got {type(uncond).__name__}")
        super().__init__(w, **kwargs)
        self.uncond = uncond

    def start_run(self, sigmas: Any) -> SeparateCFG:
        return self._replace(uncond=start_run(self.uncond, sigmas))

    def branches(self, denoiser, x, sigma, cond):
        return super().branches(SeparateNull(denoiser, self.uncond), x, sigma, cond)


register("none", NoGuidance, default_w=None, help="the model as it is, no guidance", formula="$D(x;\\sigma,c)$")
register("cfg", CFG, default_w=4.0, help="classifier-free guidance", paper="Ho & Salimans 2022, arXiv 2207.12598",
         formula="$D_0 + w\\,(D_1 - D_0)$, $D_0$: the unconditional prediction")
register("cfg_interval", CFG, params={"interval": CFG_INTERVAL}, default_w=4.0,
         help=f"CFG only where {CFG_INTERVAL[0]:g} < sigma <= {CFG_INTERVAL[1]:g}, the main model elsewhere",
         paper="Kynkaanniemi et al. 2024, arXiv 2404.07724",
         formula=f"$D_0 + w\\,(D_1 - D_0)$ for $\\sigma \\in ({CFG_INTERVAL[0]:g}, {CFG_INTERVAL[1]:g}]$, else $D_1$")
register("score_scaling", ScoreScaling, default_w=1.5, help="naive score scaling, a lower temperature everywhere",
         formula="$x + w\\,(D - x)$: the score times $w$")
register("autoguidance", AutoGuidance, needs=("guide",), default_w=3.0,
         help="guided by a weaker version of the same model", paper="Karras et al. 2024, arXiv 2406.02507",
         formula="$D_\\mathrm{guide} + w\\,(D_\\mathrm{main} - D_\\mathrm{guide})$, the same condition")
register("classifier", ClassifierGuidance, needs=("classifier",), default_w=2.0,
         help="classifier guidance at scale w - 1", paper="Dhariwal & Nichol 2021, arXiv 2105.05233",
         formula="$D + (w - 1)\\,\\sigma^2\\,\\nabla_x \\log p(c \\mid x;\\sigma)$")
register("apg", APG, params={"eta": 0.0, "norm_threshold": 0.0, "momentum": -0.5}, default_w=4.0,
         help="adaptive projected guidance on CFG", paper="Sadat et al. 2024, arXiv 2410.02416",
         formula="$D_1 + (w - 1)\\,m_\\perp$: the part of $D_1 - D_0$ (momentum $-0.5$) orthogonal to $D_1$")
register("cfgpp", CFGpp, default_w=0.5,
         help="CFG++, re-noised with the unguided branch; euler/ddim/ddpm samplers only",
         paper="Chung et al. 2024, arXiv 2406.08070",
         formula="$D_0 + \\lambda\\,(D_1 - D_0)$, $\\lambda \\in [0, 1]$; next $x$ from $D_0$'s noise",
         weight_range=("$\\lambda$ (0 = unconditional)", 0.0, 1.0))
register("cfg_separate", SeparateCFG, needs=("uncond",), default_w=4.0,
         help="CFG with D_0 a separate unconditional model (the autoguidance paper's toy CFG)",
         paper="Karras et al. 2024, arXiv 2406.02507", formula="$D_0 + w\\,(D_1 - D_0)$, $D_0$: another network")
register("cfg_rescale", CFG, params={"rescale": 0.7}, default_w=4.0,
         help="CFG rescaled to the conditional prediction's spread", paper="Lin et al. 2023, arXiv 2305.08891",
         formula="$\\phi\\,D_\\mathrm{cfg}\\,\\mathrm{std}(D_1)/\\mathrm{std}(D_\\mathrm{cfg}) + (1 - \\phi)\\,D_\\mathrm{cfg}$, "
                 "$\\phi = 0.7$")
register("autoguidance_interval", AutoGuidance, params={"interval": CFG_INTERVAL}, needs=("guide",), default_w=3.0,
         help=f"autoguidance only where {CFG_INTERVAL[0]:g} < sigma <= {CFG_INTERVAL[1]:g}",
         paper="Karras et al. 2024; Kynkaanniemi et al. 2024",
         formula=f"$D_\\mathrm{{guide}} + w\\,(D_\\mathrm{{main}} - D_\\mathrm{{guide}})$ for "
                 f"$\\sigma \\in ({CFG_INTERVAL[0]:g}, {CFG_INTERVAL[1]:g}]$")
# both take the sampler's schedule at start_run(sigmas) (every toydiff sampler calls it before the first step):
# zero-init on the run's first level, the linear schedule's t = 1 there, whatever sigma_max, steps or sampler
register("cfg_zero_star", CFGZeroStar, default_w=4.0,
         help="CFG-Zero*: optimized scale + zero-init of the first step", paper="Fan et al. 2025, arXiv 2503.18886",
         formula="$v_0 s^* + w\\,(v_1 - v_0 s^*)$ in velocity space, $s^* = \\langle v_1, v_0\\rangle / |v_0|^2$")
register("linear_cfg", LinearCFG, default_w=4.0,
         help="CFG with a linearly increasing weight, mean w", paper="Wang et al. 2024, arXiv 2404.13040",
         formula="$D_0 + w_t\\,(D_1 - D_0)$, $w_t = 1 + 2(w - 1)(1 - t)$")
