"""Regenerate the bench models shipped in toydiff/checkpoints/bench/, bit for bit.

    python scripts/make_bench_checkpoints.py           # train and write toydiff/checkpoints/bench/<dataset>.pt
    python scripts/make_bench_checkpoints.py --check   # retrain into a temp dir and compare bytes with the shipped files

Training is seeded (toydiff.training draws everything from one torch.Generator) and torch.save writes no
timestamps, so the same seed gives the same bytes; --check verifies that.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import torch

from toydiff import bench_models


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="retrain into a temp dir and compare with the shipped files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=bench_models.CHECKPOINT_DIR)
    parser.add_argument("--datasets", nargs="+", default=list(bench_models.BENCH_DATASETS))
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            t0 = time.perf_counter()
            models = bench_models.train_bench_models(name, args.seed)
            path = bench_models.save_bench_models(name, models, tmp if args.check else args.out)
            took = time.perf_counter() - t0
            if not args.check:
                print(f"{sha256(path)}  {path} ({path.stat().st_size} bytes, trained in {took:.1f} s)")
                continue
            shipped = Path(args.out) / path.name
            same = shipped.is_file() and sha256(shipped) == sha256(path)
            ok &= same
            print(f"{'identical' if same else 'DIFFERENT'}  {path.name}  {sha256(path)}  ({took:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
