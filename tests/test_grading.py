"""toydiff.grading without nbgrader: the own-work rule (the library refuses to solve the exercise while the student's
function runs) and the Pareto scoring of the open-ended guidance design."""
from __future__ import annotations

import pytest
import torch

from toydiff import datasets, grading, guidance, metrics
from toydiff.grading.design import DESIGN_POINTS, MARGIN, beats, score_design
from toydiff.grading.forbid import library_off, own_work


def test_library_refuses_only_while_the_student_function_runs_and_is_restored():
    original = guidance.AutoGuidance.branches
    calls = own_work(lambda: guidance.guided(datasets.tree(), guidance.AutoGuidance(datasets.tree(), 2.0))(
        torch.zeros(1, 2), 0.5, 0), ((guidance.AutoGuidance, "branches"),), "autoguide")
    with pytest.raises(AssertionError, match="autoguide called toydiff's AutoGuidance.branches"):
        calls()
    assert guidance.AutoGuidance.branches is original                  # restored after the refusal
    with library_off(((metrics, "outlier_fraction"),), "x"):
        with pytest.raises(AssertionError, match="metrics.outlier_fraction"):
            metrics.outlier_fraction(torch.zeros(3, 2), datasets.three_gaussians(), 0)
    assert metrics.outlier_fraction.__name__ == "outlier_fraction"                   # restored


def _autoguide_by_library(main, guide, x, sigma, cond, w):
    return guidance.guided(main, guidance.AutoGuidance(guide, w))(x, sigma, cond)


def _autoguide_by_hand(main, guide, x, sigma, cond, w):
    d_guide = guide(x, sigma, cond)
    return d_guide + w * (main(x, sigma, cond) - d_guide)


def test_a_submission_that_calls_the_library_fails_the_check_with_the_reason():
    grading.check_autoguidance(_autoguide_by_hand)
    with pytest.raises(AssertionError, match="called toydiff's AutoGuidance.branches"):
        grading.check_autoguidance(_autoguide_by_library)


def test_interval_and_sampler_checks_refuse_library_calls():
    with pytest.raises(AssertionError, match="interval_weight called toydiff's"):
        grading.check_interval_weight(lambda w, s, lo, hi: guidance.CFG(w, interval=(lo, hi)).weight(s))
    from toydiff import samplers
    with pytest.raises(AssertionError, match=r"euler_step called toydiff's samplers.METHODS\['euler'\]"):
        grading.check_euler_step(lambda den, x, s, s_next, cond: samplers.METHODS["euler"](den, x, s, s_next, cond, None))


def _sweeps(design: list[tuple[float, float]]) -> dict[str, list[dict]]:
    rows = lambda pts: [dict(w=1.5 + i, outlier_fraction=o, recall=r) for i, (o, r) in enumerate(pts)]
    return {"none": rows([(0.20, 0.97)]), "cfg": rows([(0.22, 0.94), (0.15, 0.70)]), "mine": rows(design)}


@pytest.mark.parametrize("design, points", [
    ([(0.16, 0.95)], DESIGN_POINTS),                  # better than none in outliers by 0.04, than cfg w=3 in recall
    ([(0.20, 0.97)], 2.0),                            # exactly the unguided point: on the front, not beyond
    ([(0.185, 0.965), (0.21, 0.98)], 2.0),            # beyond the front by less than MARGIN
    ([(0.23, 0.93)], 1.0),                            # dominated by none
    ([(float("nan"), 0.5)], 0.0),                     # non-finite samples
])
def test_pareto_score_tiers(design, points):
    score, why = score_design(_sweeps(design), "mine")
    assert score == points, why


def test_beats_is_the_margin_shifted_non_domination():
    front = [(0.2, 0.9)]
    assert beats((0.2 - MARGIN, 0.5), front, MARGIN) and beats((0.9, 0.9 + MARGIN), front, MARGIN)
    assert not beats((0.2 - MARGIN / 2, 0.9 + MARGIN / 2), front, MARGIN)
    assert beats((0.2, 0.9), front, -0.001) and not beats((0.202, 0.898), front, -0.001)


def test_design_check_names_the_missing_registration():
    with pytest.raises(AssertionError, match="no guidance recipe 'not_registered_here'"):
        grading.check_guidance_design("not_registered_here")


def test_design_samples_the_recipe_first_and_computes_no_sampler_table(monkeypatch):
    """The recipe is sampled before the built-ins, so an unfinished stub (its branches raise) fails at once in a4's
    autograde; the sampler table, which nothing scores, is off."""
    from toydiff.bench import sweep
    sampled = []

    def stub(name, models, config):
        sampled.append(name)
        raise NotImplementedError(name)

    monkeypatch.setattr(sweep, "run_method", stub)
    with pytest.raises(NotImplementedError, match="cfg"):
        grading.check_guidance_design("cfg")
    assert sampled == ["cfg"]
    assert grading.design.DESIGN_CONFIG.samplers is False
