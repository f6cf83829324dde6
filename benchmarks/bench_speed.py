"""Issue 19's speed table, old vs new side by side in one run: each row is timed in fresh worker processes of the
baseline commit's toydiff (git archive, default 0bfd0c5 = main before issue 19) and of this checkout, in turn
(A B A B ...), on one torch thread; printed are CPU seconds (user + sys of the timed part) and wall seconds, the
medians over the repeats, and the ratio old / new of the CPU medians.

    python benchmarks/bench_speed.py [--rows ROW ...] [--repeats 3] [--baseline COMMIT]
    rows: class_log_prob score knn forward contract explore train demo (default: all but demo; demo = whole
    `toydiff demo` process with the shipped models, counted with the child's rusage)

The `score` row also prints its arithmetic floor, measured here on the same data and blocks: per (point,
component) element, the two small matmuls that give det S and the quadratic form, one division, one log, one exp
and the [n, K] @ [K, 9] matmul, each as one pass over an in-cache block, with nothing else. The `train` row prints
its matmul floor: the 14 float32 matmuls of one step's forward and backward (5 layers forward, 5 weight gradients,
4 input gradients: the first layer's input needs none; 391 MFLOP at batch 4096), timed alone, times 64 steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("class_log_prob", "score", "knn", "forward", "contract", "explore", "train", "demo")
DEFAULT_ROWS = ROWS[:-1]


# ------------------------------------------------------------------ the work of each row (runs in a worker)
def _setup(row: str):
    """(what to time, repeats inside one timing) for `row`, built with whichever toydiff is on sys.path."""
    import torch
    from toydiff import datasets, metrics
    tree = datasets.tree()
    g = torch.Generator().manual_seed(0)
    if row == "class_log_prob":
        x = tree.sample(4096, cond=0, generator=g)[0]
        return (lambda: metrics.class_log_prob(x, tree)), 5
    if row == "score":
        x = torch.randn(4096, 2, generator=g, dtype=torch.float64) * 0.6
        sigma = torch.exp(torch.randn(4096, generator=g, dtype=torch.float64) * 1.2 - 1.2)   # EDM log-normal
        return (lambda: tree.score(x, sigma)), 5
    if row == "knn":
        real = tree.sample(4096, cond=0, generator=g)[0]
        fake = tree.sample(4096, cond=0, generator=g)[0] + 0.01 * torch.randn(4096, 2, generator=g)
        return (lambda: metrics.precision_recall(real.clone(), fake)), 10      # a new object: nothing cached
    if row == "forward":
        from toydiff import zoo
        main = zoo.pretrained(progress=False).main
        x, c = torch.randn(4000, 2, generator=g), torch.zeros(4000, dtype=torch.long)

        def forward():
            with torch.no_grad():
                main(x, 0.3, c)
        return forward, 50
    if row == "contract":        # README's "contracts in one screen", as written
        from toydiff import guidance, samplers

        def contract():
            data = datasets.tree()
            cfg = guidance.guided(data, guidance.CFG(4.0))
            samplers.sample(cfg, (2000, 2), cond=0, method="heun", steps=32, sigma_max=80.0,
                            generator=torch.Generator().manual_seed(0))
        return contract, 1
    if row == "explore":         # one redraw after a slider move: update and the page's PNG (plot.show_figure)
        from types import SimpleNamespace
        from toydiff import explore, plot
        ex, output = explore.Explorer(), SimpleNamespace(outputs=())          # an Output widget's stand-in
        plot.show_figure(output, ex.update("tree", "autoguidance", 3.0)[0])   # the page's first draw
        weights = iter([2.0, 2.5, 3.5, 4.0, 2.0, 2.5, 3.5, 4.0] * 10)

        def redraw():
            plot.show_figure(output, ex.update("tree", "autoguidance", next(weights))[0])
        return redraw, 4
    if row == "train":           # tree_main's recipe (4 x 64, batch 4096), 64 steps
        from dataclasses import replace
        from toydiff import zoo
        spec = replace(zoo.MODEL_SPECS["tree_main"], steps=64)
        return (lambda: zoo.train_model(spec, progress=False)), 1
    raise ValueError(row)


def _score_floor() -> float:
    """CPU seconds of the score row's unavoidable arithmetic (see the module docstring), on the same blocks."""
    import torch
    from toydiff import datasets
    tree = datasets.tree()
    g = torch.Generator().manual_seed(0)
    n, k = 4096, len(tree)
    step = max(1, (1 << 17) // k)
    feats, powers = torch.randn(n, 10, generator=g, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64)
    w10, w3, z = torch.randn(10, k, dtype=torch.float64), torch.rand(3, k, dtype=torch.float64) + 1, \
        torch.randn(k, 9, dtype=torch.float64)
    a, b = torch.empty(step, k, dtype=torch.float64), torch.empty(step, k, dtype=torch.float64)

    def floor():
        for i in range(0, n, step):
            rows = slice(i, min(i + step, n))
            m = rows.stop - rows.start
            q, det = a[:m], b[:m]
            torch.matmul(feats[rows], w10, out=q)
            torch.matmul(powers[rows], w3, out=det)
            q.div_(det)
            det.log_()
            q.exp_()
            q @ z
    floor()
    t = time.process_time()
    for _ in range(5):
        floor()
    return (time.process_time() - t) / 5


def _train_floor() -> float:
    """CPU seconds of the train row's matmuls alone (see the module docstring): 64 steps of tree_main's 4 x 64 MLP at
    batch 4096 (input 2 + 16 + 2 x 32 = 82 features)."""
    import torch
    g = torch.Generator().manual_seed(0)
    n, layers = 4096, [(82, 64), (64, 64), (64, 64), (64, 64), (64, 2)]
    acts = [torch.randn(n, i, generator=g) for i, _ in layers]
    grads = [torch.randn(n, o, generator=g) for _, o in layers]
    weights = [torch.randn(o, i, generator=g) for i, o in layers]

    def step():
        for j, (a, gr, w) in enumerate(zip(acts, grads, weights)):
            a @ w.T                                              # forward
            gr.T @ a                                             # weight gradient
            if j:
                gr @ w                                           # input gradient
    step()
    t = time.process_time()
    for _ in range(64):
        step()
    return time.process_time() - t


def worker(row: str) -> None:
    import torch
    torch.set_num_threads(1)
    fn, inner = _setup(row)
    fn()                                                                         # warm-up (caches, first draw)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(inner):
        fn()
    out = dict(cpu=(time.process_time() - c0) / inner, wall=(time.perf_counter() - w0) / inner)
    if row in ("score", "train"):
        out["floor"] = _score_floor() if row == "score" else _train_floor()
    print(json.dumps(out))


# ------------------------------------------------------------------ the driver
def _baseline(commit: str, into: Path) -> Path:
    """The baseline's toydiff package (git archive of `commit`), extracted into `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "toydiff"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _run(root: Path, row: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MPLBACKEND": "agg"}
    if row == "demo":
        with tempfile.TemporaryDirectory() as out:
            before, w0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run([sys.executable, "-c", "from toydiff import cli; cli.main()", "demo", "--out", out,
                            "--no-progress"], env=env,
                           check=True, capture_output=True, cwd=out)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return dict(cpu=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                    wall=time.perf_counter() - w0)
    done = subprocess.run([sys.executable, __file__, "--worker", row], env=env, check=True, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(DEFAULT_ROWS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default="0bfd0c5")
    parser.add_argument("--worker", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    with tempfile.TemporaryDirectory() as tmp:
        old = _baseline(args.baseline, Path(tmp))
        print(f"baseline {args.baseline} vs this checkout; one torch thread; medians of {args.repeats} runs; "
              f"load average {os.getloadavg()[0]:.1f} at the start")
        print(f"{'row':15s} {'old CPU s':>10s} {'new CPU s':>10s} {'old wall':>9s} {'new wall':>9s} {'CPU ratio':>9s}")
        for row in args.rows:
            runs = {"old": [], "new": []}
            for _ in range(args.repeats if row != "demo" else 1):
                runs["old"].append(_run(old, row))
                runs["new"].append(_run(ROOT, row))
            med = {k: {m: statistics.median(r[m] for r in v) for m in ("cpu", "wall")} for k, v in runs.items()}
            print(f"{row:15s} {med['old']['cpu']:10.4f} {med['new']['cpu']:10.4f} {med['old']['wall']:9.4f} "
                  f"{med['new']['wall']:9.4f} {med['old']['cpu'] / med['new']['cpu']:8.1f}x")
            if row in ("score", "train"):
                floor = statistics.median(r["floor"] for r in runs["new"])
                print(f"{'  ' + row + ' floor':15s} {'':10s} {floor:10.4f}   new / floor = "
                      f"{med['new']['cpu'] / floor:.1f}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
