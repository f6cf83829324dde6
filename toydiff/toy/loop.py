"""The one optimization loop of the toy trainers (toydiff.training.train, toydiff.classifier.train_classifier).

Each step t: the caller's `batch_loss(t)` (it draws its batch from its own seeded generator), a check that the loss
is finite before any update, Adam's learning rate lr_t = lr / sqrt(max(t / t_decay, 1)) (the inverse square-root
decay of Karras et al. 2024's toy), one optimizer step, the loss recorded, then the caller's `after_step(t)` (EMA,
checkpoints, stop signals), which returns True to end the loop after this step.

Every step allocates and frees ~20 MB of activations. glibc's malloc (Linux) returns the freed top of its heap to
the system and maps it again on the next step: ~300 page faults per step of the tree recipe, 7% of its CPU
(measured). `keep_heap` (called by `optimize`) raises its trim threshold so the process keeps that memory instead.
"""
from __future__ import annotations

import ctypes
import functools
import math
import sys
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["optimize", "diverged", "keep_heap"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3                  # mallopt parameters, <malloc.h>
HEAP_TRIM_BYTES, HEAP_MMAP_BYTES = 64 << 20, 32 << 20


def optimize(opt: torch.optim.Optimizer,
             losses: Tensor,
             batch_loss: Callable[[int], Tensor],
             *,
             steps: int,
             lr: float,
             lr_decay_steps: int,
             start: int = 0,
             after_step: Callable[[int], bool | None] | None = None,
             checkpoint: Any = None,
             progress: bool = True,
             desc: str = "train") -> None:
    """Steps start..steps-1 (module docstring); `losses` [steps] is filled in place. A non-finite loss raises
    FloatingPointError naming the step (`checkpoint`: the file that then stays as it was, or None)."""
    keep_heap()
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc=desc, leave=False)
    try:
        for step in bar:
            loss = batch_loss(step)
            if not torch.isfinite(loss):                         # before the update: no NaN weights, none saved
                diverged(f"loss {loss.item()}", step + 1, lr, checkpoint)
            for group in opt.param_groups:
                group["lr"] = lr / math.sqrt(max(step / lr_decay_steps, 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.detach()
            if progress and step % 64 == 0:
                bar.set_postfix(loss=f"{losses[step].item():.4f}")
            if after_step is not None and after_step(step):
                break
    finally:
        bar.close()


def diverged(what: str, step: int, lr: float, checkpoint: Any) -> None:
    """Raise FloatingPointError: training diverged (`what`) at `step`, and what was kept."""
    kept = f"the last checkpoint {checkpoint} is kept" if checkpoint else "nothing was saved"
    raise FloatingPointError(f"training diverged: {what} at step {step} (lr {lr:g}); {kept}, no weights with NaN or "
                             f"inf were written")


@functools.cache
def keep_heap() -> bool:
    """glibc only (elsewhere a no-op, False): the process keeps up to HEAP_TRIM_BYTES of freed heap instead of
    returning it to the system, and allocations below HEAP_MMAP_BYTES come from the heap (glibc's own ceilings for
    its adaptive thresholds, fixed from the start: the adaptive rule re-trimmed the heap every training step, see
    the module docstring). Process-wide and once per process; the numbers computed do not change."""
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    if libc is None or not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                         HEAP_TRIM_BYTES))
