"""The one checkpoint format of toydiff.training and imagenet_ext.train: a dict marked
{"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION} holding plain data and tensors, written atomically
(toydiff.atomic) and read back only by `load_checkpoint` with torch.load(weights_only=True)."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ..infra.atomic import save_atomic

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "toydiff-checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("model_class", "model_config", "model", "ema", "optimizer", "step", "config")


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, step: int, config: dict, *, rng_state: Any = None,
                    losses: Tensor | None = None, model_config: dict | None = None, extra: dict | None = None) -> None:
    """Write a checkpoint atomically (a temp file in the same directory, fsync, then os.replace) in the one format:
    {format, version, model_class, model_config (constructor arguments; default `model.config`), model, ema
    (state dicts), optimizer, step, config (training settings), rng, losses, **extra}. Plain data and tensors only,
    so `load_checkpoint` reads it with weights_only=True."""
    payload = dict(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, model_class=type(model).__name__,
                   model_config=dict(model.config if model_config is None else model_config),
                   model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(), step=int(step),
                   config=dict(config), rng=rng_state, losses=losses, **(extra or {}))
    save_atomic(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint dict (torch.load with weights_only=True): FileNotFoundError if missing; ValueError if
    corrupt or truncated, not in the toydiff format, of a newer version, or incomplete."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, unpickling errors all land here
        raise ValueError(f"checkpoint {path} is corrupt or truncated (torch.load failed: {e})") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a toydiff checkpoint (no format={CHECKPOINT_FORMAT!r} marker)")
    if not isinstance(ck.get("version"), int) or ck["version"] > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {ck.get('version')!r}; this toydiff reads "
                         f"versions <= {CHECKPOINT_VERSION}")
    missing = set(_REQUIRED) - ck.keys()
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {sorted(missing)}")
    return ck
