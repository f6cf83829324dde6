"""Recipe research for the tree toy (issue 9): which training recipe makes Fig. 1 of Karras et al. 2024 come out.

Target (DESIGN.md, "The autoguidance toy"), on tree() class A, 4096 samples, EDM Heun 32 steps from sigma_max 5,
toydiff's outlier metric: no guidance outliers <= 0.12 and recall >= 0.95; CFG w=4 with a SEPARATE small 4x32
unconditional (class A+B) D_0 ("paper setup"): outliers at most 0.02 above no guidance, precision >= 0.9,
recall <= 0.45; autoguidance w=3 (guide 4x32, 1/8 of the main training): outliers <= 0.05, precision >= 0.95,
recall >= 0.77. The paper's released code gives 0.118 / 0.125 / 0.053 there. Also the practical CFG setup: one
condition-dropout network (Ho & Salimans 2022), w = 4.

Every model is trained single-threaded with toydiff.training.train; each row prints the seconds it took.
    python benchmarks/tree_recipe.py --recipes base energy --seeds 0 1 2    # the alternatives (here: separate seeds)
    python benchmarks/tree_recipe.py --zoo --seeds 0 1 2                    # the shipped recipe, toydiff.zoo specs
    python benchmarks/tree_recipe.py --zoo --seeds 0 1 2 --spec loss=dsm tree_main.position_freqs=0   # edited specs
    python benchmarks/tree_recipe.py --diagnose     # which model's error, at which sigma, makes the outliers
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from toydiff import datasets, metrics, nets, samplers, zoo
from toydiff.distributions import GaussianMixture
from toydiff.guidance import CFG, AutoGuidance, guided
from toydiff.training import denoiser_error, train

# name -> recipe; main / guide / uncond / dropout are (steps, width, batch); the other settings apply to all four
BASE = dict(head="vector", uncond_head="vector", loss="dsm", lr=1e-2, lr_decay=512, ema=0.010, p_mean=-2.3,
            p_std=1.5, main=(4096, 64, 1024), guide=(512, 32, 1024), uncond=(512, 32, 1024), dropout=(4096, 64, 1024),
            p_uncond=0.1)
RECIPES = {
    "base": {},
    "energy": dict(head="energy", uncond_head="energy"),
    "exact": dict(loss="exact", main=(2048, 64, 256), guide=(256, 32, 256), uncond=(256, 32, 256)),
    "ema05": dict(ema=0.05),
    "ema10": dict(ema=0.10),
    "long": dict(main=(8192, 64, 1024), guide=(1024, 32, 1024)),
    "b4096": dict(main=(4096, 64, 4096), guide=(512, 32, 4096), uncond=(512, 32, 4096), dropout=(4096, 64, 4096)),
    "b2048": dict(main=(4096, 64, 2048), guide=(512, 32, 4096), uncond=(512, 32, 4096)),
    "b2048e": dict(main=(4096, 64, 2048), guide=(512, 32, 4096), uncond=(512, 32, 4096), uncond_head="energy"),
}
N, STEPS, SIGMA_MAX, W_CFG, W_AUTO = 4096, 32, 5.0, 4.0, 3.0


def fit(recipe: dict, data: GaussianMixture, steps: int, width: int, batch: int, num_classes: int, seed: int,
        p_uncond: float = 0.0, head: str = "head") -> tuple[nets.MLPDenoiser, float]:
    cls = nets.EnergyMLPDenoiser if recipe[head] == "energy" else nets.MLPDenoiser
    model = cls(num_classes=num_classes, width=width, depth=4, seed=seed)
    r = train(model, data, steps=steps, batch_size=batch, lr=recipe["lr"], lr_decay_steps=recipe["lr_decay"],
              loss=recipe["loss"], p_uncond=p_uncond, p_mean=recipe["p_mean"], p_std=recipe["p_std"],
              ema_std=recipe["ema"], seed=seed, progress=False)
    return r.ema, r.seconds


def measure(denoiser, cond: torch.Tensor | None, tree: GaussianMixture, reference: torch.Tensor) -> tuple[float, ...]:
    """(outliers, precision, recall) on class A of N samples: EDM Heun, STEPS steps from SIGMA_MAX, start seed 7."""
    x = samplers.sample(denoiser, (N, 2), cond, steps=STEPS, sigma_max=SIGMA_MAX,
                        generator=torch.Generator().manual_seed(7))
    m = metrics.evaluate(x, tree, 0, reference=reference)
    return m["outlier_fraction"], m["precision"], m["recall"]


def run(name: str, seed: int, tree: GaussianMixture, reference: torch.Tensor) -> dict:
    recipe = {**BASE, **RECIPES[name]}
    class_a = zoo.training_data(zoo.ModelSpec(classes=(0,)))
    main, t_main = fit(recipe, class_a, *recipe["main"], 0, seed)
    guide, t_guide = fit(recipe, class_a, *recipe["guide"], 0, seed + 1000)
    uncond, t_uncond = fit(recipe, tree, *recipe["uncond"], 0, seed + 2000, head="uncond_head")
    cond = torch.zeros(N, dtype=torch.long)
    denoisers = {"none": (main, None), "cfg": (guided(main, AutoGuidance(uncond, W_CFG)), None),
                 "auto": (guided(main, AutoGuidance(guide, W_AUTO)), None)}
    t_drop = 0.0
    if recipe["dropout"][0] > 0:
        dropout, t_drop = fit(recipe, tree, *recipe["dropout"], 2, seed + 3000, p_uncond=recipe["p_uncond"])
        denoisers["cfg_dropout"] = (guided(dropout, CFG(W_CFG)), cond)
    row = dict(recipe=name, seed=seed, seconds=t_main + t_guide + t_uncond + t_drop,
               times=(t_main, t_guide, t_uncond, t_drop), cfg_dropout=(float("nan"),) * 3)
    for method, (d, c) in denoisers.items():
        row[method] = measure(d, c, tree, reference)
    return row


def run_zoo(seed: int, tree: GaussianMixture, reference: torch.Tensor, skip: tuple[str, ...] = ()) -> dict:
    """The zoo's recipe (the specs of toydiff.zoo.TREE_MODELS trained with `seed`) through zoo.guided_denoiser;
    the models named in `skip` are not trained (their methods are left out)."""
    times, shipped = [], zoo.load_models()
    for name in zoo.TREE_MODELS:
        t0 = time.perf_counter()
        model = getattr(shipped, name.removeprefix("tree_")) if name in skip else zoo.train_model(name, seed, False)
        times.append((name, model, time.perf_counter() - t0))
    models = zoo.ToyModels(*(m for _, m, _ in times))
    row = dict(recipe="zoo", seed=seed, seconds=sum(t for *_, t in times), times=tuple(t for *_, t in times))
    row["cfg_dropout"] = (float("nan"),) * 3
    for method, key in (("none", "none"), ("cfg", "cfg"), ("cfg_dropout", "cfg_dropout"), ("autoguidance", "auto")):
        if method == "cfg_dropout" and "tree_dropout" in skip:
            continue
        row[key] = measure(zoo.guided_denoiser(models, method), torch.zeros(N, dtype=torch.long), tree, reference)
    return row


class _ExactBelow:
    """`model` with the exact class-A denoiser (or the marginal one, `marginal`) where lo <= sigma < hi."""

    def __init__(self, model, tree: GaussianMixture, lo: float, hi: float, marginal: bool = False):
        self.model, self.tree, self.lo, self.hi, self.marginal = model, tree, lo, hi, marginal

    def __call__(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        out = self.model(x, s, cond).clone()
        exact = (s >= self.lo) & (s < self.hi)
        if exact.any():
            c = None if self.marginal else torch.zeros(int(exact.sum()), dtype=torch.long)
            out[exact] = self.tree.denoise(x[exact].double(), s[exact].double(), c).to(x.dtype)
        return out


def diagnose(tree: GaussianMixture, reference: torch.Tensor) -> None:
    """Which network's error, at which sigma, makes the outliers: the shipped models with the exact denoiser
    swapped in for the main model (D_1) or CFG's D_0 on a sigma range, and their EDM-weighted errors vs sigma."""
    shipped = zoo.load_models()
    swaps = {"shipped": (shipped.main, shipped.uncond), "exact D_0": (shipped.main, _ExactBelow(shipped.uncond, tree,
                                                                                                 0, 99, True))}
    swaps |= {f"exact D_1 on [{lo}, {hi})": (_ExactBelow(shipped.main, tree, lo, hi), shipped.uncond)
              for lo, hi in ((0, 0.05), (0.05, 0.3), (0.3, 1.5), (1.5, 99), (0, 99))}
    for label, (main, uncond) in swaps.items():
        models = zoo.ToyModels(main, shipped.guide, uncond, shipped.dropout)
        cells = ["{}: {:.3f}/{:.2f}/{:.2f}".format(method, *measure(zoo.guided_denoiser(models, method),
                                                                    torch.zeros(N, dtype=torch.long), tree, reference))
                 for method in ("none", "cfg", "autoguidance")]
        print(f"{label:24s} " + "  ".join(cells), flush=True)
    class_a = zoo.training_data(zoo.ModelSpec(classes=(0,)))
    for sigma in (0.005, 0.01, 0.02, 0.05, 0.2, 1.0, 5.0):
        errs = [denoiser_error(m, data, sigma, cond=c) for m, data, c in
                ((shipped.main, class_a, 0), (shipped.guide, class_a, 0), (shipped.uncond, tree, None))]
        print(f"sigma {sigma:5g}: EDM-weighted error vs the exact denoiser: main {errs[0]:.4f}  guide {errs[1]:.4f}  "
              f"uncond {errs[2]:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["base"], choices=sorted(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--zoo", action="store_true", help="train and measure the shipped recipe (toydiff.zoo) instead")
    ap.add_argument("--diagnose", action="store_true", help="swap the exact denoiser into the shipped models by sigma")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override recipe settings, e.g. head=energy main=2048,64 dropout=0,64")
    ap.add_argument("--spec", nargs="*", default=[], metavar="[MODEL.]KEY=VALUE",
                    help="with --zoo: override zoo.ModelSpec fields, e.g. loss=dsm tree_main.position_freqs=0")
    ap.add_argument("--skip", nargs="*", default=[], choices=zoo.TREE_MODELS,
                    help="with --zoo: use the shipped checkpoint of these models instead of training them")
    args = ap.parse_args()
    for item in args.spec:
        key, value = item.split("=")
        names, key = ([key.split(".")[0]], key.split(".")[1]) if "." in key else (zoo.TREE_MODELS, key)
        for name in names:
            spec = zoo.MODEL_SPECS[name]
            zoo.MODEL_SPECS[name] = dataclasses.replace(spec, **{key: type(getattr(spec, key))(value)})
    for item in args.set:
        key, value = item.split("=")
        value = tuple(int(v) for v in value.split(",")) if "," in value else value
        for name in args.recipes:
            RECIPES[name] = {**RECIPES[name], key: type(BASE[key])(value) if not isinstance(value, tuple) else value}

    torch.set_num_threads(1)
    tree = datasets.tree()
    reference = tree.sample(N, cond=0, generator=torch.Generator().manual_seed(1))[0]
    if args.diagnose:
        return diagnose(tree, reference)
    print(f"{'recipe':8s} {'seed':>4s} {'train s':>7s}  " + "  ".join(f"{m:>17s}" for m in
          ("none", "cfg (paper)", "cfg_dropout", "autoguidance")) + "   (outliers / precision / recall)")
    for name in ["zoo"] if args.zoo else args.recipes:
        for seed in args.seeds:
            t0 = time.perf_counter()
            row = run_zoo(seed, tree, reference, tuple(args.skip)) if args.zoo else run(name, seed, tree, reference)
            cells = "  ".join("{:.3f}/{:.2f}/{:.2f}".format(*row[m]) for m in ("none", "cfg", "cfg_dropout", "auto"))
            times = "+".join(f"{t:.0f}" for t in row["times"])
            print(f"{name:8s} {seed:4d} {row['seconds']:7.1f}  {cells}   [{times} s; {time.perf_counter() - t0:.0f} s "
                  f"in all] {' '.join(args.set + args.spec)}", flush=True)


if __name__ == "__main__":
    main()
