"""Time the metrics on 20k generated vs 20k true points of tree() (issue 3: "seconds on the CPU").

    python benchmarks/bench_metrics.py
"""
import time

import torch

from toydiff import datasets, metrics


def main() -> None:
    torch.set_num_threads(1)  # as in `toydiff demo`: on the shared 2-core machine two threads contend badly
    tree = datasets.tree()
    real = tree.sample(20000, cond=0, generator=torch.Generator().manual_seed(0))[0]
    fake = tree.sample(20000, cond=0, generator=torch.Generator().manual_seed(1))[0] + 0.01
    print(f"torch threads: {torch.get_num_threads()}")
    for name, fn in [("precision_recall (k=3)", lambda: metrics.precision_recall(real, fake)),
                     ("energy_distance", lambda: metrics.energy_distance(real, fake)),
                     ("class_log_prob (2032 comps)", lambda: metrics.class_log_prob(fake, tree)),
                     ("evaluate (all metrics)", lambda: metrics.evaluate(fake, tree, 0, reference=real))]:
        t = time.perf_counter()
        fn()
        print(f"{name:30s} {time.perf_counter() - t:6.2f} s  (20k vs 20k)")


if __name__ == "__main__":
    main()
