"""toydiff.runs: the lock, step-number pruning, signal-to-checkpoint, resume checks and log truncation."""
import os
import signal
import subprocess
import sys
import time

import pytest

from toydiff.runs import (OutputInUse, RunLock, StopSignals, check_resume, numbered_checkpoints, prune_checkpoints,
                          truncate_log)


def test_lock_refuses_a_second_holder_and_survives_a_killed_one(tmp_path):
    with RunLock(tmp_path / "run", directory=True):
        with pytest.raises(OutputInUse, match=rf"--out {tmp_path / 'run'} is in use by another run \(pid {os.getpid()}"):
            RunLock(tmp_path / "run", directory=True, name="--out").acquire()
    assert list((tmp_path / "run").iterdir()) == []                     # released and removed
    with RunLock(tmp_path / "ck.pt", directory=False):                  # a file: the lock sits beside it
        assert (tmp_path / ".ck.pt.lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from toydiff.runs import RunLock; "
                               "RunLock(sys.argv[1], directory=True).acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputInUse, match=f"pid {holder.pid}"):
        RunLock(tmp_path / "run", directory=True).acquire()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path / "run", directory=True):                     # the kernel released the dead holder's lock
        pass


def test_pruning_orders_by_step_number(tmp_path):
    for step in (9_999_998, 10_000_000, 2, 123):
        (tmp_path / f"ckpt-{step:07d}.pt").write_bytes(b"x")
    (tmp_path / "ckpt-best.pt").write_bytes(b"x")                       # not numbered: never touched
    assert [s for s, _ in numbered_checkpoints(tmp_path)] == [2, 123, 9_999_998, 10_000_000]
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-10000000.pt", "ckpt-9999998.pt", "ckpt-best.pt"]
    prune_checkpoints(tmp_path, keep=0)                                 # 0 = keep all
    assert len(list(tmp_path.iterdir())) == 3


def test_stop_signals_set_a_flag_then_redeliver():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signum == signal.SIGINT                             # no KeyboardInterrupt yet
        with pytest.raises(KeyboardInterrupt):
            stop.exit()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_check_resume_names_the_key_and_truncate_log(tmp_path):
    check_resume({"lr": 1e-3, "seed": 0}, {"lr": 1e-3, "seed": 0}, "ck.pt", "--force-resume")
    with pytest.raises(ValueError, match=r"ck.pt: .*seed=0, this run has seed=1.*--force-resume"):
        check_resume({"lr": 1e-3, "seed": 0}, {"lr": 1e-3, "seed": 1}, "ck.pt", "--force-resume")
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')   # the last one torn by a kill
    truncate_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
