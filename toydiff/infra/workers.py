"""Worker processes that stop when asked and never outlive their parent (zoo.train_models uses them).

`run_jobs(fn, jobs, workers)` runs fn(*job) for each job in `workers` spawned processes (job i in process
i mod workers, in order) and returns the results in job order. The guarantees:
  * SIGINT or SIGTERM to the parent (Ctrl-C reaches only the parent: each worker runs in its own session) is
    forwarded as SIGTERM to every worker. A worker inside toydiff.training.train writes its checkpoint at the step
    reached (toydiff.runs.StopSignals) and stops; the parent waits for all of them, then raises `Interrupted`,
    which says which jobs finished, which were stopped and which never started. A second signal kills the workers
    at once (SIGKILL) and re-delivers the signal.
  * A parent killed outright (SIGKILL, OOM) takes its workers with it: on Linux each worker asks the kernel for
    SIGTERM at its parent's death (prctl PR_SET_PDEATHSIG, via ctypes), so it still writes its checkpoint; on other
    systems a watcher thread polls os.getppid() once a second and does the same.
  * A job that raises stops every worker, and the parent re-raises the job's exception.
`stop(proc, grace)` ends a child process the polite way: SIGTERM, then SIGKILL after `grace` seconds.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import wait
from types import FrameType
from typing import Any, Callable, Sequence

__all__ = ["Interrupted", "run_jobs", "stop"]

_PR_SET_PDEATHSIG = 1                           # <linux/prctl.h>


class Interrupted(KeyboardInterrupt):
    """The run was stopped by `signum`: `done` {job index: result}, `stopped` and `not_started` (job indices);
    `report`: what the caller saved, for the user (set by the caller, e.g. zoo.train_models)."""

    def __init__(self, signum: int, done: dict[int, Any], stopped: list[int], not_started: list[int]) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.done, self.stopped, self.not_started = signum, done, stopped, not_started
        self.report = ""


class _Stop(Exception):
    """Raised in a worker by SIGTERM/SIGINT outside train()'s own handling (or re-delivered by it)."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent` dies (see the module docstring)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:          # it died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()


def _worker(fn: Callable, jobs: list[tuple[int, tuple]], conn: Any, parent: int) -> None:
    os.setsid()                                  # Ctrl-C on the terminal reaches the parent only
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _raise_stop)
    _die_with_parent(parent)
    try:
        for i, args in jobs:
            conn.send(("start", i, None))
            try:
                result = fn(*args)
            except (_Stop, KeyboardInterrupt):
                conn.send(("stopped", i, None))
                return
            except BaseException as e:            # the parent re-raises it (as a RuntimeError if it cannot travel)
                try:
                    pickle.dumps(e)
                except Exception:
                    e = RuntimeError(f"{type(e).__name__}: {e}")
                conn.send(("error", i, e))
                return
            conn.send(("done", i, pickle.dumps(result)))   # plain bytes: torch would share tensors through
                                                          # file descriptors that die with this process
    except (BrokenPipeError, _Stop):            # the parent is gone, or a signal came between jobs
        pass


def run_jobs(fn: Callable, jobs: Sequence[tuple], workers: int) -> list:
    """[fn(*job) for job in jobs], computed in `workers` spawned processes (see the module docstring); `fn` and the
    jobs must be picklable. Raises `Interrupted` after a signal, or a job's exception."""
    ctx = multiprocessing.get_context("spawn")
    lanes = [[(i, tuple(job)) for i, job in enumerate(jobs) if i % workers == k] for k in range(workers)]
    procs, conns = [], []
    for lane in lanes:
        recv, send = ctx.Pipe(duplex=False)
        procs.append(ctx.Process(target=_worker, args=(fn, lane, send, os.getpid()), daemon=True))
        conns.append(recv)
        procs[-1].start()
        send.close()
    state: dict[str, Any] = {"signum": None}

    def forward(signum: int, frame: FrameType | None) -> None:
        if state["signum"] is not None:          # the second signal: no more waiting
            for p in procs:
                p.kill()
            restore()
            signal.raise_signal(signum)
            return
        state["signum"] = signum
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signal.SIGTERM)

    saved = {}
    if threading.current_thread() is threading.main_thread():
        saved = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, h in saved.items():
            signal.signal(s, h)

    results, started, stopped, errors = {}, set(), [], []
    try:
        live = dict(zip(conns, procs))
        while live:
            for conn in wait(list(live)):
                try:
                    kind, i, payload = conn.recv()
                except EOFError:                  # the worker has exited
                    proc = live.pop(conn)
                    proc.join()
                    if proc.exitcode != 0 and state["signum"] is None and not errors:
                        errors.append(RuntimeError(f"a worker process (pid {proc.pid}) died with exit code "
                                                   f"{proc.exitcode}"))
                    continue
                if kind == "start":
                    started.add(i)
                elif kind == "done":
                    results[i] = pickle.loads(payload)
                elif kind == "stopped":
                    stopped.append(i)
                else:
                    errors.append(payload)
                if kind == "error":
                    for p in procs:               # one job failed: stop the others
                        if p.exitcode is None:
                            os.kill(p.pid, signal.SIGTERM)
    finally:
        restore()
        for p in procs:
            p.join(timeout=5)
            if p.exitcode is None:
                p.kill()
    if state["signum"] is not None:
        raise Interrupted(state["signum"], results, sorted(stopped),
                          [i for i in range(len(jobs)) if i not in started])
    if not errors and len(results) < len(jobs):
        errors.append(RuntimeError(f"a worker process ended without finishing job(s) "
                                   f"{sorted(set(range(len(jobs))) - set(results))}"))
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(jobs))]


def stop(proc: subprocess.Popen, grace: float) -> None:
    """Terminate `proc` if it still runs (SIGTERM: a `toydiff explore` passes it on to Voila), wait up to `grace`
    seconds, then kill it (SIGKILL) and reap it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
