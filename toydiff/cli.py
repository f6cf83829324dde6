"""The `toydiff` command line: demo, train, sample, figure. Thin: the logic lives in toydiff.figures.

    toydiff demo [--out DIR] [--retrain] [--fast] [--seed S] [--no-progress]
    toydiff train [--out DIR] [--seed S]                 # retrain the tree main/guide checkpoints
    toydiff sample --method cfg --w 4 [--n N] [--class C] [--out FILE.pt|.png]
    toydiff figure {tree,cfg,sweep,degradation} [--out DIR] [--fast]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

FIGURES = ("tree", "cfg", "sweep", "degradation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toydiff", description="Diffusion guidance on 2D mixtures with exact ground truth.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--seed", type=int, default=0, help="seed for training, sampling and metrics (default 0)")
        q.add_argument("--retrain", action="store_true", help="train the models from scratch instead of loading "
                                                              "the shipped checkpoints")
        q.add_argument("--no-progress", action="store_true", help="hide progress bars")

    d = sub.add_parser("demo", help="train/load, sample, write all reproductions, metrics.json and a table")
    d.add_argument("--out", type=Path, default=Path("toydiff-demo"), help="output directory (default ./toydiff-demo)")
    d.add_argument("--fast", action="store_true", help="reduced sample counts and grids (seconds; for tests)")
    common(d)
    t = sub.add_parser("train", help="train the tree main (4x64) and guide (4x32, 1/8 steps) models")
    t.add_argument("--out", type=Path, required=True, help="directory for tree_main.pt and tree_guide.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sample", help="sample class C of tree() with a guidance method")
    s.add_argument("--method", choices=("none", "cfg", "score_scaling", "autoguidance"), default="autoguidance")
    s.add_argument("--w", type=float, default=None, help="guidance weight, 1 = none (default: the method's)")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--class", dest="cls", type=int, default=0, choices=(0, 1))
    s.add_argument("--out", type=Path, default=Path("samples.pt"), help=".pt (tensor [n, 2]) or .png")
    common(s)
    f = sub.add_parser("figure", help="write one reproduction as a PNG")
    f.add_argument("name", choices=FIGURES)
    f.add_argument("--out", type=Path, default=Path("."), help="output directory")
    f.add_argument("--fast", action="store_true")
    common(f)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import figures  # deferred: `toydiff --help` stays instant
    from .training import torch_threads

    with torch_threads(1):
        return _run(args, figures)


def _run(args: argparse.Namespace, figures) -> int:
    progress = not args.no_progress
    if args.command == "demo":
        figures.demo(args.out, retrain=args.retrain, fast=args.fast, seed=args.seed, progress=progress)
        return 0
    if args.command == "train":
        t0 = time.perf_counter()
        paths = figures.save_models(figures.train_models(args.seed, progress), args.out, args.seed)
        print(f"trained in {time.perf_counter() - t0:.1f} s: " + ", ".join(map(str, paths)))
        return 0
    if args.command == "sample" and args.n < 1:
        raise SystemExit(f"toydiff sample: --n must be >= 1, got {args.n}")
    models = figures.pretrained(args.retrain, args.seed, progress)
    if args.command == "sample":
        import torch

        from . import datasets, metrics, plot
        x = figures.draw(figures.method_denoiser(models, args.method, args.w), args.n, args.cls, args.seed)
        m = metrics.evaluate(x, datasets.tree(), args.cls, seed=args.seed)
        print(" ".join(f"{k}={v:.4f}" for k, v in m.items()))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".png":
            plot.samples_panel(x, title=plot.title_with_metrics(args.method, m)).figure.savefig(args.out)
        else:
            torch.save(x, args.out)
        print(f"wrote {args.out}")
        return 0
    import matplotlib.pyplot as plt
    fast = args.fast
    n = 1500 if fast else 4000
    fig, _ = {"tree": lambda: figures.tree_figure(models, n=n, seed=args.seed, density_res=24 if fast else 64),
              "cfg": lambda: figures.cfg_figure(n=n, seed=args.seed),
              "sweep": lambda: figures.sweep(models, n=n, seed=args.seed),
              "degradation": lambda: figures.degradation_study(models, n=n, seed=args.seed)}[args.name]()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / f"{args.name}.png")
    plt.close(fig)
    print(f"wrote {args.out / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
