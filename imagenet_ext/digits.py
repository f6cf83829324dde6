"""The shipped digits model and the classifier that rates its samples.

`--ckpt digits` (or `load_denoiser("digits")`) loads `imagenet_ext/checkpoints/digits_tiny.pt`: the `tiny` UNet
trained on scikit-learn's real 8x8 digits resized to 16x16, with condition dropout p_uncond = 0.1 (Ho & Salimans
2022), by `RECIPE` (800 Adam steps of batch 32, about 3 minutes on one CPU thread). The file holds the EMA
weights only, stored as float16 (2.8 MB); `python scripts/make_digits_checkpoint.py --check` rebuilds it bit
for bit. The samples are rated by a logistic-regression classifier on the real digits: the fraction of samples
classified as the class they were asked for ("class accuracy") rises with the guidance weight w.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from toydiff.core.checkpoint import load_checkpoint, save_checkpoint

from .checkpoint import PRETRAINED, load_denoiser
from .data import load_digits
from .train import TrainConfig

__all__ = ["RECIPE", "recipe", "export_weights", "digits_classifier", "class_accuracy"]

# the TrainConfig of the shipped model (also the main model of benchmarks/digits_proof.py)
RECIPE: dict[str, Any] = dict(data="digits", resolution=16, config="tiny", steps=800, batch=32, lr=1e-3, warmup=50,
                              p_uncond=0.1, ema_kimg=2.0, seed=0, log_every=50, device="cpu", threads=1)


def recipe(out: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The training run of RECIPE (with `overrides`, e.g. steps=100, channels=16) writing to `out`; one checkpoint,
    at the end."""
    settings = {**RECIPE, **overrides}
    settings.setdefault("ckpt_every", settings["steps"])
    return TrainConfig(out=str(out), **settings)


def export_weights(ckpt: str | os.PathLike, out: str | os.PathLike = PRETRAINED["digits"]) -> Path:
    """Write the EMA weights of a training checkpoint, as float16, as a model file in toydiff's one format (what
    ships: the weights only, no EMA copy and no optimizer, as toydiff.core.checkpoint.save_checkpoint writes with
    ema = optimizer = None). float16 halves the file; the denoiser's outputs change by rounding only
    (tests/test_digits.py)."""
    ck = load_checkpoint(ckpt)
    model = load_denoiser(ck).half()
    config = {k: v for k, v in ck["config"].items() if k != "out"}    # the run directory is no part of the model
    save_checkpoint(out, model, None, None, ck["step"], config, model_config=ck["model_config"],
                    extra={"data": ck["data"]})
    return Path(out)


def digits_classifier(seed: int = 0) -> tuple[Any, float]:
    """Logistic regression on the real 16x16 digits (grayscale in [0, 1]): (model, held-out accuracy on a
    stratified quarter of the 1797 images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    d = load_digits(16, channels=1)
    x = d.images.flatten(1).float().numpy() / 255
    xtr, xte, ytr, yte = train_test_split(x, d.labels.numpy(), test_size=0.25, random_state=seed, stratify=d.labels)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(xtr, ytr)
    return clf, float(clf.score(xte, yte))


def class_accuracy(clf: Any, images: Tensor, labels: Tensor) -> float:
    """Fraction of uint8 images [N, C, 16, 16] that `clf` assigns to their requested labels [N]."""
    feats = images.float().mean(1).flatten(1).numpy() / 255            # grayscale, as the classifier was trained
    return float(np.mean(clf.predict(feats) == labels.numpy()))

