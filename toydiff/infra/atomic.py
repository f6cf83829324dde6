"""Atomic file writes: a checkpoint is either the old file or the complete new one, never half of one."""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

__all__ = ["save_atomic", "atomic_path", "naming_full_disk"]


@contextmanager
def naming_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full disk (ENOSPC, EDQUOT) inside the block as OSError of the same errno naming `path` and
    "no space left on device"; any other error passes unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on device while writing {path} ({e.strerror})") from e
        raise


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
        with naming_full_disk(path):
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
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


class _Recorder:
    """A file wrapper that remembers the OSError of a write: torch's zip writer turns it into a RuntimeError
    "unexpected pos ...", which names neither the file nor the cause."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically (see atomic_path); a full disk raises OSError(ENOSPC) naming the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _Recorder(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None                  # atomic_path adds the path and "no space left"
            raise
    return Path(path)
