"""Class-labelled image datasets for imagenet_ext, all held as uint8 [N, C, H, W] plus int64 labels [N].

Sources (`load_dataset(spec, resolution)`):
  (a) downsampled ImageNet (Chrabaszcz et al. 2017): a directory with `train_data_batch_1..10` and/or
      `val_data` (python pickle or `.npz`), or one such file. `data` uint8 [N, 3*R*R] planar (all R, then G,
      then B), `labels` 1-based in [1, 1000]; stored here 0-based.
  (b) a folder of class subfolders of images (class index = sorted subfolder order), or a zip of PNGs with a
      `dataset.json` label list (EDM's dataset_tool layout: {"labels": [["path.png", label], ...]}). Needs Pillow.
  (c) `digits`: scikit-learn's real 8x8 handwritten digits (1797 images, 10 classes, no download), resized
      bilinearly to the requested resolution and replicated to 3 channels (`digits:1` keeps 1 channel).

Training maps uint8 to [-1, 1] with `to_float`. Bad files raise FileNotFoundError / ValueError naming the
file and what was expected (missing, truncated / corrupt, wrong size, labels out of range).
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from toydiff.infra.runs import fingerprint

from .cache import memmap_cache
from .image_files import ImageSet, load_folder, load_zip

__all__ = ["ImageSet", "load_dataset", "load_digits", "load_imagenet64", "load_imagenet64_file",
           "load_folder", "load_zip", "to_float", "IMAGENET_FILES"]

IMAGENET_FILES = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def _resize_uint8(x: Tensor, resolution: int) -> Tensor:
    # x float in [0, 1], [N, C, h, w] -> uint8 [N, C, R, R]; antialias when shrinking
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=bool(x.shape[-1] > resolution))
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def load_digits(resolution: int = 16, channels: int = 3) -> ImageSet:
    """scikit-learn's 8x8 digits (values 0..16) resized to `resolution` with bilinear interpolation, uint8."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # an optional dependency: the data ships inside scikit-learn
        raise ImportError('the "digits" dataset needs scikit-learn: python -m pip install -e ".[imagenet]"') from e

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 for digits, got {channels}")
    d = _sk_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0     # [1797, 1, 8, 8]
    x = _resize_uint8(x, resolution).expand(-1, channels, -1, -1).contiguous()
    return ImageSet(x, torch.as_tensor(d.target, dtype=torch.long), 10, name="digits")


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for the ImageNet-64 batch files (a dict of numpy arrays and lists): it builds numpy arrays and
    nothing else, so a damaged or hostile file cannot name another class (or run code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a pickle that needs {module}.{name}, which no ImageNet-64 file holds")


def _read_imagenet_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                if "data" not in z or "labels" not in z:
                    raise ValueError(f"{path}: expected arrays 'data' and 'labels' in the npz, found {sorted(z.files)}")
                return np.asarray(z["data"]), np.asarray(z["labels"])
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: corrupt or truncated ImageNet-64 file ({e})") from e
    except Exception as e:   # flipped bytes reach any corner of the unpickler: a module name, a dtype, a length
        raise ValueError(f"{path}: corrupt or truncated ImageNet-64 file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: expected a pickled dict with 'data' and 'labels'")
    labels = d["labels"]
    if isinstance(labels, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in labels):
        raise ValueError(f"{path}: 'labels' holds booleans; expected integer class numbers")
    return np.asarray(d["data"]), np.asarray(labels)


def _integer_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """Labels as int64, refusing float and bool ones (truncating 3.7 to 3, or reading True as class 1, would
    silently relabel images; the library's `as_cond` refuses float and bool labels the same way)."""
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be integers, got dtype {labels.dtype} (float and bool labels are "
                         f"refused, not truncated: cast them yourself if they are whole class numbers)")
    return labels.astype(np.int64)


def load_imagenet64_file(path: str | os.PathLike, resolution: int = 64, num_classes: int = 1000) -> ImageSet:
    """One downsampled-ImageNet file: `data` uint8 [N, 3*R*R] planar RGB, `labels` 1-based [N]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet-64 file not found: {path}")
    data, labels = _read_imagenet_raw(path)
    d = 3 * resolution * resolution
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != d:
        raise ValueError(f"{path}: 'data' must be uint8 [N, {d}] (3 x {resolution} x {resolution} planar RGB), "
                         f"got {data.dtype} {data.shape}")
    labels = _integer_labels(labels, path).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{path}: labels must be 1-based in [1, {num_classes}], got [{labels.min()}, {labels.max()}]")
    images = torch.from_numpy(data).reshape(-1, 3, resolution, resolution)    # planar: channel-major
    return ImageSet(images, torch.from_numpy(labels - 1), num_classes, name=str(path))


def _imagenet_files(root: Path, split: str) -> list[Path]:
    names = IMAGENET_FILES[:-1] if split == "train" else ["val_data"]
    found = []
    for n in names:
        hit = next((c for c in (root / n, root / f"{n}.npz") if c.is_file()), None)
        if hit is not None:
            found.append(hit)
    if not found:
        raise FileNotFoundError(f"no ImageNet-64 {split} files in {root}: expected {names[0]}[.npz]"
                                + (f" .. {names[-1]}[.npz]" if len(names) > 1 else ""))
    return found


def load_imagenet64(root: str | os.PathLike, resolution: int = 64, split: str = "train",
                    num_classes: int = 1000, cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """All `train_data_batch_*` (split='train') or `val_data` (split='val') files under `root`, .npz or pickle.

    Without `cache_dir` everything is loaded into memory (ImageNet-64 train is 15.7 GB of uint8, per process).
    With `cache_dir`, the files are converted once into `imagenet64_<split>_<R>_<root>_<key>_{images,labels}.npy`
    there (written atomically; `key` fingerprints the files' names, sizes and mtimes, so another root or changed
    files rebuild it) and memory-mapped, so the processes of a node share one copy in the page cache.
    """
    root = Path(root)
    files = _imagenet_files(root, split)
    if cache_dir is None:
        parts = [load_imagenet64_file(f, resolution, num_classes) for f in files]
        return ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), num_classes,
                        name=str(root))
    return _cached_imagenet64(root, files, resolution, split, num_classes, Path(cache_dir))


def _cached_imagenet64(root: Path, files: list[Path], resolution: int, split: str, num_classes: int,
                       cache: Path) -> ImageSet:
    """The memory-mapped cache (imagenet_ext.cache) of `files`, keyed by each file's name, size and mtime plus the
    resolution and num_classes, under a prefix naming the split, resolution and resolved root."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    prefix = f"imagenet64_{split}_{resolution}_{fingerprint(str(root.resolve()))}"

    def parts():
        for f in files:
            part = load_imagenet64_file(f, resolution, num_classes)
            yield part.images.numpy(), part.labels.numpy()

    images, labels = memmap_cache(cache, prefix, fingerprint(stats, resolution, num_classes), (3, resolution, resolution),
                                  lambda: sum(_read_imagenet_raw(f)[0].shape[0] for f in files), parts)
    with warnings.catch_warnings():                              # read-only memmap: torch warns about writes
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(images)
    return ImageSet(t, torch.from_numpy(labels), num_classes, name=str(root))


def load_dataset(spec: str, resolution: int, *, split: str = "train",
                 cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """`digits`, `digits:1` (one channel), an ImageNet-64 directory or file, an image folder, or a `.zip`.

    `cache_dir` memory-maps an ImageNet-64 directory through a one-time `.npy` conversion (see load_imagenet64).
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an int >= 1, got {resolution!r}")
    if spec in ("digits", "digits:3", "digits:1"):
        return load_digits(resolution, channels=1 if spec.endswith(":1") else 3)
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {spec!r} (expected 'digits', an ImageNet-64 directory or file, "
                                f"an image folder, or a .zip)")
    if p.is_file():
        if p.suffix.lower() == ".zip":
            return load_zip(p, resolution)
        return load_imagenet64_file(p, resolution)
    if any((p / n).is_file() or (p / f"{n}.npz").is_file() for n in IMAGENET_FILES):
        return load_imagenet64(p, resolution, split=split, cache_dir=cache_dir)
    return load_folder(p, resolution)
