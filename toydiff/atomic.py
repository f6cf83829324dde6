"""Atomic file writes: a checkpoint is either the old file or the complete new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic"]


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to a temp file beside `path`, fsync it, os.replace it over `path` (atomic on POSIX),
    then fsync the directory so the rename itself survives a crash. The temp file is removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory; the file itself is already durable
        pass
    return path
