"""The shipped digits model (imagenet_ext/checkpoints/digits_tiny.pt): it loads by name, CFG samples of it are
recognizable digits whose class accuracy rises with w, the labelled grid is written, and the export pipeline is
deterministic (`scripts/make_digits_checkpoint.py --check` rebuilds the shipped file itself bit for bit)."""
import pytest
import torch
from PIL import Image

from imagenet_ext import sample
from imagenet_ext import train as train_mod
from imagenet_ext.checkpoint import PRETRAINED, latest_checkpoint, load_denoiser
from imagenet_ext.digits import export_weights, recipe


def test_shipped_digits_model_gives_recognizable_guided_digits(tmp_path):
    assert PRETRAINED["digits"].stat().st_size < 4_000_000
    res = sample.main(["--ckpt", "digits", "--w", "1", "3", "--n", "40", "--steps", "12", "--no-progress",
                       "--out", str(tmp_path / "grid.png")])
    acc = res["accuracy"]                                     # rated by logistic regression on the real digits
    assert acc[1] >= 0.85 and acc[1] > acc[0], acc            # guidance makes the asked-for digit clearer
    img = Image.open(tmp_path / "grid.png")
    assert img.info["dpi"] == pytest.approx((150, 150), abs=0.1) and min(img.size) > 400


def test_export_is_deterministic_and_float16_changes_outputs_by_rounding_only(tmp_path):
    outs = []
    for run in ("a", "b"):
        train_mod.train(recipe(tmp_path / run, steps=3, warmup=1, no_progress=True))
        outs.append(export_weights(latest_checkpoint(tmp_path / run), tmp_path / f"{run}.pt"))
    assert outs[0].read_bytes() == outs[1].read_bytes()
    full, half = load_denoiser(latest_checkpoint(tmp_path / "a")), load_denoiser(outs[0])
    x, sigma, y = torch.randn(8, 3, 16, 16), torch.full((8,), 0.5), torch.arange(8)
    with torch.no_grad():
        err = (full(x, sigma, y) - half(x, sigma, y)).abs().max()
    assert 0 < err < 1e-2


def test_unknown_shipped_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="shipped model"):
        load_denoiser("digitz")
