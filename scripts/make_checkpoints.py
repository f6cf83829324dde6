"""Regenerate the pretrained toy checkpoints shipped in toydiff/checkpoints/, bit for bit.

    python scripts/make_checkpoints.py           # train and write toydiff/checkpoints/*.pt, print sha256
    python scripts/make_checkpoints.py --check   # retrain into a temp dir and compare bytes with the shipped files

Training is seeded (toydiff.training draws everything from one torch.Generator) and torch.save writes no
timestamps, so the same seed gives the same bytes; --check verifies that.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import torch

from toydiff import zoo


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="retrain into a temp dir and compare with the shipped files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=zoo.CHECKPOINT_DIR)
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    models = zoo.train_models(args.seed, progress=False)
    if not args.check:
        for path in zoo.save_models(models, args.out, args.seed):
            print(f"{sha256(path)}  {path} ({path.stat().st_size} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ok = True
        for path in zoo.save_models(models, tmp, args.seed):
            shipped = Path(args.out) / path.name
            same = shipped.is_file() and sha256(shipped) == sha256(path)
            ok &= same
            print(f"{'identical' if same else 'DIFFERENT'}  {path.name}  {sha256(path)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
