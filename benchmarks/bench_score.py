"""Exact score of tree() on 4096 points at log-normal sigmas: toydiff vs a straightforward implementation.

The reference is what one writes first: loop over the components, eigendecompose each covariance
C_k = V diag(lam) V^T, and for every point use S = V diag(lam + sigma^2) V^T to get log N_k and its gradient;
combine with a log-sum-exp at the end. Both run side by side in this one process, on the same inputs,
and must agree; the script prints the speed ratio (target: toydiff at least 5x faster).

    python benchmarks/bench_score.py [--points 4096] [--repeats 5]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from toydiff.datasets import tree


def reference_score(mix, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-component loop with an eigendecomposition per covariance: the straightforward baseline."""
    x, s2 = x.double(), sigma.double() ** 2
    log_terms, grads = [], []
    for w, mu, cov in zip(mix.weights, mix.means, mix.covs):
        lam, vec = torch.linalg.eigh(cov)                       # C = V diag(lam) V^T
        r = (x - mu) @ vec                                      # coordinates in the eigenbasis [N, 2]
        var = lam[None, :] + s2[:, None]                        # eigenvalues of C + sigma^2 I
        log_terms.append(w.log() - 0.5 * (r ** 2 / var).sum(1) - math.log(2 * math.pi) - 0.5 * var.log().sum(1))
        grads.append(-(r / var) @ vec.T)                        # -S^-1 (x - mu)
    resp = torch.softmax(torch.stack(log_terms, 1), dim=1)      # [N, K]
    return torch.einsum("nk,knd->nd", resp, torch.stack(grads))


def best_time(fn, repeats: int) -> float:
    fn()                                                        # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    mix = tree()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.points, 2, generator=g, dtype=torch.float64) * 0.6
    sigma = torch.exp(torch.randn(args.points, generator=g, dtype=torch.float64) * 1.2 - 1.2)  # EDM log-normal
    ours, ref = mix.score(x, sigma), reference_score(mix, x, sigma)
    err = ((ours - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).max().item()
    t_ours = best_time(lambda: mix.score(x, sigma), args.repeats)
    t_ref = best_time(lambda: reference_score(mix, x, sigma), max(1, args.repeats // 2))
    print(f"tree(): {len(mix)} components, {args.points} points, torch threads {torch.get_num_threads()}")
    print(f"max relative difference      {err:.2e}")
    print(f"reference (per-component eig) {t_ref * 1e3:9.1f} ms")
    print(f"toydiff GaussianMixture.score {t_ours * 1e3:9.1f} ms")
    print(f"speed ratio                   {t_ref / t_ours:9.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
