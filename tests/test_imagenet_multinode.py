"""Two "nodes" on this machine: torchrun --nnodes 2 --nproc-per-node 1, c10d rendezvous on 127.0.0.1, gloo. One
node is killed (SIGKILL, agent and worker) mid-run; the other fails at its next collective and exits; both are
relaunched with --resume and the run ends equal to a one-process run of the same global batch (up to float
reduction order: the all-reduce adds the two halves of the batch in another order; measured max |diff| 4.5e-5 on
weights of size 0.25 after 8 Adam steps), with one log record per step."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from toydiff.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
ARGS = ["-m", "imagenet_ext.train", "--data", "digits", "--resolution", "8", "--config", "tiny", "--channels", "16",
        "--batch", "8", "--lr", "1e-3", "--ckpt-every", "2", "--log-every", "1", "--no-progress", "--seed", "3",
        "--device", "cpu", "--steps", str(STEPS)]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _node(out, port, host):
    """One node: a torchrun agent with one worker; the first node hosts the rendezvous store."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}",
           "--rdzv-conf", f"is_host={int(host)}", "--max-restarts", "0", *ARGS, "--out", str(out), "--resume"]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _tree(pid):
    """pid and all its descendants (torchrun's workers are not in the agent's process group)."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            children.setdefault(int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def _kill(proc):
    for pid in _tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def test_two_nodes_killed_and_resumed_equal_one_node(tmp_path, free_port):
    out, port = tmp_path / "two", free_port
    a, b = _node(out, port, True), _node(out, port, False)
    log, deadline = out / "log.jsonl", time.monotonic() + 180
    try:
        while not (log.exists() and log.read_text().count("\n") >= 3):       # step 3 done, ckpt-2 written
            assert a.poll() is None and b.poll() is None, (a.poll(), b.poll())
            assert time.monotonic() < deadline, "the two-node run did not reach step 3"
            time.sleep(0.005)
        _kill(b)                                                             # one node dies mid-run
        a.wait(timeout=60)                                                   # the other fails at its next collective
    finally:
        for p in (a, b):
            if p.poll() is None:
                _kill(p)
    assert a.returncode != 0
    killed_at = max(json.loads(line)["step"] for line in log.read_text().splitlines())
    assert killed_at < STEPS, "the run finished before the kill"
    a, b = _node(out, port, True), _node(out, port, False)                   # relaunch both: resume
    try:
        assert a.wait(timeout=180) == 0, a.stdout.read()[-3000:]
        assert b.wait(timeout=60) == 0, b.stdout.read()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                _kill(p)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, STEPS + 1))
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, *ARGS, "--out", str(one)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    x, y = load_checkpoint(one / f"ckpt-{STEPS:07d}.pt"), load_checkpoint(out / f"ckpt-{STEPS:07d}.pt")
    for key in ("model", "ema"):
        for name, t in x[key].items():
            torch.testing.assert_close(y[key][name], t, rtol=1e-4, atol=2e-4, msg=f"{key}.{name}")
    losses = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (one, out)]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=1e-5)
