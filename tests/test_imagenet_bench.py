"""benchmarks/bench_unet.py runs end to end in its CPU --smoke mode (the GPU numbers need a GPU)."""
import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_bench_unet_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_unet", ROOT / "benchmarks" / "bench_unet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (row,) = mod.main(["--smoke", "--json", str(tmp_path / "b.json")])
    assert row["config"] == "tiny" and row["train_images_per_s"] > 0 and row["mfu"] is None
    assert row["sample_images_per_s_batched"] > 0 and row["sample_images_per_s_two_forwards"] > 0
    assert (tmp_path / "b.json").is_file()
