"""The `toydiff` command line: demo, train, sample, figure, explore, bench. Thin: the logic lives in toydiff.zoo / figures / demo.

    toydiff demo [--out DIR] [--retrain | --models DIR] [--fast] [--seed S] [--no-progress]
    toydiff train --out DIR [--seed S] [--resume]        # retrain the four tree checkpoints into DIR
    toydiff sample --guidance cfg --w 4 [--sampler heun] [--n N] [--class C] [--models DIR] [--out FILE.pt|.png]
    toydiff figure {tree,cfg,sweep,degradation} [--out DIR] [--fast] [--models DIR]
    toydiff explore [--port P] [--open]                  # the classroom page (Voila) on 127.0.0.1
    toydiff bench [--fast] [--out DIR] [--methods NAME ...] [--datasets NAME ...] [--retrain]

`--models DIR` loads what `toydiff train --out DIR` wrote (tree_main.pt, tree_guide.pt, tree_uncond.pt,
tree_dropout.pt) instead of the shipped models.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..infra.allocator import keep_freed_memory
from ..infra.clitools import Parser, UserError, check_output, nonnegative_float, positive_int, seed, user_errors

__all__ = ["main", "build_parser"]

FIGURES = ("tree", "cfg", "sweep", "degradation")   # = toydiff.figures.FIGURES (kept literal: --help stays instant)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="toydiff", description="Diffusion guidance on 2D mixtures with exact ground truth.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(q: argparse.ArgumentParser, models_dir: bool = True) -> None:
        q.add_argument("--seed", type=seed, default=0,
                       help="seed for training, sampling and metrics, an int in [0, 2**63 - 1] (default: 0)")
        models = q.add_mutually_exclusive_group()
        models.add_argument("--retrain", action="store_true", help="train the models from scratch, minutes of CPU "
                                                                   "(default: off, the shipped checkpoints are loaded)")
        if models_dir:
            models.add_argument("--models", type=Path, default=None, metavar="DIR",
                                help="load the tree_<name>.pt checkpoints from DIR, as `toydiff train --out DIR` writes "
                                     "them (default: the shipped checkpoints)")
        q.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")

    d = sub.add_parser("demo", help="load/train, sample, write all reproductions, metrics.json and a table")
    d.add_argument("--out", type=Path, default=Path("toydiff-demo"), help="output directory (default: ./toydiff-demo)")
    d.add_argument("--fast", action="store_true", help="reduced sample counts and grids: seconds, for tests (default: off)")
    common(d)
    t = sub.add_parser("train", help="train the zoo's tree models: main 4x64 and guide 4x32 (class A), unconditional "
                                      "4x32 (CFG's D_0 in the paper's setup), condition-dropout 4x64")
    t.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory for the checkpoints tree_<name>.pt (load them with --models DIR)")
    t.add_argument("--seed", type=seed, default=0,
                   help="training seed, an int in [0, 2**63 - 1] (default: 0; 0 rebuilds the shipped models)")
    t.add_argument("--resume", action="store_true",
                   help="continue the checkpoints an interrupted run left in DIR and keep the finished ones (default: "
                        "off, and a DIR that already holds tree_<name>.pt is refused)")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    s = sub.add_parser("sample", help="sample class A of tree() with a guidance recipe")
    s.add_argument("--guidance", default="autoguidance",
                   help="a recipe of the toydiff.guidance registry that needs at most a guide model "
                        "(default: autoguidance)")
    s.add_argument("--w", type=nonnegative_float, default=None,
                   help="guidance weight, 1 = none; Ho & Salimans' weight is w - 1 (default: the recipe's)")
    s.add_argument("--sampler", default="heun", help="a toydiff.samplers method (default: heun, 32 steps)")
    s.add_argument("--n", type=positive_int, default=2000, help="number of samples, metrics need >= 4 (default: 2000)")
    s.add_argument("--class", dest="cls", type=int, default=0, choices=(0,),
                   help="0 = class A, the class the zoo's main model knows, as in the paper's toy (default: 0)")
    s.add_argument("--out", type=Path, default=Path("samples.pt"),
                   help="a .pt file (float tensor [n, 2]) or a .png plot at 150 dpi, written as named (default: samples.pt)")
    common(s)
    f = sub.add_parser("figure", help="write one reproduction as a 150-dpi PNG")
    f.add_argument("name", choices=FIGURES, help="which reproduction")
    f.add_argument("--out", type=Path, default=Path("."), help="output directory for NAME.png (default: .)")
    f.add_argument("--fast", action="store_true", help="reduced sample counts and grids (default: off)")
    common(f)
    e = sub.add_parser("explore", help="the classroom explorer: a local page with guidance controls (Voila)")
    e.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    e.add_argument("--open", action="store_true", help="also open the page in the default web browser (default: off)")
    b = sub.add_parser("bench", help="every registered guidance method, swept over w, scored against the exact "
                                     "ground truth: leaderboard.md, bench.json, pareto_<dataset>.png")
    b.add_argument("--out", type=Path, default=Path("toydiff-bench"), help="output directory (default: ./toydiff-bench)")
    b.add_argument("--fast", action="store_true", help="600 samples, 2 weights, 12x12 bins: a smoke run (default: off)")
    b.add_argument("--methods", nargs="+", metavar="NAME", help="guidance registry names and 'exact' (default: all)")
    b.add_argument("--datasets", nargs="+", metavar="NAME", help="bench datasets (default: all)")
    common(b, models_dir=False)                   # the bench has its own models (toydiff/checkpoints/bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()                 # warm pages for the repeated large tensors (toydiff.infra.allocator)
    if args.command == "explore":
        from . import explore
        try:
            return explore.serve(args.port, open_browser=args.open)
        except (FileNotFoundError, ValueError) as err:
            print(f"toydiff explore: {err}", file=sys.stderr)
            return 2
    from ..toy import zoo  # deferred: `toydiff --help` stays instant
    if getattr(args, "models", None) is not None:                # every model zoo.load_models reads from there
        missing = [f"{name}.pt" for name in zoo.TREE_MODELS if not (args.models / f"{name}.pt").is_file()]
        if missing:
            parser.error(f"argument --models: {args.models} lacks {', '.join(missing)} "
                         f"(write them with `toydiff train --out {args.models}`)")
    from ..core.guidance import names
    from ..core.samplers import METHODS
    from ..toy.training import torch_threads

    if args.command == "sample":   # the registries' names, checked here so that --help needs no torch import
        for flag, value, allowed in (("--guidance", args.guidance, names(("guide",))),
                                     ("--sampler", args.sampler, sorted(METHODS))):
            if value not in allowed:
                parser.error(f"argument {flag}: invalid choice {value!r} (choose from {', '.join(allowed)})")

    if args.command == "bench":
        from ..bench import check_names
        try:
            check_names(args.methods, args.datasets)
        except ValueError as e:
            parser.error(str(e))

    try:
        with user_errors(parser.prog), torch_threads(1):
            if args.command == "sample":                  # outputs checked before any work starts
                check_output(args.out, "--out", suffixes=(".pt", ".png"))
            else:
                check_output(args.out, "--out", directory=True)
            return _run(args, zoo)
    except KeyboardInterrupt as e:                  # Ctrl-C, or SIGTERM to the training workers (toydiff.workers)
        report = getattr(e, "report", "")
        if report and args.command in ("train", "demo"):
            report += (f" (continue with `toydiff train --out {args.out} --resume`)" if args.command == "train" else
                       " (the same command continues them)")
        sys.stderr.write(f"{parser.prog}: interrupted{': ' + report if report else ''}\n")
        raise SystemExit(128 + getattr(e, "signum", 2)) from None


def _run(args: argparse.Namespace, zoo) -> int:
    from ..infra.atomic import save_atomic
    progress = not args.no_progress
    if args.command == "demo":
        from .demo import demo
        demo(args.out, retrain=args.retrain, fast=args.fast, seed=args.seed, progress=progress, models_dir=args.models)
        return 0
    if args.command == "train":
        from ..infra.runs import RunLock
        t0 = time.perf_counter()
        with RunLock(args.out, directory=True, name="--out"):        # one training per --out at a time
            there = [f"{name}.pt" for name in zoo.TREE_MODELS if (args.out / f"{name}.pt").exists()]
            if there and not args.resume:
                raise UserError(f"--out: {args.out} already holds {', '.join(there)}; --resume continues or keeps "
                                f"them, or write to another directory")
            zoo.train_models(args.seed, progress, directory=args.out, resume=args.resume)
        paths = [args.out / f"{name}.pt" for name in zoo.TREE_MODELS]
        print(f"trained in {time.perf_counter() - t0:.1f} s: " + ", ".join(map(str, paths)))
        return 0
    if args.command == "bench":
        import dataclasses

        from .. import bench
        from ..bench import report as bench_report
        t0 = time.perf_counter()
        config = dataclasses.replace(bench.FAST if args.fast else bench.FULL, seed=args.seed)
        result = bench.run(config, args.methods, args.datasets, retrain=args.retrain, progress=progress)
        paths = bench_report.write_outputs(result, args.out)
        print(f"bench done in {time.perf_counter() - t0:.1f} s: " + ", ".join(map(str, paths)))
        return 0
    models = zoo.pretrained(args.retrain, args.seed, progress, directory=args.models)
    if args.command == "sample":
        from ..toy import datasets, metrics
        from . import plot
        x = zoo.draw(zoo.guided_denoiser(models, args.guidance, args.w), args.n, args.cls, args.seed,
                     method=args.sampler)
        m = metrics.evaluate(x, datasets.tree(), args.cls, seed=args.seed) if args.n >= 4 else {}
        print(" ".join(f"{k}={v:.4f}" for k, v in m.items()) or "metrics skipped: they need >= 4 samples")
        if args.out.suffix.lower() == ".png":
            plot.save(plot.samples_panel(x, title=plot.title_with_metrics(args.guidance, m) if m else args.guidance
                                         ).figure, args.out)
        else:
            save_atomic(x, args.out)
        print(f"wrote {args.out}")
        return 0
    import matplotlib.pyplot as plt

    from .figures import reproduce
    from .plot import save
    fig, _ = reproduce(args.name, models, fast=args.fast, seed=args.seed)
    save(fig, args.out / f"{args.name}.png")
    plt.close(fig)
    print(f"wrote {args.out / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
