"""Regenerate the checkpoints shipped in toydiff/checkpoints/ (the zoo's) and toydiff/checkpoints/bench/ (the
bench's, <dataset>/<role>.pt), bit for bit.

    python scripts/make_checkpoints.py [--only zoo|bench]           # train and write them, print sha256
    python scripts/make_checkpoints.py --check [--only zoo|bench]   # retrain into a temp dir, compare the bytes

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

from toydiff import bench_models, zoo

DIRS = {"zoo": zoo.CHECKPOINT_DIR, "bench": bench_models.CHECKPOINT_DIR}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(kind: str, directory: Path, seed: int) -> list[Path]:
    """Train the `kind` checkpoints from scratch and write them into `directory`."""
    if kind == "zoo":   # every MODEL_SPECS entry: the tree models and the thin tree's
        return [zoo.save_model(name, zoo.train_model(name, seed, progress=False), directory, seed)
                for name in zoo.MODEL_SPECS]
    return [path for name in bench_models.BENCH_DATASETS
            for path in bench_models.save_bench_models(name, bench_models.train_bench_models(name, seed), directory,
                                                       seed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="retrain into a temp dir and compare with the shipped files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(DIRS), help="one kind of checkpoints (default: both)")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    ok = True
    for kind in [args.only] if args.only else list(DIRS):
        if not args.check:
            for path in write(kind, DIRS[kind], args.seed):
                print(f"{sha256(path)}  {path} ({path.stat().st_size} bytes)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for path in write(kind, Path(tmp), args.seed):
                name = path.relative_to(tmp)
                shipped = DIRS[kind] / name
                same = shipped.is_file() and sha256(shipped) == sha256(path)
                ok &= same
                print(f"{'identical' if same else 'DIFFERENT'}  {kind}/{name}  {sha256(path)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
