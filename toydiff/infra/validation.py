"""Argument checks shared by every module that takes the denoiser contract's (x, sigma, cond).

Each check raises a ValueError/TypeError that names the argument and says what was expected, so bad
input fails loudly at the boundary instead of turning into NaN three functions later.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_batch",
    "check_points",
    "as_sigma",
    "sigma_like",
    "as_cond",
    "label_index",
    "check_nonnegative",
    "check_positive_int",
    "check_seed",
    "check_on_device",
    "check_real",
    "check_device",
]

SEED_MAX = 2 ** 63 - 1  # seeds feed torch.Generator.manual_seed (< 2**64) and numpy, with seed + 1, seed + 2 derived


def check_on_device(x: Tensor, name: str) -> Tensor:
    """Refuse tensors without data (the meta device), which would fail later in .item() with torch's own words."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shape only, no data); move it to cpu or cuda first")
    return x


def check_batch(x: Any, name: str = "x") -> Tensor:
    """A floating tensor [N, ...] with N >= 1 and finite entries."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, ...], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    check_on_device(x, name)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, ...] with N >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_points(x: Any, dim: int = 2, name: str = "x") -> Tensor:
    """A floating tensor [N, dim] of finite points."""
    x = check_batch(x, name)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape [N, {dim}], got {tuple(x.shape)}")
    return x


def as_sigma(sigma: Any, n: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float64,
             name: str = "sigma") -> Tensor:
    """Noise levels as a tensor [n]: a float, a 0-d tensor, or a tensor broadcastable to [n]; finite and >= 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (Real, Tensor)):   # Real: int, float, numpy scalars
        raise TypeError(f"{name} must be a float or a tensor broadcastable to [N], got {type(sigma).__name__}")
    if isinstance(sigma, Tensor):
        check_on_device(sigma, name)
    else:
        sigma = float(sigma)
    s = torch.as_tensor(sigma, dtype=dtype, device=device)
    # accept a scalar, [N] or [N, 1, ..., 1] (the image convention); anything else is ambiguous
    if s.numel() == 1:
        s = s.reshape(1)
    elif s.numel() != n or s.ndim == 0 or s.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or have shape [{n}], got {tuple(s.shape)}")
    s = s.reshape(-1)
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if (s < 0).any():
        raise ValueError(f"{name} must be >= 0, got a minimum of {s.min().item():g}")
    return s.expand(n)


def sigma_like(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshape sigma [N] to [N, 1, ..., 1] so it broadcasts against x [N, ...]."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def as_cond(cond: Any, n: int, num_classes: int | None, *, device: torch.device | None = None,
            name: str = "cond") -> Tensor | None:
    """Class labels as int64 [n] in [-1, num_classes) (-1 = no condition), or None for an unconditional batch.

    An int is broadcast to the batch. Float or bool tensors are refused rather than silently cast.
    """
    if cond is None:
        return None
    if isinstance(cond, bool):
        raise TypeError(f"{name} must be an int64 tensor [N] or None, got bool")
    if isinstance(cond, Integral):                                           # int or numpy integer
        cond = torch.full((n,), int(cond), dtype=torch.long, device=device)
    if not isinstance(cond, Tensor):
        raise TypeError(f"{name} must be an int64 tensor [N] or None, got {type(cond).__name__}")
    check_on_device(cond, name)
    if cond.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor of class labels, got dtype {cond.dtype}")
    cond = cond.to(torch.long)
    if cond.ndim == 0:
        cond = cond.expand(n)
    if cond.ndim != 1 or cond.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(cond.shape)}")
    if cond.numel() and ((cond < -1).any() or (num_classes is not None and (cond >= num_classes).any())):
        hi = "num_classes - 1" if num_classes is None else str(num_classes - 1)
        raise ValueError(f"{name} labels must lie in [-1, {hi}] (-1 = no condition), got "
                         f"min {cond.min().item()} max {cond.max().item()}")
    return cond


def label_index(cond: Any, n: int, num_classes: int, *, device: torch.device | None = None) -> Tensor:
    """Validated labels as embedding rows int64 [n]: a class c -> c, the null label (-1 or None) -> num_classes."""
    c = as_cond(cond, n, num_classes, device=device)
    if c is None:
        return torch.full((n,), num_classes, dtype=torch.long, device=device)
    return torch.where(c < 0, torch.full_like(c, num_classes), c)


def check_nonnegative(w: Any, name: str, *, allow_inf: bool = False) -> float:
    """A finite (or +inf where `allow_inf`), non-negative real number (a guidance weight, a sigma, a scale): int,
    float, numpy scalar or one-element tensor, named `name` in the error."""
    if isinstance(w, bool) or not isinstance(w, Real) and not (isinstance(w, Tensor) and w.numel() == 1):
        raise TypeError(f"{name} must be a real number, got {type(w).__name__}")
    if isinstance(w, Tensor):
        check_on_device(w, name)
    w = float(w)
    if math.isnan(w) or math.isinf(w) and not (allow_inf and w > 0):
        raise ValueError(f"{name} must be finite, got {w}")
    if w < 0:
        raise ValueError(f"{name} must be >= 0, got {w}")
    return w


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """An int >= `minimum` (default 1; numpy ints accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seed(seed: Any, name: str = "seed") -> int:
    """A random seed: an int in [0, 2**63 - 1] (torch generators take < 2**64; seed + 1, seed + 2 must fit too)."""
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must lie in [0, 2**63 - 1], got {seed}")
    return seed


def check_real(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False) -> float:
    """A finite real number (int, float or numpy scalar) in [lo, hi] (or (lo, hi] with `lo_open`)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not lo <= value <= hi \
            or (lo_open and value == lo):
        raise ValueError(f"{name} must be a finite number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    return float(value)


def check_device(device: Any, name: str = "device") -> torch.device:
    """A torch device that exists on this machine: "cpu", "cuda", "cuda:N" or "mps"."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {device!r} is not a device (expected cpu, cuda, cuda:N or mps)") from None
    ok = {"cpu": lambda: True, "cuda": lambda: torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
          "mps": lambda: torch.backends.mps.is_available()}.get(dev.type, lambda: False)()
    if not ok:
        why = {"cuda": "CUDA is not available on this machine" if not torch.cuda.is_available() else
               f"this machine has {torch.cuda.device_count()} CUDA device(s)",
               "mps": "MPS is not available on this machine"}.get(dev.type, "not available on this machine")
        raise ValueError(f"{name} {str(device)!r}: {why}")
    return dev
