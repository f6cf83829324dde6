"""Finding and loading imagenet_ext checkpoints (written by imagenet_ext.train in toydiff.training's one format:
model_config = {"name": UNet config name, "overrides": {...}}, config = the run's TrainConfig as a dict)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toydiff.infra.runs import numbered_checkpoints
from toydiff.core.checkpoint import load_checkpoint

from .unet import EDMDenoiser, build

__all__ = ["PRETRAINED", "resolve", "latest_checkpoint", "load_denoiser"]

# shipped models, loadable by name wherever a checkpoint path is taken (see imagenet_ext/digits.py)
PRETRAINED = {"digits": Path(__file__).with_name("checkpoints") / "digits_tiny.pt"}


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint path, or the shipped file of a name in PRETRAINED (`"digits"`) when no file of that name
    exists; FileNotFoundError (naming the shipped models) when neither does."""
    p = Path(path)
    if not p.exists() and isinstance(path, str) and path in PRETRAINED:
        p = PRETRAINED[path]
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a file or a shipped model: {sorted(PRETRAINED)})")
    return p


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The `ckpt-<step>.pt` with the largest step in run_dir (toydiff.runs.numbered_checkpoints, the scan that
    --keep prunes by), or None."""
    found = numbered_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_denoiser(path: str | os.PathLike | dict[str, Any], *, ema: bool = True, map_location: Any = "cpu",
                  name: str | os.PathLike | None = None) -> EDMDenoiser:
    """The trained denoiser (EMA weights by default; a model file's weights) of a checkpoint, a shipped model name
    (`resolve`) or an already loaded checkpoint dict (`name`: its file, for messages), in eval mode, float32
    (errors: `resolve`, toydiff.training's `load_checkpoint`; ValueError naming the file if it holds no UNet)."""
    ck = path if isinstance(path, dict) else load_checkpoint(resolve(path), map_location)
    name = name if name is not None else "the checkpoint" if isinstance(path, dict) else path
    cfg = ck["model_config"]
    if ck["model_class"] != EDMDenoiser.__name__ or not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"{name} holds a {ck['model_class']}, not an imagenet_ext UNet (EDMDenoiser)")
    model = build(cfg["name"], **cfg.get("overrides", {}))
    model.load_state_dict(ck["ema"] if ema and ck["ema"] is not None else ck["model"])
    return model.eval().requires_grad_(False)
