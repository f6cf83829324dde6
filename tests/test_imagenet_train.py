"""imagenet_ext.train: one process, and two gloo processes under torchrun with accumulation and resume,
give the same model for the same global batch; checkpoints are atomic and resumable."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagenet_ext.checkpoint import latest_checkpoint, load_checkpoint, load_denoiser, save_atomic

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
    r = _run(["--steps", "4", "--accum", "2", "--out", str(tmp_path), "--resume"], nproc=2)
    assert "start step 2" in r.stdout
    torch.testing.assert_close(torch.tensor(_losses(tmp_path)), torch.tensor(_losses(one_proc)), rtol=1e-4, atol=1e-5)
    a = load_checkpoint(one_proc / "ckpt-0000004.pt")
    b = load_checkpoint(tmp_path / "ckpt-0000004.pt")
    for key in ("model", "ema"):
        for name, t in a[key].items():
            torch.testing.assert_close(b[key][name], t, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    save_atomic({"step": 1, "config": {"name": "tiny"}, "model": {}}, tmp_path / "ok.pt")
    b = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(b[: len(b) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    save_atomic({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an imagenet_ext checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
