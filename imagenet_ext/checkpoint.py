"""Finding and loading imagenet_ext checkpoints (written by imagenet_ext.train in toydiff.training's one format:
model_config = {"name": UNet config name, "overrides": {...}}, config = the run's TrainConfig as a dict)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from toydiff.training import load_checkpoint

from .unet import EDMDenoiser, build

__all__ = ["latest_checkpoint", "load_denoiser"]

_CKPT_RE = re.compile(r"ckpt-(\d+)\.pt$")


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
    """The trained denoiser (EMA weights by default) of a checkpoint, in eval mode (errors: toydiff.training's
    `load_checkpoint`; ValueError if it holds no UNet)."""
    ck = load_checkpoint(path, map_location)
    cfg = ck["model_config"]
    if ck["model_class"] != EDMDenoiser.__name__ or not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"{path} holds a {ck['model_class']}, not an imagenet_ext UNet (EDMDenoiser)")
    model = build(cfg["name"], **cfg.get("overrides", {}))
    model.load_state_dict(ck["ema"] if ema else ck["model"])
    return model.eval().requires_grad_(False)
