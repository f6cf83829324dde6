"""imagenet_ext.train: one process, and two gloo processes under torchrun with accumulation and resume,
give the same model for the same global batch; checkpoints are atomic and resumable."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagenet_ext.checkpoint import latest_checkpoint, load_denoiser
from imagenet_ext.train import TrainConfig, parse_args, train
from toydiff.atomic import save_atomic
from toydiff.checkpoint import CHECKPOINT_VERSION
from toydiff.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--data", "digits", "--resolution", "8", "--config", "tiny", "--channels", "16", "--batch", "8",
          "--lr", "1e-3", "--ckpt-every", "2", "--log-every", "1", "--no-progress", "--seed", "3", "--device", "cpu"]


def _run(args, nproc=1):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    r = subprocess.run([*launcher, "-m", "imagenet_ext.train", *COMMON, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_proc(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    _run(["--steps", "4", "--out", str(out)])
    return out


def test_single_process_writes_checkpoints(one_proc):
    ckpts = sorted(p.name for p in one_proc.glob("*.pt"))
    assert ckpts == ["ckpt-0000002.pt", "ckpt-0000004.pt"]
    assert not list(one_proc.glob(".*tmp"))                                  # no temp files left behind
    losses = _losses(one_proc)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    ck = load_checkpoint(one_proc / "ckpt-0000004.pt")
    assert ck["step"] == 4 and {"model", "ema", "optimizer", "rng"} <= set(ck)
    m = load_denoiser(one_proc / "ckpt-0000004.pt")
    assert m.cfg.resolution == 8 and m.cfg.num_classes == 10 and not m.training


def test_torchrun_two_processes_accum_resume_match_one_process(one_proc, tmp_path):
    # 2 ranks x 2 accumulation micro-steps x 2 images = the same global batch of 8; stop at step 2, resume to 4
    _run(["--steps", "2", "--accum", "2", "--out", str(tmp_path)], nproc=2)
    assert latest_checkpoint(tmp_path).name == "ckpt-0000002.pt"
    r = _run(["--steps", "4", "--accum", "2", "--out", str(tmp_path), "--resume", str(tmp_path)], nproc=2)  # RUN_DIR
    assert "start step 2" in r.stdout
    torch.testing.assert_close(torch.tensor(_losses(tmp_path)), torch.tensor(_losses(one_proc)), rtol=1e-4, atol=1e-5)
    a = load_checkpoint(one_proc / "ckpt-0000004.pt")
    b = load_checkpoint(tmp_path / "ckpt-0000004.pt")
    for key in ("model", "ema"):
        for name, t in a[key].items():
            if name.endswith("qkv.bias"):
                # the key bias (middle third, [q; k; v]) shifts every logit of a query alike, so softmax ignores it:
                # its gradient is 0 up to rounding, and Adam turns that rounding (which differs with the process
                # count) into lr-sized steps (EDM's loss sums over pixels, so it outgrows Adam's eps). Compare q, v.
                third = t.numel() // 3
                t, other = torch.cat([t[:third], t[2 * third:]]), torch.cat([b[key][name][:third], b[key][name][2 * third:]])
            else:
                other = b[key][name]
            torch.testing.assert_close(other, t, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


def test_checkpoint_errors(tmp_path, one_proc):
    """One loader (toydiff.training.load_checkpoint, weights_only=True) with one set of errors for both worlds."""
    good = one_proc / "ckpt-0000004.pt"
    ck = load_checkpoint(good)
    assert ck["format"] == "toydiff-checkpoint" and ck["version"] == CHECKPOINT_VERSION and ck["model_class"] == "EDMDenoiser"
    assert ck["config"]["steps"] == 4 and ck["model_config"]["name"] == "tiny"        # the run's TrainConfig
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        load_denoiser(tmp_path / "missing.pt")
    b = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(b[: len(b) // 2])
    with pytest.raises(ValueError, match="cut.pt is corrupt or truncated"):
        load_denoiser(tmp_path / "cut.pt")
    save_atomic({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a toydiff checkpoint"):
        load_denoiser(tmp_path / "other.pt")
    save_atomic({**ck, "version": CHECKPOINT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match=f"newer.pt has format version {CHECKPOINT_VERSION + 1}"):
        load_denoiser(tmp_path / "newer.pt")
    save_atomic({**ck, "rng": Path("not plain data")}, tmp_path / "pickle.pt")   # weights_only refuses objects
    with pytest.raises(ValueError, match="pickle.pt is corrupt or truncated"):
        load_denoiser(tmp_path / "pickle.pt")
    toy = Path(__file__).resolve().parents[1] / "toydiff" / "checkpoints" / "tree_guide.pt"
    with pytest.raises(ValueError, match="holds a MLPDenoiser, not an imagenet_ext UNet"):
        load_denoiser(toy)


def test_train_python_entry_point(tmp_path):
    """train(TrainConfig(...)) is the CLI's run; it validates its fields and restores the torch thread count."""
    threads = torch.get_num_threads()
    cfg = TrainConfig(data="digits", resolution=8, channels=16, batch=8, lr=1e-3, steps=2, ckpt_every=2, seed=3,
                      device="cpu", out=str(tmp_path), no_progress=True, threads=1)
    summary = train(cfg)
    assert summary["step"] == 2 and torch.get_num_threads() == threads
    assert parse_args(["--data", "digits", "--steps", "2", "--out", str(tmp_path), "--threads", "1"]) == \
        TrainConfig(data="digits", steps=2, out=str(tmp_path), threads=1)
    with pytest.raises(ValueError, match="accum must be >= 1, got 0"):
        TrainConfig(data="digits", steps=2, out=str(tmp_path), accum=0)


def test_flow_matching_objective(tmp_path):
    """objective="flow": the conditional flow-matching loss on the network's velocity view (another loss than EDM's
    on the same batches); a run of one objective does not resume as the other; a bad value names the field."""
    common = dict(data="digits", resolution=8, channels=16, batch=8, lr=1e-3, ckpt_every=2, seed=3, device="cpu",
                  no_progress=True, threads=1)
    flow = train(TrainConfig(**common, steps=2, out=str(tmp_path / "flow"), objective="flow"))
    edm = train(TrainConfig(**common, steps=2, out=str(tmp_path / "edm")))
    assert abs(flow["loss"] - edm["loss"]) > 1e-3 * abs(edm["loss"])
    with pytest.raises(ValueError, match="objective"):
        train(TrainConfig(**common, steps=4, out=str(tmp_path / "flow"), resume="auto"))
    with pytest.raises(ValueError, match="objective must be one of edm, flow"):
        TrainConfig(data="digits", steps=2, out=str(tmp_path), objective="rf")
    assert parse_args(["--data", "digits", "--steps", "2", "--out", str(tmp_path), "--objective", "flow"]).objective == "flow"


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path):
    """No periodic checkpoint before step 1000: after SIGTERM the run writes one at the step it reached, says
    so, and ends as SIGTERM asks; --resume continues from it with one log record per step."""
    import signal
    import time
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [*COMMON, "--ckpt-every", "1000", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_ext.train", *args, "--steps", "500"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = tmp_path / "log.jsonl", time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    ckpt = latest_checkpoint(tmp_path)
    step = load_checkpoint(ckpt)["step"]
    assert 2 <= step < 500 and f"stopped by a signal at step {step}" in out
    assert not (tmp_path / ".lock").exists(), "the lock is released before the signal ends the run"
    stale = tmp_path / f".{ckpt.name}.k2j4h5g6.tmp"          # what a SIGKILL mid-write leaves (toydiff.atomic)
    stale.write_bytes(b"")
    _run(["--ckpt-every", "1000", "--out", str(tmp_path), "--steps", str(step + 2), "--resume"])
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, step + 3))
    assert not stale.exists(), "the resumed run removes a dead writer's temp file"
