"""Why `toydiff bench` samples from sigma_max = 10, not the toy figures' 5: the start noise's bias, measured.

Every class starts from N(0, sigma_max^2 I), but p(x; sigma_max | c) is centred on the class mean mu_c; the
probability flow is a bijection, so the exact denoiser's samples keep the start's total variation to it, about
|mu_c| / (sigma_max sqrt(2 pi)). Per bench dataset and sigma_max: the exact denoiser sampled with the bench's
sampler (EDM Heun, zoo.STEPS steps), its histogram TV / KL against the exact bin masses (32 x 32 bins, mean over
classes), that estimate, and the noise floor of true samples of the same size.

    python benchmarks/bench_start_bias.py                   # 60000 samples per class (the trees: 12000); RESULTS.md
    python benchmarks/bench_start_bias.py --n 2000          # a quick look
"""
from __future__ import annotations

import argparse
import math

import torch

from toydiff import datasets, samplers
from toydiff.bench_models import BENCH_DATASETS
from toydiff.histogram import histogram_divergence, noise_floor
from toydiff.zoo import STEPS

BINS = 32


def measure(name: str, n: int, sigma_max: float) -> dict[str, float]:
    """The exact denoiser's TV / KL (mean over classes) from sigma_max, and the start's TV estimate."""
    data, rows = datasets.get(BENCH_DATASETS[name]), []
    for c in range(data.num_classes):
        start = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigma_max
        x = samplers.sample(data, start, torch.full((n,), c), steps=STEPS, sigma_max=sigma_max)
        div = histogram_divergence(x.float(), data, c, bins=BINS)
        rows.append((div["tv"], div["kl"], float(data.mean(c).norm()) / (sigma_max * math.sqrt(2 * math.pi))))
    return {k: sum(r[i] for r in rows) / len(rows) for i, k in enumerate(("tv", "kl", "start_tv"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60000, help="samples per class (the trees get a fifth, at least 1000)")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in BENCH_DATASETS:
        n = max(1000, args.n // 5) if "tree" in name else args.n             # 2032 components: 5x the cost
        data = datasets.get(BENCH_DATASETS[name])
        floor = [noise_floor(data, c, n, bins=BINS, seed=5)["tv"] for c in range(data.num_classes)]
        cells = [f"{name} (n {n}): floor {' / '.join(f'{f:.3f}' for f in floor)}"]
        for sigma_max in (5.0, 10.0):
            r = measure(name, n, sigma_max)
            cells.append(f"sigma_max {sigma_max:g}: TV {r['tv']:.3f} KL {r['kl']:.4f} start TV ~ {r['start_tv']:.3f}")
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
