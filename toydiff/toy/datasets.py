"""Named 2D toy problems, each a class-labelled GaussianMixture so every density stays exact.

- `three_gaussians`: three isotropic Gaussians, one class each (Ho & Salimans 2022, Fig. 2).
- `tree`: the branching two-class distribution of Karras et al. 2024 (autoguidance), Fig. 1, exactly.
- `thin_tree`: a thinner tree (the hard case, on which CFG overshoots past the branch tips).
- `rings`, `moons`, `spirals`: classic shapes as chains of small Gaussians, one class per shape.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable

import numpy as np

from .distributions import GaussianMixture
from ..infra.validation import check_positive_int, check_seed

__all__ = ["three_gaussians", "tree", "thin_tree", "rings", "moons", "spirals", "DATASETS", "get"]


def _rotation(angle: np.ndarray) -> np.ndarray:
    """[..., 2, 2] rotation matrices."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _oriented_covs(angle: np.ndarray, std_along: np.ndarray, std_across: np.ndarray) -> np.ndarray:
    """Covariances R diag(along^2, across^2) R^T of Gaussians stretched along direction `angle`."""
    r = _rotation(np.asarray(angle, dtype=np.float64))
    diag = np.zeros(r.shape)
    diag[..., 0, 0], diag[..., 1, 1] = np.square(std_along), np.square(std_across)
    return r @ diag @ np.swapaxes(r, -1, -2)


def _chain(points: np.ndarray, std_along: float, std_across: float):
    """Gaussians centred on the points of a polyline, each stretched along the local tangent."""
    tangent = np.gradient(points, axis=0)
    angle = np.arctan2(tangent[:, 1], tangent[:, 0])
    n = len(points)
    return points, _oriented_covs(angle, np.full(n, std_along), np.full(n, std_across))


def three_gaussians(radius: float = 0.7, std: float = 0.5) -> GaussianMixture:
    """Three overlapping isotropic Gaussians at 90, 210 and 330 degrees on a circle, one class each, equal weights.

    The setting of Ho & Salimans 2022, Fig. 2: the classes overlap (the marginal is one blob with three shallow
    bumps; the means are 2.4 std apart), so the exact guided conditionals p(x|c)^w p(x)^(1-w) visibly pull apart
    as w grows: with the defaults each guided class mean sits 0.70 from the marginal mean at w = 1, 0.87 at
    w = 2, 1.00 at w = 4 (1.42x) and 1.11 at w = 8 (w = 1 is no guidance; Ho & Salimans' w is w - 1).
    Well-separated Gaussians barely move under guidance.
    """
    angles = np.deg2rad([90.0, 210.0, 330.0])
    means = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    covs = np.tile(np.eye(2) * std ** 2, (3, 1, 1))
    return GaussianMixture(np.ones(3), means, covs, labels=np.arange(3), num_classes=3)


# the paper's tree (Karras et al. 2024, Fig. 1): elementwise scale, class origin, branch-component positions
TREE_SCALE = np.array([1.3136, 1.3844])
TREE_ORIGIN = np.array([0.0030, 0.0325])
TREE_DEPTH = 7


def tree(seed: int = 2) -> GaussianMixture:
    """The distribution of Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself"), Fig. 1,
    component for component: two classes, A = 0 (towards pi/4) and B = 1 (towards 5pi/4), 2032 components.

    Built in unscaled coordinates from one stream n of legacy `RandomState(seed)` normals (the paper's: seed 2;
    other seeds give other trees of the same construction, the held-out trees of RESULTS.md), class A fully, then B,
    depth-first. A branch at depth d = 0..6 from p at angle th, u = (cos th, sin th):
        L = 0.292 * 0.8^d * (1 + 0.2 n),  tau = 0.2 * 0.8^d / L,  s = S * L * 0.06,
        8 components at t = linspace(0.07, 0.93, 8): raw weight L 0.5^d, mean S * (p + u L t),
        covariance (u u^T + tau^2 (I - u u^T)) * (s s^T) (elementwise);
    then its children at p + u L with angles th +- 0.7^d (1 + 0.2 n) (each drawn just before descending, also
    for the depth-7 calls, which build nothing). S = TREE_SCALE; the raw weights are normalized over all
    components, so p(A) = 0.4770 (seed 2). Union std ~0.5. Detail at every scale and low local dimension: the small,
    light outer branches are where an unguided model puts its outliers. The thinner `thin_tree` is the hard case.
    """
    seed = check_seed(seed)
    if seed >= 2 ** 32:
        raise ValueError(f"seed must lie in [0, 2**32 - 1] (numpy's RandomState), got {seed}")
    rnd = np.random.RandomState(seed)
    t = np.linspace(0.07, 0.93, 8)
    means, covs, weights, labels = [], [], [], []

    def branch(cls: int, d: int, p: np.ndarray, th: float) -> None:
        if d >= TREE_DEPTH:
            return
        u = np.array([math.cos(th), math.sin(th)])
        length = 0.292 * 0.8 ** d * (1 + 0.2 * rnd.randn())
        tau = 0.2 * 0.8 ** d / length
        s = TREE_SCALE * length * 0.06
        uu = np.outer(u, u)
        means.append(TREE_SCALE * (p + u * length * t[:, None]))
        covs.append(np.tile((uu + tau ** 2 * (np.eye(2) - uu)) * np.outer(s, s), (8, 1, 1)))
        weights.append(np.full(8, length * 0.5 ** d))
        labels.append(np.full(8, cls))
        for sign in (1.0, -1.0):
            branch(cls, d + 1, p + u * length, th + sign * 0.7 ** d * (1 + 0.2 * rnd.randn()))

    for cls, angle in enumerate((math.pi / 4, 5 * math.pi / 4)):
        branch(cls, 0, TREE_ORIGIN, angle)
    return GaussianMixture(np.concatenate(weights), np.concatenate(means), np.concatenate(covs),
                           np.concatenate(labels), num_classes=2)


def thin_tree(depth: int = 7, seed: int = 0, sigma_data: float = 0.5) -> GaussianMixture:
    """The hard variant of `tree`: the same idea with branches ~2.5x thinner relative to their length (across /
    along ~0.27 instead of ~0.68) and a first split of 0.7 rad instead of 1 rad. Two classes, A = 0 and B = 1,
    growing from the origin towards angles pi/4 and 5pi/4. Full-range CFG overshoots past its thin branch tips.

    Each class is a recursive binary tree of `depth` levels (2^depth - 1 branches); a branch is a row of
    8 narrow Gaussians along it. Going one level down, the branch length shrinks about 0.8x (with random
    jitter) and the two children leave at angle +-0.7^depth (jittered). A component's weight is
    proportional to its branch length times 0.5^depth, so the fine outer branches carry little mass:
    exactly where an unguided model puts its outliers. The union is scaled to std `sigma_data`.
    """
    depth, seed = check_positive_int(depth, "depth"), check_seed(seed)
    if depth > 12:      # 16 (2^depth - 1) components: depth 12 is already 65520, and memory grows 2x a level
        raise ValueError(f"depth must lie in [1, 12] (2^depth - 1 branches of 8 components per class), got {depth}")
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, Real) or not 0 < sigma_data < math.inf:
        raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data!r}")
    rng = np.random.default_rng(seed)
    means, covs, weights, labels = [], [], [], []
    t = np.linspace(0.5 / 8, 1 - 0.5 / 8, 8)                       # component centres along a branch

    def grow(cls: int, level: int, start: np.ndarray, angle: float, length: float) -> None:
        direction = np.array([math.cos(angle), math.sin(angle)])
        means.append(start + t[:, None] * length * direction)
        # along: adjacent components overlap into one stroke; across: thin, thinning with depth
        covs.append(_oriented_covs(np.full(8, angle), np.full(8, 0.6 * length / 8), np.full(8, 0.02 * 0.8 ** level)))
        weights.append(np.full(8, length * 0.5 ** level / 8))
        labels.append(np.full(8, cls))
        if level + 1 < depth:
            end = start + length * direction
            for side in (-1.0, 1.0):
                spread = 0.7 ** (level + 1) * (1 + 0.15 * rng.standard_normal())
                child_len = length * 0.8 * float(np.clip(1 + 0.2 * rng.standard_normal(), 0.6, 1.4))
                grow(cls, level + 1, end, angle + side * spread, child_len)

    for cls, root_angle in enumerate((math.pi / 4, 5 * math.pi / 4)):
        grow(cls, 0, np.zeros(2), root_angle + 0.1 * rng.standard_normal(), 1.0)
    means, covs = np.concatenate(means), np.concatenate(covs)
    weights, labels = np.concatenate(weights), np.concatenate(labels)
    for cls in (0, 1):                                               # equal class masses
        weights[labels == cls] /= 2 * weights[labels == cls].sum()
    # rescale about the origin so that the union has std sigma_data: sqrt(trace(Cov) / 2) = sigma_data
    unscaled = GaussianMixture(weights, means, covs, labels, num_classes=2)
    scale = sigma_data / math.sqrt(float(unscaled.covariance().trace()) / 2)
    return GaussianMixture(weights, means * scale, covs * scale ** 2, labels, num_classes=2)


def rings(radii: tuple[float, ...] = (0.35, 0.8), per_ring: int = 40, std: float = 0.04) -> GaussianMixture:
    """Concentric circles, one class per ring, each a ring of `per_ring` Gaussians; ring mass grows with radius."""
    means, covs, weights, labels = [], [], [], []
    theta = np.linspace(0, 2 * math.pi, per_ring, endpoint=False)
    for cls, r in enumerate(radii):
        pts = r * np.stack([np.cos(theta), np.sin(theta)], 1)
        m, c = _chain(np.concatenate([pts[-1:], pts, pts[:1]]), 0.6 * math.pi * r / per_ring * 2, std)
        means.append(m[1:-1]), covs.append(c[1:-1])
        weights.append(np.full(per_ring, r / per_ring)), labels.append(np.full(per_ring, cls))
    return GaussianMixture(np.concatenate(weights), np.concatenate(means), np.concatenate(covs),
                           np.concatenate(labels), num_classes=len(radii))


def moons(per_moon: int = 24, std: float = 0.05) -> GaussianMixture:
    """Two interleaving half circles (the shape of scikit-learn's make_moons), centred, one class each."""
    theta = np.linspace(0, math.pi, per_moon)
    upper = np.stack([np.cos(theta), np.sin(theta)], 1)
    lower = np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], 1)
    means, covs = [], []
    for arc in (upper, lower):
        m, c = _chain((arc - [0.5, 0.25]) * 0.6, 0.6 * 0.6 * math.pi / per_moon, std)
        means.append(m), covs.append(c)
    labels = np.repeat([0, 1], per_moon)
    return GaussianMixture(np.ones(2 * per_moon), np.concatenate(means), np.concatenate(covs), labels, num_classes=2)


def spirals(turns: float = 1.5, per_arm: int = 48, std: float = 0.03) -> GaussianMixture:
    """Two interleaved Archimedean spirals (r grows linearly with angle), one class each; outer parts weigh more."""
    theta = np.linspace(0.3, 2 * math.pi * turns, per_arm)
    r = 0.9 * theta / theta[-1]
    means, covs, weights = [], [], []
    for arm in (0.0, math.pi):
        pts = r[:, None] * np.stack([np.cos(theta + arm), np.sin(theta + arm)], 1)
        step = np.linalg.norm(np.diff(pts, axis=0), axis=1).mean()
        m, c = _chain(pts, 0.6 * step, std)
        means.append(m), covs.append(c), weights.append(r)
    labels = np.repeat([0, 1], per_arm)
    return GaussianMixture(np.concatenate(weights), np.concatenate(means), np.concatenate(covs), labels, num_classes=2)


DATASETS: dict[str, Callable[[], GaussianMixture]] = {
    "three_gaussians": three_gaussians,
    "tree": tree,
    "thin_tree": thin_tree,
    "rings": rings,
    "moons": moons,
    "spirals": spirals,
}


def get(name: str) -> GaussianMixture:
    """The named toy problem with its default parameters (see DATASETS)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]()
