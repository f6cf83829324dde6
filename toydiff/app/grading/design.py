"""The open-ended task of the course: design a guidance method that beats CFG on the tree's outlier/recall trade-off.

The student registers a recipe in toydiff.guidance's registry (`guidance.register(name, MyGuidance, ...)`); the grader
runs it through the benchmark (`toydiff.bench.bench_dataset` on the "tree" dataset with the bench's shipped models,
the same start noise for every method) over its weight grid, next to CFG and a few built-in methods, and scores
the best of its points on the (outlier fraction, recall) plane against CFG's points (w = 1, the unguided model,
included: CFG's curve starts there). A point P beats CFG by a margin m when, against EVERY CFG point Q, it is better
by m in at least one of the two:  o_P <= o_Q - m  or  r_P >= r_Q + m  (P shifted by m towards worse is still not
dominated). Points (DESIGN_POINTS = 4):
  1  the recipe runs: it builds at every weight of the grid and the samples are finite;
  1  some point is on CFG's front or beyond (beats it by -TIE: no CFG point is better by TIE in both);
  2  some point beats CFG by MARGIN.
"""
from __future__ import annotations

from ... import bench
from ...core import guidance
from ...bench.models import bench_models

__all__ = ["DESIGN_CONFIG", "DESIGN_POINTS", "MARGIN", "TIE", "BUILT_INS", "beats", "design_sweep", "score_design",
           "check_guidance_design"]

DESIGN_CONFIG = bench.BenchConfig(n=2048, grid=(1.5, 2.0, 3.0), bins=16, samplers=False)   # no sampler table: unscored
DESIGN_POINTS = 4
MARGIN = 0.02        # outliers of 2048 samples at ~0.2 have a binomial std of 0.009; the start noise is shared
TIE = 0.005
BUILT_INS = ("none", "cfg", "autoguidance", "apg", "cfg_interval")     # printed beside the design; cfg is scored


def beats(point: tuple[float, float], front: list[tuple[float, float]], margin: float) -> bool:
    """(outliers, recall) `point` beats every (outliers, recall) of `front` by `margin` (module docstring)."""
    o, r = point
    return all(o <= oq - margin or r >= rq + margin for oq, rq in front)


def design_sweep(name: str, config: bench.BenchConfig = DESIGN_CONFIG) -> dict[str, list[dict]]:
    """The bench's sweep (rows with w, outliers, recall, ...) of recipe `name` and of BUILT_INS on the tree."""
    if name not in guidance.names():
        raise AssertionError(f"no guidance recipe {name!r} is registered: call guidance.register({name!r}, MyGuidance, "
                             f"needs=..., default_w=...) in the cell above (registered now: {guidance.names()})")
    models = bench_models("tree", seed=config.seed)
    shown = [m for m in BUILT_INS if m != name] + [name]
    # the recipe first: one that raises (an unfinished stub) fails before the built-ins are sampled; every method
    # starts from the same noise, so the order changes no number
    result = bench.bench_dataset("tree", models, config, [name] + shown[:-1])
    return {m: result["methods"][m]["sweep"] for m in shown}


def score_design(sweeps: dict[str, list[dict]], name: str) -> tuple[float, str]:
    """(points, why) of recipe `name` against CFG's points in `sweeps` (design_sweep's dict)."""
    rows = sweeps[name]
    if not rows or any(r["outlier_fraction"] != r["outlier_fraction"] for r in rows):          # NaN: non-finite samples
        return 0.0, "the recipe did not produce finite samples at every weight"
    front = [(r["outlier_fraction"], r["recall"]) for r in sweeps["none"] + sweeps["cfg"]]
    points = [(r["outlier_fraction"], r["recall"]) for r in rows]
    best = max(points, key=lambda p: min(max(oq - p[0], p[1] - rq) for oq, rq in front))
    if any(beats(p, front, MARGIN) for p in points):
        return float(DESIGN_POINTS), (f"beats CFG by at least {MARGIN} at outliers {best[0]:.3f}, recall {best[1]:.3f}: "
                                      "full marks")
    if any(beats(p, front, -TIE) for p in points):
        return 2.0, (f"on CFG's front (best point: outliers {best[0]:.3f}, recall {best[1]:.3f}) but not beyond it by "
                     f"{MARGIN}: as good as CFG at some weight, not better. Look at where CFG's errors come from "
                     "(notebook 07) and change the update, not only its size")
    return 1.0, (f"runs, but every point is worse than some CFG point (best: outliers {best[0]:.3f}, recall "
                 f"{best[1]:.3f}): the method loses diversity or keeps outliers that CFG removes")


def check_guidance_design(name: str, config: bench.BenchConfig = DESIGN_CONFIG) -> float:
    """Run recipe `name` through the bench on the tree, print its points beside the built-ins' and the verdict, and
    return the score (0 .. DESIGN_POINTS; nbgrader takes a number a test cell shows as partial credit)."""
    sweeps = design_sweep(name, config)
    print(f"tree, class-averaged, {config.n} samples per weight (EDM Heun 32 steps, shared start noise)")
    print(f"{'method':22s} " + "  ".join(f"w={r['w']:<4g} outl. recall" for r in sweeps[name]))
    for method, rows in sweeps.items():
        cells = "  ".join(f"w={r['w']:<4g} {r['outlier_fraction']:5.3f} {r['recall']:6.3f}" for r in rows)
        print(f"{'> ' + method if method == name else method:22s} {cells}")
    score, why = score_design(sweeps, name)
    print(f"{name}: {score:g} / {DESIGN_POINTS} points: {why}")
    return score
