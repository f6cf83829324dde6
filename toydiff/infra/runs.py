"""Training runs own their output (shared by toydiff.training.train and imagenet_ext.train).

  * `RunLock`: an exclusive lock on a checkpoint path or run directory, so a second run on the same output
    refuses to start (OutputInUse, naming the path and the holder) instead of overwriting or pruning the first
    run's checkpoints. An flock, so a killed run leaves no stale lock: the kernel releases it with the process;
    the lock file itself is removed on release (also after SIGTERM/SIGINT), and one left by a SIGKILL is only
    text: it never blocks the next run. Whoever takes the lock removes the temp files a killed writer left
    (toydiff.atomic's `.<name>.<random>.tmp`): no live writer can own them then.
  * `numbered_checkpoints` / `prune_checkpoints`: `ckpt-<step>.pt` ordered by step NUMBER (text order puts
    ckpt-10000000.pt before ckpt-9999998.pt and would delete the newest).
  * `StopSignals`: SIGTERM / SIGINT set a flag that the training loop polls once per step; the loop writes a
    checkpoint and then `stop.exit()` re-delivers the signal (SIGINT -> KeyboardInterrupt, SIGTERM -> the
    process ends), so no step is lost. A second signal acts at once.
  * `check_resume`: the settings a checkpoint was trained with must equal this run's, the differing key named,
    unless the caller passes an explicit override.
  * `truncate_log` / `append_jsonl`: a resumed run drops the JSONL records after the checkpoint's step, so none
    repeats; a full disk names the log.
  * `fingerprint`: a short hash of a run's inputs (data bytes, file names/sizes/mtimes) to key caches and resumes.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Mapping

from .atomic import atomic_path, naming_full_disk

__all__ = ["OutputInUse", "RunLock", "remove_stale_temps", "numbered_checkpoints", "prune_checkpoints", "StopSignals", "check_resume",
           "truncate_log", "append_jsonl", "fingerprint"]

_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")                # tempfile.mkstemp's 8 random characters


class OutputInUse(FileExistsError):
    """Another live run holds the lock on this output."""


class RunLock:
    """Exclusive lock on `path` (a run directory: `path/.lock`; a file: `.<name>.lock` beside it), held from
    `acquire()` (or `with`) to `release()`. The lock file records the holder (pid, host, start time) for the
    error message and is removed on release; a killed holder's flock is released by the kernel."""

    def __init__(self, path: str | os.PathLike, *, directory: bool, name: str = "output") -> None:
        path = Path(path)
        self.target, self.name = path, name
        self.file = path / ".lock" if directory else path.with_name(f".{path.name[:200]}.lock")
        self.directory, self.fd, self.stale = directory, None, []        # stale: the temp files acquire() removed

    def acquire(self) -> "RunLock":
        self.file.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputInUse(f"{self.name} {self.target} is in use by another run ({holder}); wait for it to "
                                  f"finish or write elsewhere") from None
            try:                                  # the file we locked may have been unlinked by a releasing holder
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
        self.fd = fd
        self.stale = remove_stale_temps(self.target if self.directory else self.target.parent,
                                        None if self.directory else self.target.name)
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.file.unlink(missing_ok=True)     # unlink while holding: a waiter re-checks the inode (above)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def remove_stale_temps(directory: Path, name: str | None = None) -> list[Path]:
    """Delete the temp files toydiff.atomic.atomic_path left in `directory` (all, or those of the file `name`)
    when its writer was killed; call it only while holding the RunLock that every writer there holds."""
    if not directory.is_dir():
        return []
    prefix = "." if name is None else f".{name[:100]}."
    stale = [p for p in directory.iterdir() if p.name.startswith(prefix) and _TEMP_RE.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def numbered_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """The `ckpt-<step>.pt` files of `directory` as (step, path), ascending by step number."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = ((_CKPT_RE.match(p.name), p) for p in directory.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` highest-step checkpoints (keep = 0: delete none); returns the deleted paths."""
    if keep <= 0:
        return []
    old = [p for _, p in numbered_checkpoints(directory)[:-keep]]
    for p in old:
        p.unlink(missing_ok=True)
    return old


class StopSignals:
    """While active (`with`), SIGTERM and SIGINT only set `signum`; poll `requested` once per step, write a
    checkpoint, then call `exit()`. Handlers are installed only in the main thread (signals are delivered
    there); elsewhere this is inert. Previous handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:                # a second signal: stop now, as without this handler
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved = {}

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def exit(self) -> None:
        """Re-deliver the caught signal with the previous handlers: KeyboardInterrupt for SIGINT, the default
        termination for SIGTERM (exit status -15 / 143)."""
        self.restore()
        if self.signum is not None:
            signal.raise_signal(self.signum)


def fingerprint(*parts: Any) -> str:
    """12 hex digits of SHA-256 over `parts`: bytes as they are, anything else as JSON (paths, numbers, lists)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], path: str | os.PathLike,
                 override: str | None) -> None:
    """Refuse to resume from `path` when a setting differs, naming the first differing key and the `override`
    that allows it anyway (None: nothing can, e.g. another model's weights)."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            how = f"{override} to resume anyway" if override else "start a new run instead"
            raise ValueError(f"{path}: the checkpoint was trained with {key}={saved.get(key)!r}, this run has "
                             f"{key}={current.get(key)!r}; resuming would mix two runs ({how})")


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON record to the log `path`; a full disk raises OSError naming the path and "no space"."""
    with naming_full_disk(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(path: str | os.PathLike, step: int) -> None:
    """Keep only the records of the JSONL log `path` with "step" <= `step` (rewritten atomically)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:               # a record torn by a kill mid-write
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in keep))
