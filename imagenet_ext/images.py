"""uint8 conversion, decoding (Pillow) and labelled image grids (drawn with matplotlib, so no Pillow is needed to save)."""
from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "decode_image", "make_grid", "labelled_grid"]


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] [N, C, H, W] -> uint8 [N, C, H, W] (clipped, rounded)."""
    return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def decode_image(raw: bytes, name: str, resolution: int) -> Tensor:
    """Encoded image bytes -> uint8 RGB [3, R, R]: center-cropped to a square, resized (bicubic up, box down)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover
        raise ImportError("reading image folders / zips needs Pillow: pip install pillow") from e
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except Exception as e:
        raise ValueError(f"{name}: not a readable image ({e})") from e
    # 16-bit grey (PNG's I;16, or I from older Pillow): PIL's convert("RGB") clips to 255, so map 0..65535 to
    # 0..255 here (v / 257, rounded: 65535 -> 255 exactly). Other wide modes (32-bit int, float) have no range.
    if img.mode.startswith("I;16") or img.mode == "I" and img.format == "PNG":
        img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    elif img.mode in ("I", "F"):
        raise ValueError(f"{name}: {img.mode!r} images (32-bit int / float) have no defined 0..255 range; "
                         f"convert them to 8- or 16-bit first")
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)                                          # ADM: center crop to a square, then resize
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != resolution:
        img = img.resize((resolution, resolution), Image.BICUBIC if s < resolution else Image.BOX)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


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
