"""zoo.guided_denoiser(..., uncond=D_0) swaps CFG's D_0 (notebook 04: the exact vs the learned D_0), and
metrics.outliers marks exactly the samples outlier_fraction counts (figures.samples_on_tree draws them red)."""
import pytest
import torch

from toydiff import datasets, metrics, zoo


@pytest.fixture(scope="module")
def models():
    return zoo.pretrained(progress=False)


def test_cfg_with_a_given_uncond_uses_it_as_d0(models):
    tree = datasets.tree()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 0.5
    cond = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        d1 = models.main(x, 0.1, cond).double()
        for d0_model, d0 in ((tree, tree(x.double(), 0.1, None)), (None, models.uncond(x, 0.1, None).double())):
            guided = zoo.guided_denoiser(models, "cfg", 4.0, uncond=d0_model)
            torch.testing.assert_close(guided(x, 0.1, cond).double(), d0 + 4.0 * (d1 - d0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="uncond"):
        zoo.guided_denoiser(models, "none", uncond=tree)
    with pytest.raises(ValueError, match="uncond"):
        zoo.guided_denoiser(models, "cfg_dropout", uncond=tree)


def test_outliers_mask_is_what_outlier_fraction_counts():
    tree = datasets.tree()
    x = tree.sample(500, cond=0, generator=torch.Generator().manual_seed(3))[0]
    x = torch.cat([x, torch.tensor([[5.0, 5.0], [-4.0, 3.0]])])            # two points far from every branch
    mask = metrics.outliers(x, tree, 0)
    assert mask.dtype == torch.bool and mask[-2:].all()
    assert float(mask.double().mean()) == metrics.outlier_fraction(x, tree, 0)
    assert int(mask[:-2].sum()) < 20                                          # true samples: about 1%


def test_sweep_continues_cfg_interval_from_the_unguided_path(models):
    """The sweep runs cfg_interval from the main model's trajectory where its interval begins (the steps before call
    the main model alone): the samples of a whole run, bit for bit; a method without an interval is drawn whole."""
    from toydiff.app import figures
    from toydiff.toy.zoo import draw, guided_denoiser
    _, path = draw(models.main, 300, 0, 5, trajectory=True)
    for method, w in (("cfg_interval", 2.0), ("cfg_interval", 6.0), ("cfg", 3.0)):
        den = guided_denoiser(models, method, w)
        assert torch.equal(figures._draw_after(den, path, 0, 5), draw(den, 300, 0, 5))
