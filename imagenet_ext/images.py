"""uint8 conversion and labelled image grids (drawn with matplotlib, so no Pillow is needed to save)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "make_grid", "labelled_grid"]


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


def labelled_grid(blocks: Sequence[Tensor], row_labels: Sequence[str], block_titles: Sequence[str], title: str = "",
                  path: str | os.PathLike | None = None):
    """A matplotlib figure of image blocks side by side: block b is uint8 [rows, cols, C, H, W] (e.g. the samples of
    one guidance weight, one row per class), titled `block_titles[b]`, rows labelled by `row_labels` on the left.
    Written as a 150 dpi PNG when `path` is given; returns the figure."""
    import matplotlib.pyplot as plt

    if not blocks or len(blocks) != len(block_titles):
        raise ValueError(f"need one title per block, got {len(blocks)} blocks and {len(block_titles)} titles")
    rows, cols, _, h, w = blocks[0].shape
    if len(row_labels) != rows:
        raise ValueError(f"need one label per row: {rows} rows, {len(row_labels)} labels")
    cell = 0.24 * max(1.0, h / 32)                                  # inches per image: 36 px at 150 dpi up to 32 px
    width = 0.5 + len(blocks) * max(cols * cell * 1.05, 1.25)
    fig, axes = plt.subplots(1, len(blocks), figsize=(width, 1.0 + rows * cell), layout="constrained", dpi=150,
                             squeeze=False)
    for ax, block, name in zip(axes[0], blocks, block_titles):
        ax.imshow(make_grid(block), interpolation="nearest")
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([1 + i * (h + 1) + (h - 1) / 2 for i in range(rows)], row_labels if ax is axes[0, 0] else [],
                      fontsize=7)
        ax.tick_params(length=0)
    if title:
        fig.suptitle(textwrap.fill(title, int(width * 13)), fontsize=9)    # ~13 characters per inch at 9 pt
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig
