"""imagenet_ext.sample through toydiff.guidance / toydiff.samplers, and imagenet_ext.fid with a randomly
initialized Inception of the real architecture (reduced input size for speed)."""
import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn

from imagenet_ext import fid, sample
from toydiff.training import save_checkpoint
from imagenet_ext.inception import WEIGHTS_NAME, FIDInceptionV3, load_inception
from imagenet_ext.unet import build
from toydiff.guidance import CFG, AutoGuidance, NoGuidance, guided
from toydiff.samplers import sample as toy_sample


def _ckpt(path, seed, channels=16):
    torch.manual_seed(seed)
    ov = {"resolution": 8, "in_channels": 3, "num_classes": 4, "model_channels": channels}
    m = build("tiny", **ov)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    save_checkpoint(path, m, m, torch.optim.Adam(m.parameters()), 1, {}, model_config={"name": "tiny", "overrides": ov})
    return m.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    main, guide = _ckpt(d / "main.pt", 0), _ckpt(d / "guide.pt", 1, channels=8)
    return d, main, guide


def test_generate_matches_toydiff_directly(ckpts):
    _, m, g = ckpts
    labels = torch.tensor([0, 1, 2, 3, 0])
    x = sample.generate(m, labels, [1.0, 2.5], guidance="cfg", steps=3, seed=7, progress=False)
    assert x.shape == (2, 5, 3, 8, 8)                    # the values: compared with toydiff's sampler below
    noise = torch.randn((5, 3, 8, 8), generator=torch.Generator().manual_seed(7 * 1_000_003)) * 80.0
    with torch.no_grad():
        ref = toy_sample(guided(m, CFG(2.5)), noise, labels, steps=3)
        unguided = toy_sample(guided(m, NoGuidance()), noise, labels, steps=3)
        auto = toy_sample(guided(m, AutoGuidance(g, 2.0)), noise, labels, steps=3)
    torch.testing.assert_close(x[1], ref)
    torch.testing.assert_close(x[0], unguided)                                  # w = 1 is no guidance
    xa = sample.generate(m, labels, [2.0], guidance="autoguidance", guide=g, steps=3, seed=7, progress=False)
    torch.testing.assert_close(xa[0], auto)
    assert not torch.allclose(xa[0], unguided)
    # the guidance modifiers pass through unchanged: an interval and a rescale as toydiff.guidance applies them
    xi = sample.generate(m, labels, [2.5], guidance="cfg", interval=(0.5, 5.0), rescale=0.7, steps=3, seed=7,
                         progress=False)
    with torch.no_grad():
        ref_i = toy_sample(guided(m, CFG(2.5, interval=(0.5, 5.0), rescale=0.7)), noise, labels, steps=3)
    torch.testing.assert_close(xi[0], ref_i)


def test_sample_cli_grid_and_npz(ckpts, tmp_path):
    d, _, _ = ckpts
    res = sample.main(["--ckpt", str(d / "main.pt"), "--guidance", "cfg", "--w", "1", "2", "--n", "8", "--steps", "2",
                       "--sampler", "euler", "--no-progress", "--out", str(tmp_path / "g.png"), str(tmp_path / "s.npz")])
    with Image.open(tmp_path / "g.png") as grid:                # a real PNG at the figure rule's 150 dpi
        assert grid.format == "PNG" and round(grid.info["dpi"][0]) == 150 and grid.width > grid.height > 0
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (16, 8, 8, 3) and z["images"].dtype == np.uint8
    assert z["labels"].tolist() == [0, 1, 2, 3] * 4 and z["w"].tolist() == [1.0] * 8 + [2.0] * 8
    assert res["images"].shape == (2, 8, 3, 8, 8)
    sample.main(["--ckpt", str(d / "main.pt"), "--guidance", "autoguidance", "--guide-ckpt", str(d / "guide.pt"), "--w", "2",
                 "--interval", "0.3", "5", "--n", "4", "--steps", "2", "--no-progress", "--out", str(tmp_path / "a.npz")])
    assert np.load(tmp_path / "a.npz")["images"].shape == (4, 8, 8, 3)


def _random_inception(seed=0, size=75):
    """Random weights with He init, so that features do not vanish through ~50 layers (BN is identity in eval)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3(input_size=size)
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    return net.eval()


def test_fid_of_a_set_with_itself_is_zero_and_cli(tmp_path):
    net = _random_inception()
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(0, 256, (24, 3, 16, 16), dtype=np.uint8))
    b = a.flip(-1).roll(3, dims=-2) // 2
    fa, la = fid.inception_features(net, a, batch=12)
    fb, _ = fid.inception_features(net, b, batch=12)
    assert fa.shape == (24, 2048) and la.shape == (24, 1008) and fa.std() > 1e-3
    mu_a, s_a = fid.feature_stats(fa)
    mu_b, s_b = fid.feature_stats(fb)
    scale = np.trace(s_a)
    assert abs(fid.frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-6 * scale
    assert fid.frechet_distance(mu_a, s_a, mu_b, s_b) > 1e-2 * scale
    is_mean, _ = fid.inception_score(la, splits=2)
    assert 1.0 <= is_mean <= 1008
    # the CLI loads weights by path; samples npz vs reference computed from an npz and cached as mu/sigma
    torch.save(net.state_dict(), tmp_path / WEIGHTS_NAME)
    np.savez(tmp_path / "s.npz", images=a.permute(0, 2, 3, 1).numpy())
    args = [str(tmp_path / "s.npz"), "--inception", str(tmp_path / WEIGHTS_NAME), "--input-size", "75",
            "--no-progress", "--device", "cpu"]
    r = fid.main([*args, "--ref", str(tmp_path / "s.npz"), "--save-ref", str(tmp_path / "ref.NPZ")])
    assert abs(r["fid"]) < 1e-6 * scale and r["n"] == 24
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ref")) == ["ref.NPZ"]  # the name as given
    assert fid.main([*args, "--ref", str(tmp_path / "ref.NPZ")])["fid"] == pytest.approx(r["fid"], abs=1e-9 * scale)
    mu_r, s_r = fid.reference_stats(str(tmp_path / "ref.NPZ"), None, None)        # cached stats load back
    np.testing.assert_allclose(mu_r, mu_a, rtol=1e-3, atol=1e-6)  # float32, other batch split


def test_frechet_distance_on_known_gaussians():
    rng = np.random.default_rng(1)
    # diagonal covariances: FID = ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    exact = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(exact, rel=1e-10)
    # full covariances (incl. a singular one): the eigen route agrees with scipy's sqrtm formula
    A, B = rng.normal(size=(8, 8)), rng.normal(size=(8, 3))
    s1, s2 = A @ A.T, B @ B.T
    assert fid.frechet_distance(m1[:1].repeat(8), s1, np.zeros(8), s2) == pytest.approx(
        fid.frechet_distance_sqrtm(m1[:1].repeat(8), s1, np.zeros(8), s2), rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(m1, np.diag(a), m2[:5], np.diag(b[:5]))


def test_missing_or_wrong_inception_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_inception(tmp_path / WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_inception(None)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an FID Inception-v3 state dict"):
        load_inception(tmp_path / "wrong.pth")
