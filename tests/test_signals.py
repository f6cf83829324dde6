"""Signals and leftovers (README, "Stopping and resuming"): Ctrl-C or SIGTERM stops `toydiff train` and
`toydiff demo --retrain` (two worker processes) within a step, the workers writing their checkpoints at the
step reached and the parent saying what was saved; workers die with a parent killed outright; no lock or temp
file of a dead writer is left to block or confuse the next run. Real signals to real subprocesses, tiny models."""
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from toydiff import cli, datasets, nets, runs, training, zoo

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(width=8, depth=2, position_freqs=0, loss="dsm", batch_size=8, pool_size=256)
# a child that runs the CLI on tiny specs (the specs travel to the spawned workers as they are in the parent)
CHILD = textwrap.dedent("""
    import dataclasses, sys
    from toydiff import cli, zoo
    steps = int(sys.argv[1])
    for name, spec in zoo.MODEL_SPECS.items():
        zoo.MODEL_SPECS[name] = dataclasses.replace(spec, steps=steps, **{TINY!r})
    sys.exit(cli.main(sys.argv[2:]))
""").replace("{TINY!r}", repr(TINY))


def _spawn(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _children(pid):
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _training_workers(pid):
    """The two training workers of `pid` (its other child, if any, is multiprocessing's resource tracker)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [c for c in _children(pid) if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
        if len(workers) == 2:
            return workers
        time.sleep(0.05)
    pytest.fail(f"pid {pid} has no two training workers: {_children(pid)}")


@pytest.mark.parametrize("command,sig", [("train", signal.SIGINT), ("train", signal.SIGTERM),
                                         ("demo", signal.SIGINT)])
def test_a_signal_stops_the_workers_which_save_and_the_parent_reports(tmp_path, wait_for, command, sig):
    """Before: Ctrl-C was ignored until every model had finished, and nothing was saved. Steps 10**6 at batch 8
    would take many minutes; the first periodic checkpoint (step 1024) shows the loop is live."""
    out = tmp_path / "out"
    argv = ["train", "--out", out] if command == "train" else ["demo", "--retrain", "--fast", "--out", out]
    proc = _spawn(10 ** 6, *argv, "--no-progress")
    models = out if command == "train" else out / "models"
    wait_for(models / "tree_main.pt", proc)
    workers = _training_workers(proc.pid)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{command} ignored {sig.name}: still running 60 s later")
    err = err.decode()
    assert proc.returncode == 128 + sig, err
    assert err.count("\n") == 1 and "interrupted: " in err, err
    for name in ("tree_main", "tree_guide"):            # the first model of each worker
        ck = training.load_checkpoint(models / f"{name}.pt")
        assert 0 < ck["step"] < 10 ** 6 and ck["meta"]["role"] == name
        assert f"{models / name}.pt saved at step {ck['step']} of {10 ** 6}" in err, err
    assert not any(_alive(w) for w in workers)
    assert not list(models.glob(".*")), "no lock or temp file is left behind"


def test_train_resumes_what_a_signal_saved_bit_identically(tmp_path, wait_for, monkeypatch):
    """SIGTERM mid-run, then `toydiff train --out DIR --resume` ends with the models an uninterrupted run gives."""
    steps, out = 2048, tmp_path / "out"
    proc = _spawn(steps, "train", "--out", out, "--no-progress")
    wait_for(out / "tree_main.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and b"--resume" in err, err
    for name, spec in zoo.MODEL_SPECS.items():
        monkeypatch.setitem(zoo.MODEL_SPECS, name, dataclasses.replace(spec, steps=steps, **TINY))
    with pytest.raises(SystemExit) as e:                 # a second run never overwrites the first's files
        cli.main(["train", "--out", str(out), "--no-progress"])
    assert e.value.code == 2
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    resumed, straight = zoo.load_models(out), zoo.train_models(0, progress=False, workers=1)
    for name in ("main", "guide", "uncond", "dropout"):
        a, b = getattr(resumed, name).state_dict(), getattr(straight, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_workers_die_with_a_parent_killed_outright(tmp_path, wait_for):
    """SIGKILL to the parent: the kernel sends each worker SIGTERM (PR_SET_PDEATHSIG), so they write their
    checkpoints and end. Before: orphaned workers trained on for the whole run."""
    out = tmp_path / "out"
    proc = _spawn(10 ** 6, "train", "--out", out, "--no-progress")
    wait_for(out / "tree_main.pt", proc)
    workers = _training_workers(proc.pid)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "the workers outlived their parent"
    assert 0 < training.load_checkpoint(out / "tree_main.pt")["step"] < 10 ** 6


def test_sigterm_leaves_no_lock_file_and_a_stale_one_never_blocks(tmp_path, wait_for):
    """train() releases (removes) its lock before the signal ends the process; a lock file a SIGKILL left is only
    text (the kernel dropped the flock), so the next run starts."""
    path = tmp_path / "run.pt"
    code = textwrap.dedent("""
        import sys
        from toydiff import datasets, nets, training
        training.train(nets.MLPDenoiser(num_classes=3, width=8, depth=2), datasets.three_gaussians(), steps=10 ** 6,
                       batch_size=8, pool_size=256, progress=False, checkpoint=sys.argv[1], checkpoint_every=256)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stderr=subprocess.PIPE)
    wait_for(path, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]
    (tmp_path / ".next.pt.lock").write_text("pid 999999 on elsewhere, since 2020-01-01 00:00:00")
    training.train(nets.MLPDenoiser(num_classes=3, width=8, depth=2), datasets.three_gaussians(), steps=4,
                   batch_size=8, pool_size=64, progress=False, checkpoint=tmp_path / "next.pt")
    assert training.load_checkpoint(tmp_path / "next.pt")["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.pt", "run.pt"]


def test_stale_temp_files_of_a_dead_writer_are_removed_by_the_next_run(tmp_path):
    """A SIGKILL mid-write leaves toydiff.atomic's 0-byte `.<name>.<random>.tmp`; the next run on that output
    (holding its lock, so no live writer owns them) removes them: a run directory's all, a checkpoint's own."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = [run_dir / ".ckpt-0000010.pt.k2j4h5g6.tmp", run_dir / ".log.jsonl.abcd_123.tmp"]
    keep = [run_dir / "notes.tmp", run_dir / "ckpt-0000010.pt"]
    for p in stale + keep:
        p.write_bytes(b"")
    with runs.RunLock(run_dir, directory=True) as lock:
        assert sorted(lock.stale) == sorted(stale)
    assert sorted(run_dir.iterdir()) == sorted(keep)
    mine, other = tmp_path / ".ck.pt.zzzz9999.tmp", tmp_path / ".other.pt.zzzz9999.tmp"
    mine.write_bytes(b""), other.write_bytes(b"")
    training.train(nets.MLPDenoiser(num_classes=3, width=8, depth=2), datasets.three_gaussians(), steps=2,
                   batch_size=8, pool_size=64, progress=False, checkpoint=tmp_path / "ck.pt")
    assert not mine.exists() and other.exists()


def test_two_trainings_on_one_checkpoint_path_never_overwrite_silently(tmp_path):
    """Before: a second run on an existing checkpoint started from scratch and overwrote it without a word."""
    path = tmp_path / "run.pt"
    kw = dict(steps=4, batch_size=8, pool_size=64, progress=False, checkpoint=path)
    training.train(nets.MLPDenoiser(num_classes=3, width=8, depth=2), datasets.three_gaussians(), **kw)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=f"checkpoint {path} already exists.*resume=True"):
        training.train(nets.MLPDenoiser(num_classes=3, width=8, depth=2, seed=1), datasets.three_gaussians(), **kw)
    assert path.read_bytes() == before
