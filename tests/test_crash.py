"""Crashes: a training run killed with SIGKILL and resumed from its last checkpoint ends bit-identical to an
uninterrupted run with the same seed (CPU); a checkpoint write interrupted anywhere never leaves a file at the
destination that loads as valid but is not a complete checkpoint."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from toydiff import datasets, nets, training

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 600, 50
TRAIN = textwrap.dedent(f"""
    import sys
    from toydiff import datasets, nets, training
    model = nets.MLPDenoiser(num_classes=3, width=32, depth=3, seed=0)
    training.train(model, datasets.three_gaussians(), steps={STEPS}, batch_size=256, pool_size=4096, seed=0,
                   progress=False, checkpoint=sys.argv[1], checkpoint_every={EVERY}, resume=True)
""")


def _train(checkpoint=None):
    model = nets.MLPDenoiser(num_classes=3, width=32, depth=3, seed=0)
    return training.train(model, datasets.three_gaussians(), steps=STEPS, batch_size=256, pool_size=4096, seed=0,
                          progress=False, checkpoint=checkpoint, checkpoint_every=EVERY, resume=True)


def _spawn(code, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_and_resume_is_bit_identical(tmp_path, wait_for):
    path = tmp_path / "run.pt"
    proc = _spawn(TRAIN, path)
    wait_for(path, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = training.load_checkpoint(path)["step"]
    assert 0 < killed_at < STEPS, killed_at                      # it really died mid-run
    resumed, straight = _train(path), _train(None)
    for a, b in ((resumed.model, straight.model), (resumed.ema, straight.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(resumed.losses, straight.losses)
    assert training.load_checkpoint(path)["step"] == STEPS


def _save(path, width=8, step=1):
    model = nets.MLPDenoiser(num_classes=3, width=width, depth=2)
    training.save_checkpoint(path, model, model, torch.optim.Adam(model.parameters()), step, {})


@pytest.mark.parametrize("where", ["torch.save", "fsync", "os.replace"])
def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "ck.pt"
    _save(path, step=1)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        if where == "torch.save":                                    # half the bytes reach the temp file
            args[1].write(b"PK\x03\x04" + b"\0" * 1000)
        raise KeyboardInterrupt("interrupted")
    target = {"torch.save": (torch, "save"), "fsync": (os, "fsync"), "os.replace": (os, "replace")}[where]
    monkeypatch.setattr(*target, crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, width=16, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and training.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]   # the temp file is cleaned up
    # the very first write interrupted: no file at all
    fresh = tmp_path / "fresh.pt"
    monkeypatch.setattr(*target, crash)
    with pytest.raises(KeyboardInterrupt):
        _save(fresh)
    assert not fresh.exists()


# A child whose first checkpoint write completes and whose second stops half-way: torch.save's bytes reach the
# temp file in 64 kB pieces, and after the first half the child creates `<dir>/mid-write` and sleeps, so the
# parent's SIGKILL lands mid-write by construction, not by timing (save_checkpoint itself is unchanged).
WRITER = textwrap.dedent("""
    import io, pathlib, sys, time, torch
    from toydiff import nets, training
    real_save, calls = torch.save, []
    def slow_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        for i in range(0, len(data), 1 << 16):
            if calls and i >= len(data) // 2:
                (pathlib.Path(sys.argv[1]).parent / "mid-write").touch()
                time.sleep(600)
            f.write(data[i:i + (1 << 16)])
            f.flush()
        calls.append(1)
    torch.save = slow_save
    model = nets.MLPDenoiser(num_classes=3, width=256, depth=4)
    opt = torch.optim.Adam(model.parameters())
    for step in range(2):
        training.save_checkpoint(sys.argv[1], model, model, opt, step, {})
""")


def test_sigkill_during_writes_never_leaves_a_bad_checkpoint(tmp_path, wait_for):
    paths = [tmp_path / f"run{i}" / "ck.pt" for i in range(3)]         # three writers at once
    for path in paths:
        path.parent.mkdir()
    procs = [_spawn(WRITER, path) for path in paths]
    for path, proc in zip(paths, procs):
        wait_for(path.parent / "mid-write", proc)
        proc.send_signal(signal.SIGKILL)
    for path, proc in zip(paths, procs):
        proc.wait(timeout=30)
        ck = training.load_checkpoint(path)                              # the last complete write, valid
        assert ck["step"] == 0 and ck["model"].keys() == ck["ema"].keys()
        training.load_model(path)
        leftovers = sorted(p.name for p in path.parent.iterdir() if p.name not in ("ck.pt", "mid-write"))
        assert len(leftovers) == 1 and leftovers[0].startswith(".ck.pt.") and leftovers[0].endswith(".tmp"), leftovers


def test_truncated_checkpoint_is_refused_with_its_path(tmp_path):
    path = tmp_path / "ck.pt"
    _save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(path)):
            training.load_checkpoint(path)
        with pytest.raises(ValueError, match=str(path)):                # and resume does not start over silently
            training.train(nets.MLPDenoiser(num_classes=3, width=8, depth=2), datasets.three_gaussians(), steps=2,
                           progress=False, checkpoint=path, resume=True)


def test_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A write that runs out of space (ENOSPC after 4 kB) inside torch.save: torch itself would report only
    "unexpected pos ..."; the error names the checkpoint and says "no space", and the old checkpoint survives."""
    import builtins
    import errno

    from toydiff import atomic
    path = tmp_path / "ck.pt"
    _save(path, step=1)
    before = path.read_bytes()

    class FullDisk:
        def __init__(self, f):
            self.f, self.room = f, 4096

        def write(self, data):
            self.room -= len(data)
            if self.room < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(atomic, "open", lambda p, mode="r": FullDisk(builtins.open(p, mode)) if "w" in mode
                        else builtins.open(p, mode), raising=False)
    with pytest.raises(OSError, match=rf"no space left on device while writing {path}"):
        _save(path, width=64, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


SIGNALLED = textwrap.dedent("""
    import sys
    from toydiff import datasets, nets, training
    model = nets.MLPDenoiser(num_classes=3, width=32, depth=3, seed=0)
    training.train(model, datasets.three_gaussians(), steps=int(sys.argv[2]), batch_size=256, pool_size=4096, seed=0,
                   progress=True, checkpoint=sys.argv[1], checkpoint_every=10 ** 6, resume=True)
""")


SIGNALLED_STEPS = 1500
SIGNALLED_KW = dict(steps=SIGNALLED_STEPS, batch_size=256, pool_size=4096, seed=0, progress=False)


@pytest.fixture(scope="module")
def straight_signalled():
    """The uninterrupted run both signals' resumed runs must equal (computed once for the two)."""
    return training.train(nets.MLPDenoiser(num_classes=3, width=32, depth=3, seed=0), datasets.three_gaussians(),
                          **SIGNALLED_KW)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_write_a_checkpoint_then_resume_is_bit_identical(tmp_path, sig, straight_signalled):
    """No periodic checkpoint before the end (checkpoint_every = 10**6): the file exists only because the signal
    made the run write one at the step it had reached; the run then ends as the signal asks."""
    steps, path = SIGNALLED_STEPS, tmp_path / "run.pt"
    proc = _spawn(SIGNALLED, path, steps)
    while b"train" not in proc.stderr.read1(4096):              # the progress bar: the loop (and handlers) are live
        assert proc.poll() is None, "the child exited before training"
    time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == -sig
    stopped_at = training.load_checkpoint(path)["step"]
    assert 0 < stopped_at < steps
    model = nets.MLPDenoiser(num_classes=3, width=32, depth=3, seed=0)
    resumed = training.train(model, datasets.three_gaussians(), checkpoint=path, resume=True, **SIGNALLED_KW)
    straight = straight_signalled
    assert torch.equal(resumed.losses, straight.losses)
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.state_dict().values(), straight.ema.state_dict().values()))


def test_divergence_stops_without_saving_nan_weights(tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError, match=rf"training diverged: .* at step \d+ .*{path} is kept"):
        training.train(nets.MLPDenoiser(num_classes=3, width=32, depth=3), datasets.three_gaussians(), steps=200,
                       lr=1e8, batch_size=64, pool_size=512, progress=False, checkpoint=path, checkpoint_every=1)
    ck = training.load_checkpoint(path)
    assert all(torch.isfinite(t).all() for key in ("model", "ema") for t in ck[key].values())
