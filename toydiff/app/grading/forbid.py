"""Own work: while a student's function runs, the toydiff functions that would solve its exercise refuse to work.

An exercise "write cfg_denoise" is graded against toydiff's CFG; a submission that only calls CFG would pass that
comparison by construction. `own_work(fn, targets)` returns fn wrapped so that, during each call of the student's
code (and only then: the grader's own reference calls run normally), every target raises an AssertionError that
says what happened. Targets are (object, attribute) pairs: module functions, class methods, or dict entries
(samplers.METHODS) with a third item, the name to report. Patching the attribute catches every import path that looks it up at call time
(`guidance.CFG(w)(...)`, `from toydiff.guidance import CFG`, `guided(den, CFG(w))`), since the methods are class
attributes; a function imported by name before grading (`from toydiff.metrics import outlier_fraction as f`) is
the student's own copy and is not caught, which is why the checks also compare intermediate quantities where the
exercise has them.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["library_off", "own_work"]

Target = tuple  # (object, attribute) or (dict, key, label)


def _label(obj: Any, name: str) -> str:
    return f"{getattr(obj, '__name__', type(obj).__name__).rsplit('.', 1)[-1]}.{name}"


def _get(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name)


def _set(obj: Any, name: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[name] = value
    else:
        setattr(obj, name, value)


@contextmanager
def library_off(targets: tuple[Target, ...], exercise: str) -> Iterator[None]:
    """Within the block, calling any target raises AssertionError naming it and the exercise; restored after."""
    saved = [(t[0], t[1], _get(t[0], t[1]), t[2] if len(t) > 2 else _label(t[0], t[1])) for t in targets]

    def refusing(label: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{exercise} called toydiff's {label}, the function this exercise asks you to "
                                 "write: compute it yourself from the formula (the grader compares with toydiff's)")
        return refuse
    try:
        for obj, name, _, label in saved:
            _set(obj, name, refusing(label))
        yield
    finally:
        for obj, name, value, _ in saved:
            _set(obj, name, value)


def own_work(fn: Callable[..., Any], targets: tuple[Target, ...], exercise: str) -> Callable[..., Any]:
    """fn wrapped so that the `targets` refuse to work while it runs (see the module docstring)."""
    if not callable(fn):
        raise TypeError(f"{exercise} must be a function, got {type(fn).__name__}")

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with library_off(targets, exercise):
            return fn(*args, **kwargs)
    return call
