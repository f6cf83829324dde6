"""benchmarks/bench_unet.py runs end to end in its CPU --smoke mode (the GPU numbers need a GPU): its row is
consistent with itself (the derived figures are the ones its definitions give) and is what the json file holds."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_unet_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_unet", ROOT / "benchmarks" / "bench_unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (row,) = mod.main(["--smoke", "--json", str(tmp_path / "b.json")])
    assert (row["config"], row["resolution"], row["batch"], row["sample_steps"]) == ("tiny", 16, 4, 3)
    assert row["mfu"] is None                                     # no bf16 peak is known for a CPU
    # training FLOP rate = 3 forward passes' worth per image (forward + backward), at the measured image rate
    flops = 3 * row["fwd_gflop_per_image"] * 1e9 * row["train_images_per_s"]
    assert row["train_tflops"] == pytest.approx(flops / 1e12)
    assert row["sample_speedup_batched"] == pytest.approx(row["sample_images_per_s_batched"]
                                                         / row["sample_images_per_s_two_forwards"])
    assert json.loads((tmp_path / "b.json").read_text()) == [row]
