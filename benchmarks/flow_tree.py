"""The flow-matching tree models (toydiff.zoo.FLOW_MODELS) against the EDM main model's targets, and CFG vs CFG-Zero*
on their native ground (Fan et al. 2025, arXiv 2503.18886: a flow-matching velocity model).

Class A of tree(), 4096 samples per run, EDM Heun 32 steps from sigma_max 5 (zoo.draw) through
toydiff.core.flow.VelocityDenoiser, start-noise seeds 0 / 11 / 22 / 33, reference seed 1 (tests/test_tree_recipe.py's);
outliers / precision / recall (toydiff.metrics) and the histogram TV against p(x | A) (toydiff.histogram, 32 x 32 bins).
Methods: no guidance; CFG w = 4 with the separate unconditional flow model as D_0 (the paper setup of Karras et al.
2024); CFG-Zero* w = 4 with the optimized scale and zero-init K = 1 (the paper's), and with the optimized scale
only (zero_init = 0); autoguidance w = 3 with the flow guide.

    python benchmarks/flow_tree.py                              # the shipped flow models
    python benchmarks/flow_tree.py --edm                        # the same table for the shipped EDM tree models
    python benchmarks/flow_tree.py --sampler flow_euler         # SD3's sampler: Euler in t, 32 steps, shift 3
    python benchmarks/flow_tree.py --train DIR [--spec objective=flow_uniform]   # train the recipe (edited) into DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import torch

from toydiff import datasets, metrics, samplers, zoo
from toydiff.histogram import histogram_divergence

SEEDS, N = (0, 11, 22, 33), 4096
METHODS = {"none": ("none", {}), "cfg": ("cfg", {}), "cfg_zero_star": ("cfg_zero_star", {}),
           "cfg_zero_star_scale_only": ("cfg_zero_star", {"zero_init": 0}), "autoguidance": ("autoguidance", {})}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train(directory: str, edits: dict) -> None:
    """Train FLOW_MODELS (their specs with `edits`) with seed 0 into `directory`; prints CPU seconds per model."""
    for name in zoo.FLOW_MODELS:
        spec = dataclasses.replace(zoo.MODEL_SPECS[name], **edits)
        c0, t0 = cpu_seconds(), time.perf_counter()
        model = zoo.train_model(spec, progress=False)
        zoo.MODEL_SPECS[name] = spec
        zoo.save_model(name, model, directory)
        print(f"{name}: {cpu_seconds() - c0:.0f} s CPU, {time.perf_counter() - t0:.0f} s wall", flush=True)


def draw(denoiser, seed: int, sampler: str) -> torch.Tensor:
    """N samples of class A: the zoo's EDM Heun, or "flow_euler", Euler on the flow schedule (uniform in t, SD3's
    shift 3, from sigma 5 before the shift; toydiff.samplers), the same 32 steps."""
    if sampler == "heun":
        return zoo.draw(denoiser, N, 0, seed=seed)
    return samplers.sample(denoiser, (N, 2), torch.zeros(N, dtype=torch.long), method="euler", schedule="flow",
                           steps=zoo.STEPS, sigma_max=zoo.SIGMA_MAX, shift=3.0,
                           generator=torch.Generator().manual_seed(seed))


def measure(models: zoo.ToyModels, methods: dict = METHODS, sampler: str = "heun") -> dict:
    """{method: {metric: [per seed]}} on class A (see the module docstring)."""
    tree = datasets.tree()
    ref = tree.sample(N, cond=0, generator=torch.Generator().manual_seed(1))[0]
    out = {}
    with torch.no_grad():
        for key, (name, mods) in methods.items():
            rows = []
            for seed in SEEDS:
                x = draw(zoo.guided_denoiser(models, name, **mods), seed, sampler)
                m = metrics.evaluate(x, tree, 0, reference=ref)
                rows.append(dict(outliers=m["outlier_fraction"], precision=m["precision"], recall=m["recall"],
                                 tv=histogram_divergence(x, tree, 0)["tv"]))
            out[key] = {k: [r[k] for r in rows] for k in rows[0]}
            print(key, " ".join(f"{k} {sum(v) / len(v):.3f} [{min(v):.3f}, {max(v):.3f}]" for k, v in out[key].items()),
                  flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", metavar="DIR", help="train the flow recipe into DIR and measure it")
    ap.add_argument("--spec", nargs="*", default=[], metavar="KEY=VALUE", help="edit every flow spec (with --train)")
    ap.add_argument("--edm", action="store_true", help="measure the EDM tree models (zoo.load_models) instead")
    ap.add_argument("--sampler", choices=("heun", "flow_euler"), default="heun", help="see draw()")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    directory = zoo.CHECKPOINT_DIR
    if args.train:
        edits = {}
        for item in args.spec:
            key, value = item.split("=", 1)
            edits[key] = type(getattr(zoo.MODEL_SPECS["tree_flow"], key))(value)
        train(args.train, edits)
        directory = args.train
    c0, t0 = cpu_seconds(), time.perf_counter()
    result = measure(zoo.load_models() if args.edm else zoo.flow_models(directory), sampler=args.sampler)
    print(f"measured in {cpu_seconds() - c0:.0f} s CPU, {time.perf_counter() - t0:.0f} s wall")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
