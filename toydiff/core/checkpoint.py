"""The one checkpoint format of toydiff.training and imagenet_ext.train: a dict marked
{"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION} holding plain data and tensors, written atomically
(toydiff.atomic) and read back only by `load_checkpoint` with torch.load(weights_only=True).

A checkpoint says what it is: `meta` = {"role", "dataset", "architecture", "recipe"} (whatever of these the writer
knows), so a loader can refuse the wrong file (`expect`). Two kinds share the format: a training checkpoint (model,
EMA, optimizer, RNG state: resumable) and a model file (the weights to use under "model", no EMA or optimizer:
what ships). A resume asks for `resumable=True`, which refuses a model file."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import Tensor

from ..infra.atomic import save_atomic
from ..infra.validation import check_device

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "toydiff-checkpoint"
CHECKPOINT_VERSION = 2                      # 2: `meta`; "ema", "optimizer" and "config" may be None (a model file)
_REQUIRED = ("model_class", "model_config", "model", "step")
_RESUMABLE = ("ema", "optimizer", "config")


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, step: int, config: dict | None, *, rng_state: Any = None,
                    losses: Tensor | None = None, model_config: dict | None = None, meta: Mapping | None = None,
                    extra: dict | None = None) -> None:
    """Write a checkpoint atomically (a temp file in the same directory, fsync, then os.replace) in the one format:
    {format, version, model_class, model_config (constructor arguments; default `model.config`), model, ema
    (state dicts), optimizer, step, config (training settings), rng, losses, meta, **extra}. ema = optimizer = None
    writes a model file (the weights of `model` only). Plain data and tensors only, so `load_checkpoint` reads it
    with weights_only=True."""
    payload = dict(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, model_class=type(model).__name__,
                   model_config=dict(model.config if model_config is None else model_config),
                   model=model.state_dict(), ema=None if ema is None else ema.state_dict(),
                   optimizer=None if optimizer is None else optimizer.state_dict(), step=int(step),
                   config=None if config is None else dict(config), rng=rng_state, losses=losses,
                   meta=dict(meta or {}), **(extra or {}))
    save_atomic(payload, path)


def _reason(e: Exception) -> str:
    """torch.load's error without its advice to load with weights_only=False (never for an untrusted file)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    specific = [line for line in lines if line.startswith("WeightsUnpickler error")]
    return (specific or lines or [type(e).__name__])[0].split(" Please use ")[0]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, resumable: bool = False,
                    expect: Mapping[str, Any] | None = None) -> dict:
    """Read a checkpoint dict (torch.load with weights_only=True). FileNotFoundError if missing; ValueError if a
    directory, corrupt or truncated, not in the toydiff format, of a newer version, incomplete, a model file where
    `resumable` asks for a training checkpoint, or if its `meta` differs from `expect` (e.g. {"role": "tree_main"}:
    one line naming the file and both values); ValueError if map_location asks for CUDA that is not there."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location, "map_location")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, unpickling errors all land here
        raise ValueError(f"checkpoint {path} is corrupt or truncated (torch.load failed: {_reason(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a toydiff checkpoint (no format={CHECKPOINT_FORMAT!r} marker)")
    if not isinstance(ck.get("version"), int) or ck["version"] > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {ck.get('version')!r}; this toydiff reads "
                         f"versions <= {CHECKPOINT_VERSION}")
    missing = set(_REQUIRED) - ck.keys()
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {sorted(missing)}")
    ck.setdefault("meta", {})
    if resumable and any(ck.get(k) is None for k in _RESUMABLE):
        raise ValueError(f"checkpoint {path} is a model file (weights only, no "
                         f"{'/'.join(k for k in _RESUMABLE if ck.get(k) is None)}): a run cannot resume from it")
    for key, want in (expect or {}).items():
        if ck["meta"].get(key) != want:
            raise ValueError(f"checkpoint {path} holds {key} {ck['meta'].get(key)!r}, not {want!r}")
    return ck
