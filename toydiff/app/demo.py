"""`toydiff demo`: the models (shipped or retrained), the four reproductions as PNGs, metrics.json and a table."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt

from .figures import FIGURES, format_table, reproduce
from ..toy.metrics import describe
from .plot import save
from ..core.guidance import CFG_INTERVAL
from ..toy.training import torch_threads
from ..toy.zoo import SIGMA_MAX, STEPS, WEIGHTS, pretrained, train_models

__all__ = ["demo"]


def demo(out: str | os.PathLike = "toydiff-demo", *, retrain: bool = False, fast: bool = False, seed: int = 0,
         progress: bool = True, log: Callable[[str], None] = print, models_dir: str | os.PathLike | None = None
         ) -> dict[str, Any]:
    """Everything `toydiff demo` does: models (shipped, retrained into `out`/models, or those `toydiff train --out
    DIR` wrote to `models_dir`; an interrupted retraining continues, and a finished one is kept, on the next call), the four reproductions as 150-dpi PNGs in `out`, metrics.json ({"methods": {none, cfg, cfg_dropout,
    score_scaling, autoguidance}, "sweep", "degradation", ...}; floats to 4 significant digits) and the tables with
    the definitions of their metrics. `fast`: the fast sizes of figures.FIGURES (for tests). Runs on one torch
    thread (`training.torch_threads`)."""
    with torch_threads(1):
        return _demo(Path(out), retrain, fast, seed, progress, log, models_dir)


def _rounded(obj: Any, digits: int = 4) -> Any:
    """obj with every float rounded to `digits` significant digits (for a readable metrics.json)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def _demo(out: Path, retrain: bool, fast: bool, seed: int, progress: bool, log: Callable[[str], None],
          models_dir: str | os.PathLike | None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    n = FIGURES["tree"]["fast" if fast else "full"]["n"]
    t0 = time.perf_counter()
    models = (train_models(seed, progress, directory=out / "models", resume=True) if retrain
              else pretrained(False, seed, progress, directory=models_dir))
    timing = {"models": time.perf_counter() - t0}
    report: dict[str, Any] = {"settings": dict(n=n, seed=seed, fast=fast, retrain=retrain, steps=STEPS,
                                               sigma_max=SIGMA_MAX, weights=WEIGHTS, cfg_interval=CFG_INTERVAL)}
    for name in FIGURES:
        t = time.perf_counter()
        fig, numbers = reproduce(name, models, fast=fast, seed=seed)
        save(fig, out / f"{name}.png")
        plt.close(fig)
        report["methods" if name == "tree" else name] = numbers
        timing[name] = time.perf_counter() - t
        log(f"[{timing[name]:5.1f} s] wrote {out / (name + '.png')}")
    report["true_samples"] = report["methods"].pop("true")
    timing["total"] = time.perf_counter() - t0
    report["timing_s"] = timing
    with open(out / "metrics.json", "w") as f:
        json.dump(_rounded(report), f, indent=1)
    log("\nclass A of tree(), " + f"{n} samples per method (EDM Heun {STEPS} steps); w = 1 is no guidance\n"
        + format_table({"true samples": report["true_samples"], **{f"{k} (w={v['w']:g})": v
                                                                   for k, v in report["methods"].items()}}))
    log("\nweight sweep (w = 1: unguided):\n" + format_table(
        {f"{method} w={w}": m for method, rows in report["sweep"].items() for w, m in rows.items()},
        keys=("outlier_fraction", "precision", "recall", "class_accuracy")))
    log("\ndegradation study:\n" + format_table(report["degradation"], keys=("outlier_fraction", "precision", "recall")))
    log("\nthe metrics (class A of tree(), against as many true samples):\n" + describe())
    log(f"\nwrote {out / 'metrics.json'} in {timing['total']:.1f} s")
    return report
