"""A memory-mapped `.npy` cache of (uint8 images [N, *item], int64 labels [N]) keyed by a fingerprint of its inputs.

The cache files are named `<prefix>_<key>_{images,labels}.npy`, where `key` fingerprints everything the content
depends on (for ImageNet-64: each source file's name, size and mtime, the resolution, num_classes), so a changed
input gives a new name and a rebuild, never the old images. Once a new version is written, the other versions
under the same `prefix` (same source root) are deleted. Writes are atomic (unique temp name, then os.replace),
so the local-rank-0 processes of several nodes may share one cache directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

__all__ = ["memmap_cache"]


def memmap_cache(cache_dir: Path, prefix: str, key: str, item_shape: tuple[int, ...], count: Callable[[], int],
                 parts: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray]:
    """(images memmap [N, *item_shape] uint8 read-only, labels [N] int64), built once from `parts()` (blocks of
    (images, labels), `count()` rows in all) and reused while `key` stays the same."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    img_path, lab_path = cache_dir / f"{prefix}_{key}_images.npy", cache_dir / f"{prefix}_{key}_labels.npy"
    if not (img_path.is_file() and lab_path.is_file()):
        tmp_img, tmp_lab = (p.parent / f".{p.name}.{os.getpid()}.tmp" for p in (img_path, lab_path))
        try:
            n = count()
            out = np.lib.format.open_memmap(tmp_img, mode="w+", dtype=np.uint8, shape=(n, *item_shape))
            labels = np.empty(n, dtype=np.int64)
            off = 0
            for imgs, labs in parts():
                out[off:off + len(imgs)], labels[off:off + len(imgs)] = imgs, labs
                off += len(imgs)
            if off != n:
                raise ValueError(f"{img_path}: the sources changed while the cache was built ({off} rows, not {n})")
            out.flush()
            del out
            with open(tmp_lab, "wb") as f:
                np.save(f, labels)
            os.replace(tmp_lab, lab_path)
            os.replace(tmp_img, img_path)
        finally:                                                   # a failed build leaves no temp files behind
            tmp_img.unlink(missing_ok=True)
            tmp_lab.unlink(missing_ok=True)
        for stale in cache_dir.glob(f"{prefix}_*.npy"):           # earlier versions from the same source
            if stale not in (img_path, lab_path):
                stale.unlink(missing_ok=True)
    try:
        images = np.load(img_path, mmap_mode="r")
        labels = np.load(lab_path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{img_path}: corrupt or truncated cache ({e}); delete it to rebuild") from e
    if images.shape[1:] != tuple(item_shape) or labels.shape != (images.shape[0],):
        raise ValueError(f"{img_path}: cache has shape {images.shape} / labels {labels.shape}, expected "
                         f"[N, {', '.join(map(str, item_shape))}] / [N]; delete it to rebuild")
    return images, labels
