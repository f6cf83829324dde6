"""Atomic file writes: a checkpoint is either the old file or the complete new one, never half of one."""
from __future__ import annotations

import errno
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["save_atomic", "atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success fsync it, os.replace it over `path` (atomic on POSIX)
    and fsync the directory so the rename itself survives a crash. The temp file is removed on any error, and a
    full disk is reported as OSError(ENOSPC) naming `path` and "no space left on device".

    The temp name keeps at most 100 characters of `path`'s name, so it stays under the 255-byte name limit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on device while writing {path} ({e.strerror})") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory; the file itself is already durable
        pass


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically (see atomic_path). The object is serialized in memory first and then
    written with plain file writes, so a full disk raises ENOSPC naming the path (torch's zip writer would report
    only "unexpected pos ...")."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())
    return Path(path)
