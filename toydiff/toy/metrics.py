"""Sample-quality metrics against an exact ground truth (a `GaussianMixture`).

- `outlier_fraction`: the share of samples whose true log p(x|c) lies below the 1% quantile of log p(x|c)
  over true samples of c, so true samples score about 0.01 (the outlier notion of Karras et al. 2024, Fig. 1).
- `precision_recall`: k-nearest-neighbour manifolds, k = 3 (Kynkaanniemi et al. 2019, "Improved Precision
  and Recall Metric for Assessing Generative Models", Eq. 1-3).
- `energy_distance`: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013), zero iff the laws match.
- `class_accuracy`: argmax_c of the exact posterior p(c | x) equals the requested class.
- `mean_log_likelihood`: E log p(x | c) under the true density.
- `tv`, `kl`: the sample histogram against the exact bin masses (toydiff.histogram).
`DEFINITIONS` names every metric once (with `LABELS`, the short table heads) and `evaluate` computes them all: the
demo, the explorer and the bench read these keys, so a new metric is a change here only.

Precision/recall find the points within reach with k-d trees (scipy); the energy distance is exact per direction
from one sort of 1D projections: 20k vs 20k points take seconds on a 2-core CPU.
"""
from __future__ import annotations

import itertools
import math
import weakref
from numbers import Integral
from typing import Any, Callable

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from .distributions import GaussianMixture, fingerprint
from .histogram import histogram_divergence
from ..infra.validation import as_cond, check_points, check_positive_int, check_seed

__all__ = ["DEFINITIONS", "LABELS", "describe", "class_log_prob", "outlier_threshold", "outlier_fraction", "outliers", "precision_recall", "energy_distance", "class_accuracy",
           "mean_log_likelihood", "evaluate"]

# what each number means and which way is better: printed under the demo's tables and in the notebooks
DEFINITIONS: dict[str, str] = {
    "outlier_fraction": "share of samples whose true log p(x|c) lies below the 1% quantile of true samples' "
                        "(true samples score 0.01; lower is better, down to that)",
    "precision": "share of samples inside the 3-NN balls of true samples (Kynkaanniemi et al. 2019): fidelity, "
                 "higher is better, at most 1",
    "recall": "share of true samples inside the 3-NN balls of the samples: coverage/diversity, higher is better",
    "class_accuracy": "share of samples whose most probable class under the exact posterior p(c|x) is the one asked "
                      "for; higher is better",
    "log_likelihood": "mean true log p(x|c) of the samples, in nats. Higher is NOT better: true samples score "
                      "about minus the entropy of p(x|c); above that, samples crowd the densest regions (lost "
                      "diversity, e.g. score scaling)",
    "energy_distance": "2E|X-Y| - E|X-X'| - E|Y-Y'| between samples and true samples (Szekely & Rizzo 2013), "
                       "0 iff the laws match; lower is better (two finite sets of true samples score a little above 0)",
    "tv": "total variation between the sample histogram and the exact mass of p(x|c) per bin (a grid over the "
          "class's box, plus the outside; toydiff.histogram), in [0, 1]; lower is better, true samples score a "
          "little above 0 (histogram.noise_floor)",
    "kl": "KL(q || p) of the sample histogram q against the exact bin masses p of p(x|c), in nats; lower is better",
}
# the short column heads of tables (toydiff.bench_report); every key of DEFINITIONS has one
LABELS: dict[str, str] = {"outlier_fraction": "outliers", "precision": "precision", "recall": "recall",
                          "class_accuracy": "class acc.", "log_likelihood": "log-lik.", "energy_distance": "energy dist.",
                          "tv": "TV", "kl": "KL"}


def describe(keys: Any = tuple(DEFINITIONS)) -> str:
    """The definitions of the metrics `keys`, one line each ('name: definition')."""
    return "\n".join(f"  {k}: {DEFINITIONS[k]}" for k in keys)


_THRESHOLDS: dict[tuple, float] = {}     # outlier thresholds by (mixture fingerprint, class, quantile, n_ref, seed)
_PER_SAMPLE: dict[tuple, tuple] = {}     # what depends on one sample only, by (id, what): see _per_sample


def _per_sample(t: Tensor, what: tuple, compute: Callable[[], Any]) -> Any:
    """compute(), cached for the tensor object t as it is now (its id and in-place version counter): the reference
    sample that `evaluate` compares every sample set with (its k-NN radii, its k-d tree, its sorted projections)
    is processed once. An entry is only used while its tensor lives and is unchanged."""
    key = (id(t), *what)
    hit = _PER_SAMPLE.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    value = compute()
    if len(_PER_SAMPLE) >= 16:
        _PER_SAMPLE.clear()
    _PER_SAMPLE[key] = (weakref.ref(t), t._version, value)
    return value


def class_log_prob(x: Tensor, dist: GaussianMixture) -> Tensor:
    """log p(x | c) [N, C] of the clean data (sigma = 0) for every class c, exact, in float64."""
    return dist.class_log_prob(check_points(x, 2, "x").double().cpu(), 0.0)


def _labels(dist: GaussianMixture, cond: Any, n: int) -> Tensor:
    """Class labels [n] >= 0 (an int is broadcast); -1 / None are refused: these metrics are per class."""
    c = as_cond(cond, n, dist.num_classes)
    if c is None or (c < 0).any():
        raise ValueError("cond must give a class label in [0, num_classes) for every sample, not -1/None")
    return c


def outlier_threshold(dist: GaussianMixture, cls: int, *, quantile: float = 0.01, n_ref: int = 10000,
                      seed: int = 0) -> float:
    """The `quantile` of log p(x | cls) over `n_ref` true samples of class `cls` (drawn with `seed`)."""
    seed = check_seed(seed)
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    check_positive_int(n_ref, "n_ref")
    key = (fingerprint(dist), cls, quantile, n_ref, seed)
    if key not in _THRESHOLDS:
        x, _ = dist.sample(n_ref, cond=cls, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        _THRESHOLDS[key] = float(torch.quantile(class_log_prob(x, dist)[:, cls], quantile))
    return _THRESHOLDS[key]


def outlier_fraction(x: Tensor, dist: GaussianMixture, cond: Any, *, quantile: float = 0.01, n_ref: int = 10000,
                     seed: int = 0, log_probs: Tensor | None = None) -> float:
    """Share of samples x [N, 2] with log p(x | c) below the `quantile` of log p(x | c) over `n_ref` true samples
    of c (per class when `cond` [N] mixes classes). True samples score about `quantile`.
    `log_probs`: precomputed `class_log_prob(x, dist)` [N, C], to share the work with other metrics."""
    return float(outliers(x, dist, cond, quantile=quantile, n_ref=n_ref, seed=seed, log_probs=log_probs)
                 .double().mean())


def outliers(x: Tensor, dist: GaussianMixture, cond: Any, *, quantile: float = 0.01, n_ref: int = 10000,
             seed: int = 0, log_probs: Tensor | None = None) -> Tensor:
    """[N] bool: which samples of x [N, 2] count as outliers in `outlier_fraction` (same arguments), e.g. to mark
    them in a figure."""
    x = check_points(x, 2, "x")
    c = _labels(dist, cond, x.shape[0])
    logp = (class_log_prob(x, dist) if log_probs is None else log_probs).gather(1, c[:, None])[:, 0]
    below = torch.zeros(x.shape[0], dtype=torch.bool)
    for cls in c.unique().tolist():
        sel = c == cls
        below[sel] = logp[sel] < outlier_threshold(dist, cls, quantile=quantile, n_ref=n_ref, seed=seed)
    return below


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """|a_i - b_i| [M] in x's float32, from the differences (as torch.cdist computes it without |a|^2 + |b|^2)."""
    return (a - b).norm(dim=1)


def _kth_radius(x: Tensor, k: int) -> Tensor:
    """Distance [N] from each point to its k-th nearest other point (the k-NN ball radius), in float32.

    A k-d tree (scipy's cKDTree, float64) finds the k + 3 nearest points, whose distances are then recomputed in
    float32; the k-th of those (self at 0 is the 0-th) is the float32 radius, also where float32 rounding reorders
    near-ties (two spare neighbours)."""
    m = min(k + 3, x.shape[0])
    _, idx = cKDTree(x.double().numpy()).query(x.double().numpy(), k=m)
    idx = torch.from_numpy(idx)                                                 # [N, m]
    d = _distances(x.repeat_interleave(m, 0), x[idx.reshape(-1)]).reshape(-1, m)
    return d.sort(dim=1).values[:, k]


def _covered(query: Tensor, centers: Tensor, radii: Tensor, tree: cKDTree | None = None) -> Tensor:
    """Whether each query point [Nq] lies in the union of the balls B(centers_i, radii_i) (float32 radii): a k-d
    tree of the query points (`tree`, if built already) gives every point within each ball enlarged by 1e-5
    (float64), and the float32 distance decides."""
    tree = cKDTree(query.double().numpy()) if tree is None else tree
    reach = radii.double().numpy() * (1 + 1e-5) + 1e-30
    hits = tree.query_ball_point(centers.double().numpy(), reach, return_sorted=False)
    lengths = torch.from_numpy(np.fromiter(map(len, hits), dtype=np.int64, count=len(hits)))
    q = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(hits), dtype=np.int64, count=int(lengths.sum())))
    c = torch.arange(centers.shape[0]).repeat_interleave(lengths)
    out = torch.zeros(query.shape[0], dtype=torch.bool)
    inside = _distances(query[q], centers[c]) <= radii[c]
    out[q[inside]] = True
    return out


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), k-NN manifolds in the plane.

    manifold(S) = union over s in S of the ball B(s, d_k(s)), d_k = distance to the k-th nearest neighbour in S;
    precision = share of fake points inside manifold(real), recall = share of real points inside manifold(fake).
    Exact (float32 distances); k-d trees find the pairs within reach, so 4096 vs 4096 take milliseconds.
    """
    given = real
    real, fake = check_points(real, 2, "real").float(), check_points(fake, 2, "fake").float()
    k = check_positive_int(k, "k")
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(f"real and fake need more than k={k} points, got {real.shape[0]} and {fake.shape[0]}")
    radius, tree = _per_sample(given, ("knn", k), lambda: (_kth_radius(real, k), cKDTree(real.double().numpy())))
    precision = _covered(fake, real, radius).float().mean()
    recall = _covered(real, fake, _kth_radius(fake, k), tree).float().mean()
    return float(precision), float(recall)


def energy_distance(x: Tensor, y: Tensor, directions: int = 64) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the samples x [N, 2] and y [M, 2]
    (Szekely & Rizzo 2013; V-statistic: 0 for identical sets, >= 0), in O((N + M) log(N + M)) per direction.

    In 2D, |v| = (pi / 2) E_theta |<theta, v>| over unit directions theta, so the 2D energy distance is pi/2
    times the mean over directions of the 1D energy distances of the projections, and in 1D
    D = 2 integral (F_x(t) - F_y(t))^2 dt is exact from one sort. `directions` angles evenly spaced in
    [0, pi) integrate the smooth, pi-periodic integrand to high accuracy.
    """
    given = x
    x, y = check_points(x, 2, "x").double(), check_points(y, 2, "y").double()
    check_positive_int(directions, "directions")
    theta = torch.arange(directions, dtype=torch.float64) * (math.pi / directions)
    proj = torch.cat([x, y]) @ torch.stack([theta.cos(), theta.sin()])           # [N + M, D]
    step = torch.cat([torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64),
                      torch.full((y.shape[0],), -1.0 / y.shape[0], dtype=torch.float64)])
    sort_x = lambda: np.sort(proj[:x.shape[0]].T.numpy(), axis=1)                 # noqa: E731
    px, run = _per_sample(given, ("projections", directions), lambda: (proj[:x.shape[0]].clone(), sort_x()))
    merged = _merged_steps(proj, run if torch.equal(px, proj[:x.shape[0]]) else sort_x(), step)
    if merged is None:                                                           # x and y share a value
        t, order = proj.T.sort(dim=1)                                            # [D, N + M]
        merged = t, step[order]
    t, steps = merged
    gap = steps.cumsum(1)[:, :-1]                                                # F_x - F_y between the points
    one_d = 2 * (gap.square() * t.diff(dim=1)).sum(1)                            # [D]
    return float(math.pi / 2 * one_d.mean())


def _merged_steps(proj: Tensor, run_x: np.ndarray, step: Tensor) -> tuple[Tensor, Tensor] | None:
    """(the sorted projections [D, N + M], the CDF step of each) as one sort of proj's columns [N + M, D] gives
    them, from the sorted projections of x (`run_x` [D, N]) and of y and one merge of the two sorted runs. Where a
    point of x ties with a point of y the order of the two steps would be the sort's choice: None, and the caller
    sorts; otherwise ties lie within one set, whose steps are equal, so the sequence of steps, and all that
    follows, is the same bits."""
    n = run_x.shape[1]
    runs = np.concatenate([run_x, np.sort(proj[n:].T.numpy(), axis=1)], axis=1)
    order = np.argsort(runs, axis=1, kind="stable")                              # merges the two sorted runs
    t = np.take_along_axis(runs, order, axis=1)
    from_y = order >= n
    if ((t[:, 1:] == t[:, :-1]) & (from_y[:, 1:] != from_y[:, :-1])).any():
        return None
    return torch.from_numpy(t), torch.where(torch.from_numpy(from_y), step[-1], step[0])


def class_accuracy(x: Tensor, dist: GaussianMixture, cond: Any, *, log_probs: Tensor | None = None) -> float:
    """Share of samples whose exact MAP class argmax_c p(c | x) = argmax_c W_c p(x | c) (sigma = 0) is the
    requested one (`log_probs` as in `outlier_fraction`)."""
    x = check_points(x, 2, "x")
    c = _labels(dist, cond, x.shape[0])
    lp = class_log_prob(x, dist) if log_probs is None else log_probs
    class_mass = torch.stack([dist.weights[dist.labels == k].sum() for k in range(dist.num_classes)])
    return float(((lp + class_mass.log()).argmax(1) == c).double().mean())


def mean_log_likelihood(x: Tensor, dist: GaussianMixture, cond: Any, *, log_probs: Tensor | None = None) -> float:
    """Mean true log p(x | c) in nats (`log_probs` as in `outlier_fraction`)."""
    x = check_points(x, 2, "x")
    c = _labels(dist, cond, x.shape[0])
    return float((class_log_prob(x, dist) if log_probs is None else log_probs).gather(1, c[:, None]).mean())


def evaluate(x: Tensor, dist: GaussianMixture, cond: int, *, reference: Tensor | None = None, k: int = 3,
             seed: int = 0, bins: int = 32) -> dict[str, float]:
    """Every metric of DEFINITIONS (the one vocabulary of the demo, the explorer and the bench) of samples x [N, 2]
    meant to come from p(x | cond), against `reference` true samples of that class (default: N fresh ones drawn
    with `seed`; the outlier threshold's reference is drawn with `seed` too), k-NN with `k`, histograms of
    `bins` x `bins` bins. Returns a dict of floats, in the order of DEFINITIONS."""
    x, seed = check_points(x, 2, "x"), check_seed(seed)
    if isinstance(cond, bool) or not isinstance(cond, Integral) or not 0 <= cond < dist.num_classes:
        raise ValueError(f"cond must be a class label in [0, {dist.num_classes}), got {cond!r}")
    cond = int(cond)
    if reference is None:
        reference, _ = dist.sample(x.shape[0], cond=cond, generator=torch.Generator().manual_seed(seed + 1))
    precision, recall = precision_recall(reference, x, k)
    lp = class_log_prob(x, dist)
    divergence = histogram_divergence(x, dist, cond, bins=bins)
    return dict(outlier_fraction=outlier_fraction(x, dist, cond, seed=seed, log_probs=lp), precision=precision,
                recall=recall, class_accuracy=class_accuracy(x, dist, cond, log_probs=lp),
                log_likelihood=mean_log_likelihood(x, dist, cond, log_probs=lp),
                energy_distance=energy_distance(reference, x), tv=divergence["tv"], kl=divergence["kl"])
