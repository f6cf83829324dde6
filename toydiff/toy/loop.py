"""The one optimization loop of the toy trainers (toydiff.training.train, toydiff.classifier.train_classifier).

Each step t: the caller's `batch_loss(t)` (it draws its batch from its own seeded generator), a check that the loss
is finite before any update, Adam's learning rate lr_t = lr / sqrt(max(t / t_decay, 1)) (the inverse square-root
decay of Karras et al. 2024's toy), one optimizer step, the loss recorded, then the caller's `after_step(t)` (EMA,
checkpoints, stop signals), which returns True to end the loop after this step.

Every step allocates and frees ~20 MB of activations. glibc's malloc (Linux) returned the freed top of its heap to
the system and mapped it again on the next step: 300-500 page faults per step of the tree recipe, ~7% of its CPU
(measured); `optimize` has the process keep freed memory (toydiff.infra.allocator; numbers unchanged).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..infra.allocator import keep_freed_memory

__all__ = ["optimize", "diverged"]


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
    keep_freed_memory()                             # no page faults for each step's activations
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
