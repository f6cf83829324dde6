"""The named toy problems against their specifications: tree() component for component (Karras et al. 2024,
Fig. 1, as specified in DESIGN.md), computed here by hand from the first RandomState(2) draws; three_gaussians()
overlapping as in Ho & Salimans 2022, Fig. 2, so that exact guidance visibly separates the classes."""
import math

import numpy as np
import pytest
import torch

from toydiff import datasets, density

S = np.array([1.3136, 1.3844])
O = np.array([0.0030, 0.0325])


def _branch_by_hand(n_len: float, d: int, p: np.ndarray, th: float):
    """(first component's mean, its covariance, raw weight, end point) of a branch, written out from the spec."""
    u = np.array([math.cos(th), math.sin(th)])
    length = 0.292 * 0.8 ** d * (1 + 0.2 * n_len)
    tau2 = (0.2 * 0.8 ** d / length) ** 2
    s0, s1 = S * length * 0.06
    ux, uy = u
    cov = np.array([[(ux * ux + tau2 * (1 - ux * ux)) * s0 * s0, (ux * uy - tau2 * ux * uy) * s0 * s1],
                    [(ux * uy - tau2 * ux * uy) * s0 * s1, (uy * uy + tau2 * (1 - uy * uy)) * s1 * s1]])
    return S * (p + u * length * 0.07), cov, length * 0.5 ** d, p + u * length


def test_tree_components_by_hand(tree_mix):
    n = np.random.RandomState(2).randn(400)
    # class A: the trunk uses n[0]; its first child's angle n[1] is drawn before descending, its length n[2]
    mean0, cov0, w0, end0 = _branch_by_hand(n[0], 0, O, math.pi / 4)
    mean1, cov1, w1, _ = _branch_by_hand(n[2], 1, end0, math.pi / 4 + (1 + 0.2 * n[1]))
    # class B's trunk: class A used 127 branches x 3 draws (length + two child angles, also at depth 6, whose
    # depth-7 children build nothing), so it takes n[381]
    mean_b, cov_b, w_b, _ = _branch_by_hand(n[381], 0, O, 5 * math.pi / 4)
    for k, (mean, cov) in {0: (mean0, cov0), 8: (mean1, cov1), 1016: (mean_b, cov_b)}.items():
        np.testing.assert_allclose(tree_mix.means[k].numpy(), mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(tree_mix.covs[k].numpy(), cov, rtol=1e-12, atol=1e-15)
    w = tree_mix.weights.numpy()
    np.testing.assert_allclose([w[8] / w[0], w[1016] / w[0]], [w1 / w0, w_b / w0], rtol=1e-12)
    assert tree_mix.labels[0] == 0 and tree_mix.labels[1015] == 0 and tree_mix.labels[1016] == 1
    # the 8 components of a branch are equally spaced at t = 0.07 .. 0.93 and share one weight and covariance
    step = (tree_mix.means[7] - tree_mix.means[0]).numpy() / 7
    np.testing.assert_allclose(tree_mix.means[1].numpy() - tree_mix.means[0].numpy(), step, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(step / S) * 7 / 0.86, 0.292 * (1 + 0.2 * n[0]), rtol=1e-9)


def test_tree_totals(tree_mix):
    assert len(tree_mix) == 2032 and tree_mix.num_classes == 2 and int((tree_mix.labels == 0).sum()) == 1016
    assert abs(float(tree_mix.weights.sum()) - 1) < 1e-12
    assert round(float(tree_mix.weights[tree_mix.labels == 0].sum()), 4) == 0.4770        # p(A), unequal class priors
    assert abs(math.sqrt(float(tree_mix.covariance().trace()) / 2) - 0.5) < 0.005     # union std ~ sigma_data
    # branches ~0.68 as thick as long (sqrt of the covariance's eigenvalue ratio), unlike the thin tree's ~0.27
    for mix, lo, hi in ((tree_mix, 0.6, 0.8), (datasets.thin_tree(), 0.2, 0.35)):
        ev = np.linalg.eigvalsh(mix.covs[:8].numpy())
        ratio = np.sqrt(ev[:, 0] / ev[:, 1]).mean()
        assert lo < ratio < hi, ratio


def test_tree_seed_draws_another_tree_of_the_same_construction(tree_mix):
    """seed picks the RandomState of the construction: seed 3's first branch is written out from its own first
    draw (the paper's tree, seed 2, is pinned above); bad seeds are refused by name."""
    other = datasets.tree(3)
    n0 = np.random.RandomState(3).randn()
    mean, cov, _, _ = _branch_by_hand(n0, 0, O, math.pi / 4)
    np.testing.assert_allclose(other.means[0].numpy(), mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(other.covs[0].numpy(), cov, rtol=1e-12, atol=1e-15)
    assert len(other) == 2032 and not torch.allclose(other.means, tree_mix.means)
    for bad, err in ((-1, ValueError), (2 ** 32, ValueError), (2.0, TypeError)):
        with pytest.raises(err, match="seed"):
            datasets.tree(bad)


def test_registry_has_both_trees():
    assert datasets.get("tree").means.shape == (2032, 2) and datasets.get("thin_tree").means.shape == (2032, 2)
    assert not torch.equal(datasets.get("tree").means, datasets.get("thin_tree").means)


def _guided_mean_distance(dist, w: float, grid) -> float:
    """|E_{p_w(x|0)} x - E_p x| of the exact guided class-0 density p(x|0)^w p(x)^(1-w), normalized on the grid."""
    p = density.guided_log_density(dist, 0, w, grid).exp()
    mean = (p[:, None] * grid.points).sum(0) / p.sum()
    return float((mean - dist.mean()).norm())


def test_three_gaussians_overlap_and_separate_under_guidance():
    dist = datasets.three_gaussians()
    # one blob with three bumps: the density at the centre is within 5% of the bumps' height
    ray = torch.stack([torch.zeros(201), torch.linspace(0, 1.4, 201)], 1).double()
    p = dist.log_prob(ray).exp()
    assert 0.95 < float(p[0] / p.max()) < 1 and float(ray[p.argmax(), 1]) > 0.3
    grid = density.make_grid((-4.0, 4.0, -4.0, 4.0), 320)
    d1, d2, d4, d8 = (_guided_mean_distance(dist, w, grid) for w in (1, 2, 4, 8))
    assert abs(d1 - 0.7) < 1e-3                        # w = 1: the class mean itself
    assert d4 >= 1.3 * d1 and round(d4 / d1, 2) == 1.42  # the number stated in the docstring
    assert d1 < d2 < d4 < d8
    # the old, well-separated setting barely moves: why the classes must overlap
    far = datasets.three_gaussians(radius=1.0, std=0.45)
    assert _guided_mean_distance(far, 4, grid) / _guided_mean_distance(far, 1, grid) < 1.15
