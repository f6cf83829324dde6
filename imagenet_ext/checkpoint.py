"""Atomic checkpoints for imagenet_ext training, and loading a trained denoiser back.

A checkpoint is a dict saved with torch.save: {"step", "config" (UNet name and overrides), "model",
"ema", "optimizer", "rng", "args", "data"}. It is written to a temp file in the same directory, fsynced,
then renamed over the target (os.replace is atomic on POSIX), so a crash never leaves a half-written file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from toydiff.atomic import save_atomic

from .unet import EDMDenoiser, build

__all__ = ["save_atomic", "load_checkpoint", "latest_checkpoint", "load_denoiser"]

_CKPT_RE = re.compile(r"ckpt-(\d+)\.pt$")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a training checkpoint; clear errors for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from e
    missing = [k for k in ("step", "config", "model") if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ValueError(f"{path}: not an imagenet_ext checkpoint (missing {missing})")
    return ck


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The `ckpt-<step>.pt` with the largest step in run_dir, or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    best = None
    for p in run_dir.iterdir():
        m = _CKPT_RE.search(p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return None if best is None else best[1]


def load_denoiser(path: str | os.PathLike, *, ema: bool = True, map_location: Any = "cpu") -> EDMDenoiser:
    """The trained denoiser (EMA weights by default) of a checkpoint, in eval mode."""
    ck = load_checkpoint(path, map_location)
    cfg = ck["config"]
    model = build(cfg["name"], **cfg.get("overrides", {}))
    state = ck["ema"] if ema and ck.get("ema") is not None else ck["model"]
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
