"""`ImageSet`, what every imagenet_ext data source returns, and the two sources made of encoded image files (decoded
with Pillow, `images.decode_image`): a folder of class subfolders, and a zip with EDM's dataset_tool label list
(`dataset.json`). `imagenet_ext.data.load_dataset` picks the source; both loaders are re-exported there.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .images import decode_image

__all__ = ["ImageSet", "load_folder", "load_zip", "IMAGE_EXTS"]

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """images uint8 [N, C, H, W]; labels int64 [N] in [0, num_classes)."""
    images: Tensor
    labels: Tensor
    num_classes: int
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for {self.images.shape[0]} images")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes - 1}], got "
                             f"[{self.labels.min().item()}, {self.labels.max().item()}]")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]


def load_folder(root: str | os.PathLike, resolution: int) -> ImageSet:
    """root/<class>/<image>: class index = position of the subfolder name in sorted order. Hidden entries
    (names starting with ".", such as .ipynb_checkpoints and macOS's `._name.png` resource forks) and the
    `__MACOSX` folder of an unzipped macOS archive are neither classes nor images."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name != "__MACOSX")
    if not classes:
        raise ValueError(f"{root}: expected one subfolder per class, found none")
    imgs, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."):
                imgs.append(decode_image(f.read_bytes(), str(f), resolution))
                labels.append(k)
    if not imgs:
        raise ValueError(f"{root}: no images ({sorted(IMAGE_EXTS)}) in the class subfolders")
    return ImageSet(torch.stack(imgs), torch.tensor(labels, dtype=torch.long), len(classes), name=str(root))


def load_zip(path: str | os.PathLike, resolution: int, num_classes: int | None = None) -> ImageSet:
    """A zip of images plus `dataset.json`: {"labels": [["name.png", label], ...]} (or {"name.png": label})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zip dataset not found: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: corrupt or truncated zip ({e})") from e
    with zf:
        if "dataset.json" not in zf.namelist():
            raise ValueError(f"{path}: missing dataset.json with the label list")
        try:
            meta = json.loads(zf.read("dataset.json"))
        except (json.JSONDecodeError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: dataset.json is not valid JSON ({e})") from e
        entries = meta.get("labels") if isinstance(meta, dict) and "labels" in meta else meta
        if isinstance(entries, dict):
            entries = sorted(entries.items())
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: dataset.json must hold a non-empty list of [filename, label]")
        imgs, labels, seen = [], [], set()
        for item in entries:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], int)
                    and not isinstance(item[1], bool) and 0 <= item[1] < 2 ** 31):   # JSON true/false: no labels
                raise ValueError(f"{path}: dataset.json entries must be [filename, int label >= 0], got {item!r}")
            name, lab = item
            if name in seen:
                raise ValueError(f"{path}: dataset.json lists {name!r} twice")
            seen.add(name)
            try:
                raw = zf.read(name)
            except KeyError:
                raise ValueError(f"{path}: dataset.json names {name!r}, which is not in the zip") from None
            except zipfile.BadZipFile as e:
                raise ValueError(f"{path}: corrupt member {name!r} ({e})") from e
            imgs.append(decode_image(raw, f"{path}:{name}", resolution))
            labels.append(lab)
    labels_t = torch.tensor(labels, dtype=torch.long)
    k = int(labels_t.max()) + 1 if num_classes is None else num_classes
    if labels_t.min() < 0 or labels_t.max() >= k:
        raise ValueError(f"{path}: labels must lie in [0, {k - 1}], got [{labels_t.min().item()}, {labels_t.max().item()}]")
    return ImageSet(torch.stack(imgs), labels_t, k, name=str(path))
