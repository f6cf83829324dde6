"""`python -m imagenet_ext.sample`: guided class-conditional samples from a trained checkpoint.

Guidance comes from `toydiff.guidance` unchanged and the ODE/SDE from `toydiff.samplers.sample`:
    D = guided(ema_unet, CFG(w))                      # Ho & Salimans 2022; both branches in ONE batched forward
    D = guided(ema_unet, AutoGuidance(guide_unet, w)) # Karras et al. 2024; guide = a weaker checkpoint
    x = toydiff.samplers.sample(D, noise, labels, method=..., steps=...)
Weight convention: w = 1 is no guidance, D_w = D_0 + w (D_1 - D_0); Ho & Salimans' w is this w - 1.

Outputs: a labelled `.png` grid (150 dpi) with one row per class and, per w of the sweep, a block of columns (the
same noise for every w, like Fig. 1 of the CFG paper; for a digits model each block is titled with the class
accuracy of its samples), and/or an `.npz` with `images` uint8 [N, H, W, C] (NHWC, as in
ADM's reference batches), `labels` int64 [N] and `w` float [N].
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from toydiff.core import guidance as recipes
from toydiff.core.guidance import guided, to_ho_salimans
from toydiff.core.samplers import METHODS, sample
from toydiff.core.training import load_checkpoint, torch_threads
from toydiff.infra.atomic import atomic_path
from toydiff.infra.validation import check_device
from toydiff.infra.clitools import (Parser, UserError, check_output, device, nonnegative_float, positive_float,
                                    positive_int, probability, seed, user_errors)

from .checkpoint import load_denoiser, resolve
from .images import labelled_grid, to_uint8

PROG = "python -m imagenet_ext.sample"
__all__ = ["generate", "sweep_figure", "main"]


@torch.no_grad()
def generate(model: Any, labels: Tensor, ws: Sequence[float], *, guidance: str = "cfg", guide: Any = None,
             interval: tuple[float, float] | None = None, rescale: float = 0.0, method: str = "heun", steps: int = 32, sigma_min: float = 0.002, sigma_max: float = 80.0,
             rho: float = 7.0, seed: int = 0, batch: int = 256, device: torch.device | str = "cpu",
             amp: bool = False, progress: bool = True) -> Tensor:
    """Samples [len(ws), N, C, H, W] in [-1, 1] for labels [N] at every weight in `ws`.

    Chunk k of the batch starts from noise seeded by (seed, k) and so does every w: the sweep shows the same
    starting noise under increasing guidance.
    """
    cfg = model.cfg
    labels = labels.to(torch.long)
    n = labels.shape[0]
    shape = (cfg.in_channels, cfg.resolution, cfg.resolution)
    device = check_device(device)
    out = torch.empty(len(ws), n, *shape)
    chunks = [(i, min(i + batch, n)) for i in range(0, n, batch)]
    bar = tqdm(total=len(ws) * len(chunks), desc="sample", disable=not progress, dynamic_ncols=True)
    for wi, w in enumerate(ws):
        d = guided(model, recipes.make(guidance, float(w), guide=guide, interval=interval, rescale=rescale))
        for k, (lo, hi) in enumerate(chunks):
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
            noise = torch.randn((hi - lo, *shape), generator=g, device=device) * sigma_max
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                x = sample(d, noise, labels[lo:hi].to(device), method=method, steps=steps, sigma_min=sigma_min,
                           sigma_max=sigma_max, rho=rho, generator=g)
            out[wi, lo:hi] = x.float().cpu()
            bar.update(1)
    bar.close()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="training checkpoint (ckpt-*.pt), or 'digits' for the shipped digits model")
    p.add_argument("--guidance", choices=recipes.names(("guide",)), default="cfg",
                   help="a recipe of the toydiff.guidance registry")
    p.add_argument("--guide-ckpt", default=None, help="the weaker model for --guidance autoguidance")
    p.add_argument("--w", type=nonnegative_float, nargs="+", default=[1.0],
                   help="guidance weight(s), 1 = none (Ho & Salimans' w + 1); several give a sweep")
    p.add_argument("--interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guide only where SIGMA_LO < sigma <= SIGMA_HI (Kynkaanniemi et al. 2024)")
    p.add_argument("--rescale", type=probability, default=0.0, help="CFG rescale factor phi in [0, 1] (Lin et al. 2023)")
    p.add_argument("--n", type=positive_int, default=20, help="images per w")
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="labels to cycle through (default: all classes for .npz, the first 10 for a grid)")
    p.add_argument("--sampler", choices=sorted(METHODS), default="heun", help="a toydiff.samplers method")
    p.add_argument("--steps", type=positive_int, default=32)
    p.add_argument("--sigma-min", type=positive_float, default=0.002)
    p.add_argument("--sigma-max", type=positive_float, default=80.0)
    p.add_argument("--rho", type=positive_float, default=7.0)
    p.add_argument("--seed", type=seed, default=0, help="an int in [0, 2**63 - 1]")
    p.add_argument("--batch", type=positive_int, default=256, help="images per sampler call (CFG doubles it inside)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", type=device, default=None)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="fp32", help="autocast dtype on GPU")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (small models gain little from more; on a shared CPU they cost ~6x)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", nargs="+", required=True, help="grid .png and/or images .npz (written as named)")
    a = p.parse_args(argv)
    if "guide" in recipes.RECIPES[a.guidance].needs and a.guide_ckpt is None:
        p.error(f"--guidance {a.guidance} needs --guide-ckpt")
    try:
        a.w = [recipes.weight(a.guidance, w) for w in a.w]
    except ValueError as e:                                # "none" takes no weight but 1 (the registry says so)
        p.error(f"argument --w: {e}")
    try:                                                   # every output checked before any work starts
        for o in a.out:
            check_output(o, "--out", suffixes=(".png", ".npz"))
    except UserError as e:
        p.error(str(e))
    return a


def sweep_figure(images: Tensor, labels: Tensor, ws: Sequence[float], classes: Sequence[int] | None = None,
                 accuracy: Sequence[float] | None = None, *, per_class: int | None = None, title: str = "",
                 path: str | Path | None = None):
    """The labelled grid of a guidance sweep, images uint8 [len(ws), N, C, H, W] for labels [N]: one block per w
    (titled with w, Ho & Salimans' w and the class accuracy when given), one row per class, and in each row the
    first `per_class` samples of that class (all by default); the same noise in every block. Returns the figure."""
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    m = min(int((labels == c).sum()) for c in classes)
    if m == 0:
        raise ValueError(f"a grid needs at least one image per class: {labels.numel()} labels for {len(classes)} classes")
    m = m if per_class is None else min(m, per_class)
    blocks = [torch.stack([images[wi, labels == c][:m] for c in classes]) for wi in range(len(ws))]
    titles = [f"$w = {w:g}$\n" + ("no guidance" if w == 1 else f"Ho & Salimans: {to_ho_salimans(w):g}")
              + ("" if accuracy is None else f"\nclass acc. {accuracy[wi]:.2f}") for wi, w in enumerate(ws)]
    return labelled_grid(blocks, [str(c) for c in classes], titles, title=f"{title}; rows: class" if title else "",
                         path=path)


def _rate_digits(u8: Tensor, labels: Tensor, ws: Sequence[float]) -> list[float] | None:
    """Class accuracy of 16x16 digit samples per w (imagenet_ext.digits' rater), or None without scikit-learn."""
    try:
        from .digits import class_accuracy, digits_classifier
        clf, _ = digits_classifier()
    except ImportError:
        return None
    return [class_accuracy(clf, u8[i], labels) for i in range(len(ws))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    with user_errors(PROG):
        return _main(a)


def _main(a: argparse.Namespace) -> dict[str, Any]:
    device = a.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ck = load_checkpoint(resolve(a.ckpt))
    model = load_denoiser(ck, ema=not a.raw, name=a.ckpt).to(device)               # optimizer state stays on the CPU
    guide = load_denoiser(a.guide_ckpt).to(device) if a.guide_ckpt else None
    if guide is not None and (guide.cfg.resolution, guide.cfg.in_channels, guide.cfg.num_classes) != \
            (model.cfg.resolution, model.cfg.in_channels, model.cfg.num_classes):
        raise ValueError(f"--guide-ckpt {a.guide_ckpt}: the guide models other data (resolution, channels, classes "
                         f"{guide.cfg.resolution}, {guide.cfg.in_channels}, {guide.cfg.num_classes}) than --ckpt "
                         f"{a.ckpt} ({model.cfg.resolution}, {model.cfg.in_channels}, {model.cfg.num_classes})")
    k = model.cfg.num_classes
    grid_out = any(o.lower().endswith(".png") for o in a.out)
    classes = a.classes if a.classes is not None else list(range(min(k, 10) if grid_out else k))
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise ValueError(f"--classes must lie in [0, {k - 1}], got {bad}")
    labels = torch.tensor([classes[i % len(classes)] for i in range(a.n)], dtype=torch.long)
    ws = a.w
    with torch_threads(a.threads):
        x = generate(model, labels, ws, guidance=a.guidance, guide=guide,
                     interval=None if a.interval is None else tuple(a.interval), rescale=a.rescale,
                     method=a.sampler, steps=a.steps, sigma_min=a.sigma_min, sigma_max=a.sigma_max, rho=a.rho,
                     seed=a.seed, batch=a.batch, device=device, amp=device.type == "cuda" and a.precision == "bf16",
                     progress=not a.no_progress)
    u8 = to_uint8(x.flatten(0, 1)).reshape(*x.shape[:2], *x.shape[2:])          # [W, N, C, H, W]
    digits = (ck.get("data") or {}).get("name") == "digits" and model.cfg.resolution == 16
    acc = _rate_digits(u8, labels, ws) if digits else None
    if acc is not None:
        print("[sample] class accuracy (logistic regression on real digits): "
              + ", ".join(f"w={w:g}: {v:.2f}" for w, v in zip(ws, acc)))
    for o in a.out:
        if o.lower().endswith(".npz"):
            with atomic_path(o) as tmp, open(tmp, "wb") as f:     # a file object: np.savez adds no suffix
                np.savez(f, images=u8.flatten(0, 1).permute(0, 2, 3, 1).numpy(),
                         labels=labels.repeat(len(ws)).numpy(), w=np.repeat(np.asarray(ws, dtype=np.float64), a.n))
        else:
            import matplotlib.pyplot as plt       # only for a grid: generate() and .npz output need no pyplot

            head = "no guidance" if a.guidance == "none" else a.guidance
            plt.close(sweep_figure(u8, labels, ws, classes, acc, title=f"{head}, {a.sampler} {a.steps} steps", path=o))
        print(f"[sample] wrote {o}: {a.n} images x w in {ws} (Ho & Salimans w = {[to_ho_salimans(w) for w in ws]}), "
              f"guidance {a.guidance}, {a.sampler} {a.steps} steps")
    return {"images": u8, "labels": labels, "w": ws, "accuracy": acc}


if __name__ == "__main__":
    main()
