"""Command-line plumbing shared by `toydiff` and the imagenet_ext CLIs (train, sample, fid).

A user error -- a bad value, an output that cannot be written, a missing or unreadable input -- prints ONE line
`prog: error: <message naming the flag>` on stderr and exits with status 2, without a traceback:
  * `Parser` is an argparse.ArgumentParser whose errors are that one line (no usage block);
  * the `type=` converters below refuse bad values at parse time, so argparse names the flag;
  * `check_output` checks an output location (suffix, directory, permissions) before any work starts;
  * `user_errors(prog)` turns the library's clear errors (ValueError, FileNotFoundError, a full disk, ...)
    raised later into the same one line. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["Parser", "positive_int", "positive_float", "nonnegative_float", "probability", "seed", "device",
           "check_output", "user_errors", "UserError"]


class UserError(ValueError):
    """A mistake in the command line (message names the flag)."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors printed as one line (`prog: error: ...`) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _number(kind: type, test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    convert.__name__ = what          # argparse names the type in its messages
    return convert


positive_int = _number(int, lambda v: v >= 1, "an int >= 1")
seed = _number(int, lambda v: _seed_ok(v), "an int seed in [0, 2**63 - 1]")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def device(text: str):
    """A torch device that exists here: "cpu", "cuda", "cuda:1", "mps" (toydiff.validation.check_device)."""
    from .validation import check_device  # deferred: validation imports torch
    try:
        return check_device(text, "device")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seed_ok(value: int) -> bool:
    from .validation import SEED_MAX  # deferred: validation imports torch, and `--help` should stay instant
    return 0 <= value <= SEED_MAX


def _writable_dir(path: Path, flag: str) -> None:
    """`path` (a directory, maybe not there yet) can be created and written: its nearest existing ancestor is a
    writable directory."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag}: {probe} is a file, so {path} cannot be a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot write to {path} ({probe} is not writable)")


def check_output(path: str | os.PathLike, flag: str, *, suffixes: Sequence[str] | None = None,
                 directory: bool = False) -> Path:
    """Refuse an output location up front: a file name whose suffix is not one of `suffixes` (compared case-
    insensitively; the name is then used exactly as given, never rewritten), a directory where a file is wanted
    (or a file where a directory is), a file in a folder that does not exist (an output directory itself is
    created), or a place that is not writable. Returns the path."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag}: {path} exists and is not a directory")
        _writable_dir(path, flag)
        return path
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag}: {path} must end in {' or '.join(suffixes)} (the suffix picks the format; "
                        f"nothing is appended or changed)")
    if path.is_dir():
        raise UserError(f"{flag}: {path} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag}: {path} exists and is not writable")
    if not path.parent.is_dir():                  # a typo in a folder name creates nothing (say, under / as root)
        raise UserError(f"{flag}: the folder {path.parent} does not exist (create it first, or fix the path)")
    _writable_dir(path.parent, flag)
    return path


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn the clear errors the library raises for bad input into one line on stderr and exit status 2."""
    try:
        yield
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
            FileExistsError, FloatingPointError) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        raise SystemExit(2) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        sys.stderr.write(f"{prog}: error: {e}\n")
        raise SystemExit(2) from None
