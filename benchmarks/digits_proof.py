"""The CPU proof on real images: classifier-free guidance makes class-conditional digits more recognizable.

1. Train a `tiny` imagenet_ext UNet on scikit-learn's real 8x8 digits resized to 16x16 with condition dropout
   p_uncond = 0.1 (Ho & Salimans 2022) for a few minutes, by imagenet_ext.digits.RECIPE (the shipped `digits` model's
   recipe; skipped if the run directory has the checkpoint).
2. Sample N images per class at w in {1, 2, 4} (w = 1 is no guidance; Ho & Salimans' w = 0, 1, 3) with the
   same starting noise for every w, through toydiff.guidance.CFG and toydiff.samplers (EDM Heun).
3. A classifier trained on the real digits (logistic regression on 16x16 pixels, held-out accuracy reported)
   rates the samples: the fraction classified as the class they were asked for must rise with w.
4. Also reported: the Frechet distance in pixel space (16x16 grayscale, 256-d) to the real digits, and the same
   for autoguidance (Karras et al. 2024) with a weaker guide: a `tiny` UNet of 16 channels trained 1/8 as long.

    python benchmarks/digits_proof.py --run /tmp/toydiff_digits_proof
writes benchmarks/digits_proof.png and benchmarks/digits_proof.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from imagenet_ext import train as train_mod
from imagenet_ext.checkpoint import load_denoiser
from imagenet_ext.data import load_digits
from imagenet_ext.digits import class_accuracy, digits_classifier, recipe
from imagenet_ext.images import to_uint8
from imagenet_ext.sample import generate, sweep_figure

HERE = Path(__file__).resolve().parent


def pixel_fd(u8: torch.Tensor, ref_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance of uint8 [N, C, 16, 16] images to the real digits in 256-d grayscale pixel space."""
    from imagenet_ext.fid import feature_stats, frechet_distance

    mu, sig = feature_stats(u8.float().mean(1).flatten(1).double().numpy() / 255)
    return frechet_distance(mu, sig, *ref_stats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="/tmp/toydiff_digits_proof")
    p.add_argument("--train-steps", type=int, default=800)
    p.add_argument("--n-per-class", type=int, default=40)
    p.add_argument("--ws", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--steps", type=int, default=16, help="Heun steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--auto-ws", type=float, nargs="*", default=[2.0], help="autoguidance weights (empty: skip)")
    p.add_argument("--guide-steps", type=int, default=100, help="guide training steps (1/8 of the main model's)")
    p.add_argument("--out", default=str(HERE / "digits_proof"))
    a = p.parse_args()
    run = Path(a.run)
    ckpt = run / f"ckpt-{a.train_steps:07d}.pt"
    t_train = None
    if not ckpt.is_file():
        t0 = time.perf_counter()
        train_mod.train(recipe(run, steps=a.train_steps, seed=a.seed))
        t_train = time.perf_counter() - t0
    log = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    model = load_denoiser(ckpt)
    clf, real_acc = digits_classifier(a.seed)
    labels = torch.arange(10).repeat_interleave(a.n_per_class)
    t0 = time.perf_counter()
    x = generate(model, labels, a.ws, guidance="cfg", method="heun", steps=a.steps, seed=a.seed, batch=200)
    t_sample = time.perf_counter() - t0
    u8 = to_uint8(x.flatten(0, 1)).reshape(*x.shape[:2], *x.shape[2:])           # [W, N, 3, 16, 16]
    acc = {w: class_accuracy(clf, u8[i], labels) for i, w in enumerate(a.ws)}
    per_class = {w: [class_accuracy(clf, u8[i][labels == c], labels[labels == c]) for c in range(10)]
                 for i, w in enumerate(a.ws)}
    from imagenet_ext.fid import feature_stats
    real = load_digits(16, channels=1).images
    ref_stats = feature_stats(real.float().flatten(1).double().numpy() / 255)
    fd = {w: pixel_fd(u8[i], ref_stats) for i, w in enumerate(a.ws)}
    auto: dict[float, dict[str, float]] = {}
    if a.auto_ws:
        grun = run / "guide"
        gck = grun / f"ckpt-{a.guide_steps:07d}.pt"
        if not gck.is_file():
            train_mod.train(recipe(grun, steps=a.guide_steps, seed=a.seed, channels=16))
        guide = load_denoiser(gck)
        xa = generate(model, labels, a.auto_ws, guidance="autoguidance", guide=guide, method="heun", steps=a.steps,
                      seed=a.seed, batch=200)
        ua = to_uint8(xa.flatten(0, 1)).reshape(*xa.shape[:2], *xa.shape[2:])
        for i, w in enumerate(a.auto_ws):
            auto[w] = {"accuracy": class_accuracy(clf, ua[i], labels), "pixel_fd": pixel_fd(ua[i], ref_stats)}
    res = {"classifier_heldout_accuracy_on_real": real_acc, "accuracy": acc, "per_class_accuracy": per_class,
           "pixel_fd_to_real": fd, "autoguidance": auto,
           "real_pixel_fd_baseline": pixel_fd(real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:400]], ref_stats),
           "n_per_class": a.n_per_class, "sampler": f"heun {a.steps} steps (CFG, both branches in one batch)",
           "train": {"steps": a.train_steps, "batch": 32, "final_loss": log[-1]["loss"],
                     "wall_s_log": log[-1]["time"] - log[0]["time"], "wall_s_this_run": t_train},
           "sample_wall_s": t_sample, "images_sampled": int(x.shape[0] * x.shape[1]),
           "rises_with_w": all(acc[a.ws[i]] < acc[a.ws[i + 1]] for i in range(len(a.ws) - 1))}
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "per_class_accuracy"}, indent=1))

    sweep_figure(u8, labels, a.ws, accuracy=[acc[w] for w in a.ws], per_class=6, path=a.out + ".png",
                 title=f"tiny UNet on 16x16 digits, CFG, Heun {a.steps} steps")
    print(f"wrote {a.out}.png and {a.out}.json")


if __name__ == "__main__":
    main()
