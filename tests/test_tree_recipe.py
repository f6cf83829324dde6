"""The shipped tree models (toydiff.zoo, seed 0) against the targets of the tree recipe (Karras et al. 2024,
arXiv:2406.02507, Fig. 1; benchmarks/tree_recipe.py and RESULTS.md have the full-size numbers and the 3-training-seed
spread, benchmarks/heldout.py the same recipe on trees and spirals it was not tuned on).

Measured at the demo's size (n = 4096, reference seed 1; EDM Heun 32 steps from sigma_max 5, class A) and stated
on the MEAN over the sampling seeds SEEDS: one sampling seed moves a number by up to 0.05 in recall (CFG reads
0.42 on seed 0, 0.47-0.48 on 11 / 22 / 33). k-NN recall depends on n (at n = 2048 CFG's reads 0.52 instead of
0.42 on seed 0), and the targets are stated at n = 4096.

Targets, 4-seed means (benchmarks/heldout.json has every seed): no guidance outliers <= 0.12, recall >= 0.95; CFG
in the paper's setup at most 0.02 more outliers than no guidance, precision >= 0.9, recall <= 0.50 (it drops about
half of the tree's coverage; stated as <= 0.45 on seed 0 alone before); autoguidance outliers <= 0.05, precision
>= 0.95, recall >= 0.77. The paper's released code reaches 0.118 / 0.125 / 0.053 outliers with exact score matching
on a GPU (recall 0.97 / 0.33 / 0.77).

The flow-matching models (zoo.flow_models, the same recipe as velocity models; benchmarks/flow_tree.py, start seeds
0 / 11 / 22 / 33) meet the main model's targets: no guidance outliers 0.027-0.038, precision 0.963-0.968, recall
0.963-0.973; CFG-Zero* (Fan et al. 2025) leaves fewer outliers than CFG (0.020-0.022 vs 0.054-0.060) and keeps more
recall (0.69-0.81 vs 0.37-0.42)."""
import pytest
import torch

from toydiff import datasets, metrics, zoo

N = 4096
SEEDS = (0, 11, 22, 33)


@pytest.fixture(scope="module")
def measured():
    """method -> metric -> mean over SEEDS."""
    models, tree = zoo.load_models(), datasets.tree()
    ref = tree.sample(N, cond=0, generator=torch.Generator().manual_seed(1))[0]
    out = {}
    with torch.no_grad():
        for method in ("none", "cfg", "autoguidance"):
            rows = []
            for seed in SEEDS:
                x = zoo.draw(zoo.guided_denoiser(models, method), N, 0, seed=seed)
                rows.append((metrics.outlier_fraction(x, tree, 0), *metrics.precision_recall(ref, x)))
            out[method] = {k: sum(r[i] for r in rows) / len(rows)
                           for i, k in enumerate(("outlier_fraction", "precision", "recall"))}
    return out


def test_no_guidance_covers_the_tree(measured):
    m = measured["none"]
    assert m["outlier_fraction"] <= 0.12 and m["recall"] >= 0.95


def test_cfg_paper_setup_drops_branches_without_adding_outliers(measured):
    m = measured["cfg"]
    assert m["precision"] >= 0.9 and m["recall"] <= 0.50
    assert m["outlier_fraction"] <= measured["none"]["outlier_fraction"] + 0.02


def test_autoguidance_cuts_outliers_and_keeps_branches(measured):
    m = measured["autoguidance"]
    assert m["outlier_fraction"] <= 0.05
    assert m["precision"] >= 0.95 and m["recall"] >= 0.77
    assert m["outlier_fraction"] < measured["none"]["outlier_fraction"] and m["recall"] > measured["cfg"]["recall"] + 0.2


@pytest.fixture(scope="module")
def flow_measured():
    models, tree = zoo.flow_models(), datasets.tree()
    ref = tree.sample(N, cond=0, generator=torch.Generator().manual_seed(1))[0]
    with torch.no_grad():
        return {method: metrics.evaluate(zoo.draw(zoo.guided_denoiser(models, method), N, 0, seed=0), tree, 0,
                                         reference=ref) for method in ("none", "cfg", "cfg_zero_star")}


def test_flow_model_meets_the_main_model_targets(flow_measured):
    m = flow_measured["none"]
    assert m["outlier_fraction"] <= 0.12 and m["recall"] >= 0.95 and m["precision"] >= 0.95


def test_cfg_zero_star_on_the_flow_model_beats_cfg(flow_measured):
    cfg, zero = flow_measured["cfg"], flow_measured["cfg_zero_star"]
    assert zero["outlier_fraction"] < cfg["outlier_fraction"] - 0.02 and zero["recall"] > cfg["recall"] + 0.2
