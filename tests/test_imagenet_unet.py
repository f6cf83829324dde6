"""imagenet_ext.unet: the denoiser contract, null label and sizes of every named config (CPU)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagenet_ext.unet import CONFIGS, build, forward_flops
from toydiff.guidance import CFG, guided
from toydiff.denoiser import count_parameters

ROOT = Path(__file__).resolve().parents[1]


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialized layers (ADM's residual outputs, the final conv) make a fresh net return c_skip * x;
    give them small random values so the tests see the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


SMALL = {"tiny": {}, "xs": {"resolution": 16}, "s": {"resolution": 16, "model_channels": 64}}


@pytest.mark.parametrize("name", list(SMALL))
def test_contract_shapes_and_null_label(name):
    torch.manual_seed(0)
    m = _randomize(build(name, num_classes=7, **SMALL[name]))
    r = m.cfg.resolution
    x = torch.randn(3, 3, r, r)
    c = torch.tensor([0, 6, -1])
    with torch.no_grad():
        d = m(x, torch.tensor([0.5, 1.0, 2.0]), c)
        assert d.shape == x.shape and d.dtype == x.dtype and torch.isfinite(d).all()
        # sigma as float, 0-d, [N] and [N, 1, 1, 1] agree
        ref = m(x, torch.full((3,), 0.7), c)
        for s in (0.7, torch.tensor(0.7), torch.full((3, 1, 1, 1), 0.7)):
            torch.testing.assert_close(m(x, s, c), ref)
        # None == all -1 (the null label); the label matters; rows are independent of each other
        torch.testing.assert_close(m(x, 0.7, None), m(x, 0.7, torch.full((3,), -1)))
        assert not torch.allclose(m(x, 0.7, torch.tensor([1, 1, 1])), m(x, 0.7, None))
        torch.testing.assert_close(m(x[2:], 0.7, c[2:]), ref[2:])
        # sigma = 0 -> the identity (c_skip = 1, c_out = 0)
        torch.testing.assert_close(m(x, 0.0, c), x)


def test_bad_inputs():
    m = build("tiny")
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="cond"):
        m(x, 1.0, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="sigma"):
        m(x, float("nan"), None)
    with pytest.raises(ValueError, match="sigma"):
        m(x, -1.0, None)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        m(torch.randn(2, 1, 16, 16), 1.0, None)
    with pytest.raises(TypeError, match="cond"):
        m(x, 1.0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unknown UNet config"):
        build("huge")
    with pytest.raises(TypeError, match="unknown UNet option"):
        build("tiny", widht=3)


def test_cfg_is_one_batched_forward():
    m = _randomize(build("tiny"))
    calls = []
    m.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        d = guided(m, CFG(3.0))(x, 1.0, torch.tensor([0, 1, 2, 3]))
        d1, d0 = m(x, 1.0, torch.tensor([0, 1, 2, 3])), m(x, 1.0, None)
    assert calls[0] == 8 and len(calls) == 3
    torch.testing.assert_close(d, d0 + 3.0 * (d1 - d0), atol=1e-5, rtol=1e-5)


def test_adm64_size_and_flops():
    with torch.device("meta"):
        m = build("adm64")
    n = count_parameters(m)
    assert abs(n - 296e6) / 296e6 < 0.02, n
    gflops = forward_flops(m) / 1e9
    assert 200 < gflops < 240, gflops                   # ADM reports ~219 GFLOP per 64x64 image
    assert set(CONFIGS) == {"tiny", "xs", "s", "adm64"}


def test_cli_prints_counts():
    out = subprocess.run([sys.executable, "-m", "imagenet_ext.unet", "tiny"], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    assert "tiny" in out and "GFLOP/image" in out
