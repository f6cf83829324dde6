"""uint8 conversion and image grids (written with matplotlib, so no Pillow is needed to save)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "make_grid", "save_png"]


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] [N, C, H, W] -> uint8 [N, C, H, W] (clipped, rounded)."""
    return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: Tensor, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """uint8 [rows, cols, C, H, W] -> an RGB uint8 array [rows*(H+pad)+pad, cols*(W+pad)+pad, 3]."""
    if images.ndim != 5 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [rows, cols, C, H, W], got {images.dtype} {tuple(images.shape)}")
    r, c, ch, h, w = images.shape
    if ch == 1:
        images = images.expand(-1, -1, 3, -1, -1)
    elif ch != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {ch}")
    grid = np.full((r * (h + pad) + pad, c * (w + pad) + pad, 3), pad_value, dtype=np.uint8)
    arr = images.permute(0, 1, 3, 4, 2).cpu().numpy()          # [r, c, H, W, 3]
    for i in range(r):
        for j in range(c):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = arr[i, j]
    return grid


def save_png(path: str | os.PathLike, grid: np.ndarray, scale: int = 1) -> Path:
    """Save an RGB uint8 array as PNG (nearest-neighbour upscaled by `scale`)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    plt.imsave(path, grid)
    return path
