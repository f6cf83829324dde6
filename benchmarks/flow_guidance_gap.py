"""How far apart guidance lands when it combines velocities instead of denoised points, on the exact tree mixture.

CFG is affine in the prediction and both maps of toydiff.core.flow are affine for fixed (x, sigma), so CFG on v equals CFG
on D (tests/test_flow.py, to float64 rounding). The methods that normalize or project the prediction are not:
CFG rescale (Lin et al. 2023; phi = 0.7), APG (Sadat et al. 2024; its default: the parallel part dropped, eta = 0)
and CFG-Zero*'s optimized scale (Fan et al. 2025; s* = <p_1, p_0> / |p_0|^2 on velocities, as the paper defines it,
or on denoised points). All at w = 4, class A against the marginal (CFG's null branch), exact D from tree().

Two measurements, each "in D" vs "in v" for the same guidance object:
- one evaluation: RMS |D_v - D_D| over x ~ p(x | A; sigma) (4096 points) at several sigma, beside the size of the
  guidance update RMS |D_D - D_1|, float64;
- whole runs (not CFG's): class A, 2048 samples, EDM Heun 32 steps from sigma_max 5, start seeds 0 / 11 / 22 / 33; mean
  distance between paired samples (same start noise) and outliers / TV (32 x 32 bins) of each.

    python benchmarks/flow_guidance_gap.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from toydiff import datasets, guidance as G, metrics, zoo
from toydiff.core.flow import VelocityDenoiser, denoiser_to_velocity
from toydiff.histogram import histogram_divergence

W, N, N_RUN, SEEDS, SIGMAS = 4.0, 4096, 2048, (0, 11, 22, 33), (0.02, 0.1, 0.5, 2.0, 5.0)


class ScaleOnD(G.CFG):
    """CFG-Zero*'s optimized scale taken on denoised points instead of velocities: D_0' = s* D_0 with
    s* = <D_1, D_0> / |D_0|^2, then D_0' + w (D_1 - D_0'). (CFGZeroStar itself converts to velocities first.)"""

    def combine(self, d1, delta, w, x, sigma):
        d0 = d1 - delta
        scale = G.optimized_scale(d1, d0)
        return scale * d0 + w.reshape(-1, *([1] * (x.ndim - 1))) * (d1 - scale * d0)


def pairs(tree) -> dict[str, tuple]:
    """method -> (denoiser guided "in D", denoiser guided "in v") on the exact mixture."""
    v = denoiser_to_velocity(tree)
    out = {}
    for name, make in (("cfg", lambda: G.CFG(W)), ("rescale 0.7", lambda: G.CFG(W, rescale=0.7)),
                       ("apg", lambda: G.APG(W))):
        out[name] = (G.guided(tree, make()), VelocityDenoiser(G.guided(v, make())))
    # CFGZeroStar is native to v (it maps D to v inside); its D-space twin applies the same scale to D
    out["cfg-zero* scale"] = (G.guided(tree, ScaleOnD(W)), G.guided(tree, G.CFGZeroStar(W, zero_init=0)))
    return out


def one_step(tree, methods: dict) -> dict:
    gen = torch.Generator().manual_seed(5)
    c = torch.zeros(N, dtype=torch.long)
    out = {}
    for name, (on_d, on_v) in methods.items():
        rows = []
        for sigma in SIGMAS:
            x = tree.sample(N, cond=0, sigma=sigma, generator=gen)[0]
            d_d, d_v, d_1 = on_d(x, sigma, c), on_v(x, sigma, c), tree(x, sigma, c)
            rms = lambda a: float(a.square().sum(1).mean().sqrt())                   # noqa: E731
            rows.append(dict(sigma=sigma, gap=rms(d_v - d_d), update=rms(d_d - d_1)))
        out[name] = rows
        print(name, "  ".join(f"sigma {r['sigma']:g}: {r['gap']:.4f} / {r['update']:.4f}" for r in rows), flush=True)
    return out


def whole_runs(tree, methods: dict) -> dict:
    out = {}
    with torch.no_grad():
        for name, (on_d, on_v) in methods.items():
            if name == "cfg":                                   # equal to rounding (one_step shows it): skipped
                continue
            rows = []
            for seed in SEEDS:
                xd = zoo.draw(on_d, N_RUN, 0, seed).float()
                xv = zoo.draw(on_v, N_RUN, 0, seed).float()
                row = dict(paired=float((xd - xv).norm(dim=1).mean()))
                for tag, x in (("d", xd), ("v", xv)):
                    row[f"outliers_{tag}"] = metrics.outlier_fraction(x, tree, 0)
                    row[f"tv_{tag}"] = histogram_divergence(x, tree, 0)["tv"]
                rows.append(row)
            out[name] = {k: [r[k] for r in rows] for k in rows[0]}
            print(name, " ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in out[name].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tree = datasets.tree()
    methods = pairs(tree)
    result = dict(one_step=one_step(tree, methods), whole_runs=whole_runs(tree, methods))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
