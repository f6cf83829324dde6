"""Metrics against the exact ground truth: true samples score as such, a shifted copy scores worse."""
import pytest
import torch

from toydiff import datasets, metrics


@pytest.fixture(scope="module")
def tree():
    return datasets.tree()


def _draw(dist, n, cls, seed):
    return dist.sample(n, cond=cls, generator=torch.Generator().manual_seed(seed))[0]


def test_true_samples_score_as_true(tree):
    x = _draw(tree, 4000, 0, seed=11)
    m = metrics.evaluate(x, tree, 0, seed=3)
    assert abs(m["outlier_fraction"] - 0.01) < 0.006
    assert m["precision"] > 0.9 and m["recall"] > 0.9
    assert m["class_accuracy"] > 0.97
    assert 0 <= m["energy_distance"] < 2e-3


def test_shifted_copy_scores_worse(tree):
    ref = _draw(tree, 3000, 0, seed=1)
    good, bad = _draw(tree, 3000, 0, seed=2), _draw(tree, 3000, 0, seed=2) + torch.tensor([0.05, -0.05])
    mg, mb = metrics.evaluate(good, tree, 0, reference=ref), metrics.evaluate(bad, tree, 0, reference=ref)
    assert mb["outlier_fraction"] > 5 * mg["outlier_fraction"]
    assert mb["precision"] < mg["precision"] - 0.2 and mb["recall"] < mg["recall"] - 0.2
    assert mb["log_likelihood"] < mg["log_likelihood"] - 1
    assert mb["energy_distance"] > 10 * max(mg["energy_distance"], 1e-5)


def test_class_log_prob_matches_mixture(tree):
    x = tree.sample(300, generator=torch.Generator().manual_seed(5))[0] * 1.2
    exact = torch.stack([tree.log_prob(x.double(), 0.0, c) for c in (0, 1)], 1)
    fast = metrics.class_log_prob(x, tree)
    assert torch.allclose(fast, exact, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("n", [4, 60, 1500])
def test_blocked_precision_recall_equals_brute_force(tree, n):
    g = torch.Generator().manual_seed(n)
    real = tree.sample(n, cond=0, generator=g)[0]
    for fake in (tree.sample(n + 5, cond=0, generator=g)[0] * 1.03 + 0.01, torch.randn(n + 5, 2, generator=g)):
        d = lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # noqa: E731
        r_real = d(real, real).topk(4, largest=False).values[:, 3]
        r_fake = d(fake, fake).topk(4, largest=False).values[:, 3]
        cross = d(fake, real)
        precision = float(((cross - r_real[None]).min(1).values <= 0).float().mean())
        recall = float(((cross - r_fake[:, None]).min(0).values <= 0).float().mean())
        assert metrics.precision_recall(real, fake, k=3) == (precision, recall)


def test_precision_recall_sees_dropped_modes():
    dist = datasets.three_gaussians(std=0.15)
    real = dist.sample(2000, generator=torch.Generator().manual_seed(0))[0]
    one_mode = dist.sample(2000, cond=0, generator=torch.Generator().manual_seed(1))[0]
    p, r = metrics.precision_recall(real, one_mode)
    assert p > 0.9 and r < 0.6


def test_class_accuracy_and_mixed_labels():
    dist = datasets.three_gaussians(std=0.1)
    x, y = dist.sample(600, generator=torch.Generator().manual_seed(0))
    assert metrics.class_accuracy(x, dist, y) > 0.99
    assert metrics.class_accuracy(x, dist, (y + 1) % 3) < 0.01
    assert metrics.outlier_fraction(x, dist, y) < 0.05


def test_bad_input_names_argument(tree):
    x = _draw(tree, 10, 0, 0)
    with pytest.raises(ValueError, match="cond"):
        metrics.outlier_fraction(x, tree, -1)
    with pytest.raises(ValueError, match="fake"):
        metrics.precision_recall(x, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="k="):
        metrics.precision_recall(x, x[:3])
    with pytest.raises(ValueError, match="quantile"):
        metrics.outlier_fraction(x, tree, 0, quantile=1.5)



def test_one_metric_vocabulary(tree):
    """evaluate computes every metric of DEFINITIONS, each has a table head, and the bench reports the same keys."""
    from toydiff import bench
    m = metrics.evaluate(_draw(tree, 200, 0, seed=1), tree, 0, bins=8)
    assert list(m) == list(metrics.DEFINITIONS) == list(metrics.LABELS)
    assert bench.METRICS == tuple(metrics.DEFINITIONS)


def _energy_one_sort(x, y, directions=64):
    """energy_distance as one torch.sort of both sets' projections (the reference computation)."""
    import math
    x, y = x.double(), y.double()
    theta = torch.arange(directions, dtype=torch.float64) * (math.pi / directions)
    proj = torch.cat([x, y]) @ torch.stack([theta.cos(), theta.sin()])
    step = torch.cat([torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64),
                      torch.full((y.shape[0],), -1.0 / y.shape[0], dtype=torch.float64)])
    t, order = proj.T.sort(dim=1)
    gap = step[order].cumsum(1)[:, :-1]
    return float(math.pi / 2 * (2 * (gap.square() * t.diff(dim=1)).sum(1)).mean())


def test_energy_distance_is_the_one_sort_bits_with_a_cached_reference(tree):
    """The merge of the reference's cached sorted run with the sample's is the one-sort result, bit for bit: for
    float32 samples (ties within and across the sets), shared points (the sort's own tie order: the fallback),
    unequal sizes, and a reference changed in place (its cache entry is not used)."""
    ref = _draw(tree, 1000, 0, seed=1)
    for seed, m in ((2, 1000), (3, 1000), (4, 777), (5, 1000)):
        y = _draw(tree, m, 0, seed=seed)
        if seed == 3:
            y[:40] = ref[:40]
        if seed == 5:
            y = y.half().float()                       # coarse values: many ties within y
        assert metrics.energy_distance(ref, y) == _energy_one_sort(ref, y)
    ref[:10] += 0.05                                   # in place: a new version of the same tensor object
    assert metrics.energy_distance(ref, y) == _energy_one_sort(ref, y)


def test_precision_recall_with_a_cached_reference_equals_a_fresh_one(tree):
    ref = _draw(tree, 1500, 0, seed=1)
    for seed in (2, 3):
        fake = _draw(tree, 1500, 0, seed=seed) + 0.01
        cached = metrics.precision_recall(ref, fake)
        assert cached == metrics.precision_recall(ref.clone(), fake)           # a new object: computed afresh
    ref[:500] = fake[:500]                                                     # changed in place: recomputed
    assert metrics.precision_recall(ref, fake) == metrics.precision_recall(ref.clone(), fake)
