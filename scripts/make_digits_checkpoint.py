"""Regenerate the shipped digits model imagenet_ext/checkpoints/digits_tiny.pt, bit for bit.

    python scripts/make_digits_checkpoint.py           # train (~3 min, one CPU thread), write the file, print sha256
    python scripts/make_digits_checkpoint.py --check   # retrain into a temp dir and compare bytes with the shipped file

Training follows imagenet_ext.digits.RECIPE on one thread with deterministic algorithms: every random draw comes
from generators seeded by (seed, step) and torch.save writes no timestamps, so the same seed gives the same bytes
on the same kind of CPU. Afterwards the class accuracy of CFG samples at w = 1, 2, 4 is printed (rated by
imagenet_ext.digits.digits_classifier).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from imagenet_ext import train as train_mod
from imagenet_ext.checkpoint import PRETRAINED, latest_checkpoint, load_denoiser
from imagenet_ext.digits import class_accuracy, digits_classifier, export_weights, recipe
from imagenet_ext.images import to_uint8
from imagenet_ext.sample import generate
from toydiff.training import torch_threads


def build(out: Path, run: Path) -> Path:
    """Train by RECIPE into `run` (one thread) and export the EMA weights to `out`."""
    train_mod.train(recipe(run, no_progress=True))
    return export_weights(latest_checkpoint(run), out)


def report(path: Path, ws: tuple[float, ...] = (1.0, 2.0, 4.0), per_class: int = 20) -> None:
    """Print the class accuracy of `per_class` CFG samples per digit at each w (Heun, 16 steps)."""
    clf, real = digits_classifier()
    labels = torch.arange(10).repeat_interleave(per_class)
    with torch_threads(1):
        x = generate(load_denoiser(path), labels, ws, steps=16, progress=False)
    accs = [class_accuracy(clf, to_uint8(x[i]), labels) for i in range(len(ws))]
    print(f"class accuracy ({per_class} samples per digit; the classifier scores {real:.3f} on held-out real digits): "
          + ", ".join(f"w={w:g}: {a:.3f}" for w, a in zip(ws, accs)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="retrain into a temp dir and compare with the shipped file")
    p.add_argument("--out", type=Path, default=PRETRAINED["digits"], help="where to write the model (default: shipped path)")
    a = p.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        new = build(Path(tmp) / a.out.name if a.check else a.out, Path(tmp) / "run")
        digest = hashlib.sha256(new.read_bytes()).hexdigest()
        if a.check:
            same = a.out.is_file() and hashlib.sha256(a.out.read_bytes()).hexdigest() == digest
            print(f"{'identical' if same else 'DIFFERENT'}  {a.out.name}  {digest}")
            return 0 if same else 1
    print(f"{digest}  {new} ({new.stat().st_size} bytes)")
    report(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
