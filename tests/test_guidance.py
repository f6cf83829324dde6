"""Guidance against its formulas on exact denoisers, on 2D points and image-shaped tensors."""
import math

import pytest
import torch

from toydiff import guidance as G
from toydiff.distributions import GaussianMixture


@pytest.fixture
def batch(gen):
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64) * 1.5
    sigma = torch.rand(64, generator=gen, dtype=torch.float64) * 2 + 0.05
    cond = torch.randint(0, 3, (64,), generator=gen)
    return x, sigma, cond


def _cfg_formula(mix, x, sigma, cond, w):
    # D_w = x + sigma^2 (w s(x|c) + (1 - w) s(x))
    s = sigma[:, None] ** 2
    return x + s * (w * mix.score(x, sigma, cond) + (1 - w) * mix.score(x, sigma))


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 4.0])
def test_cfg_is_tilted_score(three, batch, w):
    x, sigma, cond = batch
    torch.testing.assert_close(G.guided(three, G.CFG(w))(x, sigma, cond), _cfg_formula(three, x, sigma, cond, w),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w", [0.0, 2.5, 4.0])
def test_cfg_with_a_separate_unconditional_model(tree_mix, gen, w):
    # the autoguidance paper's toy: D_1 a model of class A alone, D_0 a separate model of both classes
    from toydiff import zoo
    from toydiff.denoiser import SeparateNull
    class_a = zoo.training_data(zoo.ModelSpec(classes=(0,)))
    calls = []

    def unconditional(x, s, cond):
        calls.append(cond)
        return tree_mix(x, s, cond)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    sigma = torch.rand(64, generator=gen, dtype=torch.float64) + 0.02
    zeros = torch.zeros(64, dtype=torch.long)
    pair = SeparateNull(class_a, unconditional)
    got = G.guided(pair, G.CFG(w))(x, sigma, zeros)
    torch.testing.assert_close(got, _cfg_formula(tree_mix, x, sigma, zeros, w), rtol=1e-6, atol=1e-6)
    assert calls == [None]
    mixed = torch.tensor([0, -1] * 32)                              # as a plain denoiser: rows by their label
    expect = torch.where((mixed < 0)[:, None], tree_mix(x, sigma, None), class_a(x, sigma, zeros))
    torch.testing.assert_close(pair(x, sigma, mixed), expect)
    torch.testing.assert_close(pair(x, sigma, None), tree_mix(x, sigma, None))
    for label in (0, torch.tensor(0)):                              # an int or 0-d label means every row
        torch.testing.assert_close(pair(x, sigma, label), class_a(x, sigma, zeros))
    torch.testing.assert_close(pair(x, sigma, -1), tree_mix(x, sigma, None))
    with pytest.raises(TypeError, match="unconditional"):
        SeparateNull(class_a, "net")


def test_cfg_separate_recipe_takes_d0_from_the_separate_model(tree_mix, gen):
    # the registry's "cfg_separate" is CFG on SeparateNull(main, uncond): D_0 = uncond(x, sigma, None)
    from toydiff import zoo
    class_a = zoo.training_data(zoo.ModelSpec(classes=(0,)))
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    sigma = torch.rand(64, generator=gen, dtype=torch.float64) + 0.02
    zeros = torch.zeros(64, dtype=torch.long)
    got = G.guided(class_a, G.make("cfg_separate", 3.0, uncond=tree_mix))(x, sigma, zeros)
    torch.testing.assert_close(got, _cfg_formula(tree_mix, x, sigma, zeros, 3.0), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="uncond"):
        G.make("cfg_separate", 3.0, uncond="net")


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_classifier_guidance_with_exact_posterior_is_cfg(three, batch, w):
    # Bayes: grad log p(c|x) = s(x|c) - s(x)
    x, sigma, cond = batch
    cfg = _cfg_formula(three, x, sigma, cond, w)
    on_uncond = G.ClassifierGuidance(three.class_log_posterior, scale=w, unconditional=True)
    on_cond = G.ClassifierGuidance(three.class_log_posterior, scale=w - 1)
    torch.testing.assert_close(G.guided(three, on_uncond)(x, sigma, cond), cfg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(G.guided(three, on_cond)(x, sigma, cond), cfg, rtol=1e-5, atol=1e-5)


def test_autoguidance_with_itself_is_noop_and_formula(three, tree_mix, batch):
    x, sigma, cond = batch
    torch.testing.assert_close(G.guided(three, G.AutoGuidance(three, 3.0))(x, sigma, cond), three(x, sigma, cond))
    # a "guide" that is a different model: D_w = D_g + w (D_main - D_g)
    def guide(x, s, c):
        return three(x, s, c) * 0.8
    d = three(x, sigma, cond)
    torch.testing.assert_close(G.guided(three, G.AutoGuidance(guide, 2.0))(x, sigma, cond), 0.8 * d + 2.0 * (0.2 * d))


def test_autoguidance_unconditional(three, batch):
    x, sigma, _ = batch
    out = G.guided(three, G.AutoGuidance(lambda x, s, c: three(x, s, c) * 0.5, 2.0))(x, sigma, None)
    torch.testing.assert_close(out, 1.5 * three(x, sigma, None))


def test_score_scaling(three, batch):
    x, sigma, cond = batch
    expected = x + 2.0 * sigma[:, None] ** 2 * three.score(x, sigma, cond)
    torch.testing.assert_close(G.guided(three, G.ScoreScaling(2.0))(x, sigma, cond), expected)


def test_no_guidance(three, batch):
    x, sigma, cond = batch
    torch.testing.assert_close(G.guided(three, G.NoGuidance())(x, sigma, cond), three(x, sigma, cond))


class CountingImageDenoiser:
    """A linear 'denoiser' on [N, 3, H, W] whose output depends on the label: lets us check shapes and calls."""

    def __init__(self):
        self.calls, self.batch_sizes = 0, []

    def __call__(self, x, sigma, cond):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        shift = torch.zeros(x.shape[0], dtype=x.dtype) if cond is None else (cond + 1).to(x.dtype)
        return x / (1 + s ** 2) + 0.1 * shift.reshape(-1, 1, 1, 1)


def test_cfg_is_shape_agnostic_and_batched(gen):
    den = CountingImageDenoiser()
    x = torch.randn(5, 3, 8, 8, generator=gen)
    cond = torch.tensor([0, 1, 2, 3, -1])
    out = G.guided(den, G.CFG(3.0))(x, 0.7, cond)
    assert den.calls == 1 and den.batch_sizes == [10]          # both branches in ONE forward
    d1, d0 = den(x, torch.full((5,), 0.7), cond), den(x, torch.full((5,), 0.7), torch.full_like(cond, -1))
    torch.testing.assert_close(out, d0 + 3.0 * (d1 - d0))
    torch.testing.assert_close(out[4], d1[4])                    # null rows are left unguided


def test_cfg_uses_twin_head_protocol(gen):
    class Twin:
        def __init__(self):
            self.pairs = 0

        def __call__(self, x, sigma, cond):
            raise AssertionError("CFG must use denoise_pair")

        def denoise_pair(self, x, sigma, cond):
            self.pairs += 1
            return x * 2, x

    twin = Twin()
    x = torch.randn(4, 2, generator=gen)
    torch.testing.assert_close(G.guided(twin, G.CFG(1.5))(x, 1.0, torch.zeros(4, dtype=torch.long)), 2.5 * x)
    assert twin.pairs == 1


def test_interval_turns_guidance_off_outside(three, batch):
    x, _, cond = batch
    sigma = torch.linspace(0.01, 3.0, 64, dtype=torch.float64)
    out = G.guided(three, G.CFG(3.0, interval=(0.5, 2.0)))(x, sigma, cond)
    inside = (sigma > 0.5) & (sigma <= 2.0)
    torch.testing.assert_close(out[inside], _cfg_formula(three, x, sigma, cond, 3.0)[inside])
    torch.testing.assert_close(out[~inside], three(x, sigma, cond)[~inside])
    # entirely outside: the guide is never evaluated
    den = CountingImageDenoiser()
    G.guided(den, G.CFG(3.0, interval=(0.5, 2.0)))(torch.randn(2, 3, 4, 4), 5.0, torch.tensor([0, 1]))
    assert den.batch_sizes == [2]


def test_weight_schedule_callable(three, batch):
    x, sigma, cond = batch
    out = G.guided(three, G.CFG(lambda s: 1 + s))(x, sigma, cond)
    w = (1 + sigma)[:, None]
    s2 = sigma[:, None] ** 2
    torch.testing.assert_close(out, x + s2 * (w * three.score(x, sigma, cond) + (1 - w) * three.score(x, sigma)))


def test_rescale_formula(three, batch):
    # points [N, 2]: the per-sample RMS |D| / sqrt(2) (the std of two coordinates depends on the axes)
    x, sigma, cond = batch
    phi = 0.7
    cfg = _cfg_formula(three, x, sigma, cond, 3.0)
    pos = three(x, sigma, cond)
    rms = lambda t: t.square().mean(1, keepdim=True).sqrt()                        # noqa: E731
    out = G.guided(three, G.CFG(3.0, rescale=phi))(x, sigma, cond)
    torch.testing.assert_close(out, phi * cfg * rms(pos) / rms(cfg) + (1 - phi) * cfg)


def test_rescale_on_images_is_lin_et_al_std_and_on_points_rotation_equivariant(three, batch):
    d1, d0 = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    i = lambda c: torch.arange(len(c)) % 4                                     # noqa: E731  (CFG batches 2 x 4)
    den = lambda x, s, c: torch.where((c >= 0).reshape(-1, 1, 1, 1), d1[i(c)], d0[i(c)])   # noqa: E731
    out = G.guided(den, G.CFG(3.0, rescale=1.0))(torch.zeros(4, 3, 5, 5, dtype=torch.float64), 1.0, torch.zeros(4, dtype=torch.long))
    cfg = d0 + 3.0 * (d1 - d0)
    std = lambda t: t.flatten(1).std(1, unbiased=False).reshape(-1, 1, 1, 1)   # noqa: E731
    torch.testing.assert_close(out, cfg * std(d1) / std(cfg))
    x, sigma, cond = batch
    r = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    rotated = GaussianMixture(three.weights, three.means @ r.T, r @ three.covs @ r.T, three.labels)
    g = G.CFG(4.0, rescale=0.7)
    torch.testing.assert_close(G.guided(rotated, g)(x @ r.T, sigma, cond), G.guided(three, g)(x, sigma, cond) @ r.T)


def test_ho_salimans_conversion():
    assert G.from_ho_salimans(0.0) == 1.0 and G.to_ho_salimans(4.0) == 3.0
    assert G.to_ho_salimans(G.from_ho_salimans(0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="w_hs"):
        G.from_ho_salimans(-2.0)


@pytest.mark.parametrize("make, err, word", [
    (lambda: G.CFG(float("nan")), ValueError, "w must be finite, got nan"),
    (lambda: G.CFG(-1.0), ValueError, "w must be >= 0, got -1.0"),
    (lambda: G.CFG("2"), TypeError, "w must be a real number, got str"),
    (lambda: G.CFG(2.0, interval=(2.0, 1.0)), ValueError, r"interval must satisfy sigma_lo < sigma_hi"),
    (lambda: G.CFG(2.0, rescale=1.5), ValueError, r"rescale must lie in \[0, 1\], got 1.5"),
    (lambda: G.AutoGuidance("not a model", 2.0), TypeError, "guide must be a denoiser callable"),
    (lambda: G.ClassifierGuidance(None, 1.0), TypeError, "classifier must be a callable"),
    (lambda: G.guided(lambda x, s, c: x, "cfg"), TypeError, "guidance must be a toydiff.guidance.Guidance"),
    (lambda: G.make("magic"), ValueError, "guidance must be one of .*'cfg'.*, got 'magic'"),
    (lambda: G.make("autoguidance", 2.0), ValueError, "guidance 'autoguidance' needs guide"),
    (lambda: G.make("none", 2.0), ValueError, "guidance 'none' takes no weight other than 1"),
    (lambda: G.register("cfg", G.CFG), ValueError, "guidance recipe 'cfg' is already registered"),
])
def test_bad_construction(make, err, word):
    with pytest.raises(err, match=f"^{word}"):
        make()


def test_registry_builds_the_named_methods(three):
    """make(name, w, ...) gives the same guided denoiser as the class it names, with the modifiers passed on."""
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, cond = torch.linspace(0.1, 3.0, 32, dtype=torch.float64), torch.arange(32) % 3
    weak = lambda x, s, c: three(x, (torch.as_tensor(s, dtype=x.dtype) ** 2 + 0.09).sqrt(), c)  # noqa: E731
    pairs = [(G.make("cfg", 2.5, rescale=0.5), G.CFG(2.5, rescale=0.5)),
             (G.make("autoguidance", 2.0, guide=weak), G.AutoGuidance(weak, 2.0)),
             (G.make("cfg_interval", 3.0), G.CFG(3.0, interval=G.CFG_INTERVAL)),
             (G.make("score_scaling"), G.ScoreScaling(G.default_weight("score_scaling"))),
             (G.make("classifier", 3.0, classifier=three.class_log_posterior), G.ClassifierGuidance(three.class_log_posterior, 2.0))]
    for made, direct in pairs:
        assert type(made) is type(direct)
        torch.testing.assert_close(G.guided(three, made)(x, sigma, cond), G.guided(three, direct)(x, sigma, cond))
    assert G.names(()) == [k for k, r in G.RECIPES.items() if not r.needs]
    assert "autoguidance" in G.names(("guide",)) and "classifier" not in G.names(("guide",))


def test_recipes_are_data_and_the_registry_owns_the_weight_rule():
    """A recipe prints and saves as plain data (json round trip), and rebuilding from that data gives the same
    guidance; the registry alone says which recipes take a weight: "none" takes 1 or nothing, every other its
    default when w is left out."""
    import json
    for name, recipe in G.RECIPES.items():
        data = json.loads(json.dumps(recipe.to_dict()))
        assert data["name"] == name and data["method"] == recipe.method.__name__ and data["needs"] == list(recipe.needs)
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in data["params"].items()}
        assert G.Recipe(name, getattr(G, data["method"]), params, tuple(data["needs"]), data["default_w"],
                        data["help"], data["formula"], data["paper"], tuple(data["weight_range"])) == recipe
        assert G.describe(name) == recipe.help + (f" ({recipe.paper})" if recipe.paper else "") + "\n" + recipe.formula
    assert [k for k in G.RECIPES if not G.takes_weight(k)] == ["none"]
    assert G.weight("none", None) == G.weight("none", 1.0) == 1.0 and G.weight("cfg", None) == 4.0
    with pytest.raises(ValueError, match="takes no weight other than 1: w=3 would be unused"):
        G.weight("none", 3.0)
    assert repr(G.make("apg")) == repr(G.APG(4.0, eta=0.0, norm_threshold=0.0, momentum=-0.5))


def test_degraded_input_noise_rows_do_not_depend_on_their_order():
    """zoo.Degraded(input_noise) draws its noise per sampling run from its seed: the degradation study's rows are
    the same whichever ran before (two draws of one object are equal; a guided row after an unguided one equals
    it run alone), and the noise acts (the samples differ from the undegraded model's)."""
    from pathlib import Path

    from toydiff import training, zoo
    main = training.load_model(Path(zoo.CHECKPOINT_DIR) / "tree_main.pt")
    degraded = zoo.Degraded(main, "input_noise", 0.3, seed=0)
    first = zoo.draw(degraded, 200, 0, seed=1)
    torch.testing.assert_close(zoo.draw(degraded, 200, 0, seed=1), first, rtol=0, atol=0)
    assert (first - zoo.draw(main, 200, 0, seed=1)).abs().max() > 1e-3
    guided_after = zoo.draw(G.guided(degraded, G.AutoGuidance(zoo.Degraded(main, "input_noise", 0.6, seed=0), 2.0)),
                            200, 0, seed=1)
    alone = zoo.Degraded(main, "input_noise", 0.3, seed=0)
    guided_alone = zoo.draw(G.guided(alone, G.AutoGuidance(zoo.Degraded(main, "input_noise", 0.6, seed=0), 2.0)),
                            200, 0, seed=1)
    torch.testing.assert_close(guided_after, guided_alone, rtol=0, atol=0)
    with pytest.raises(ValueError, match="start_run"):
        degraded(first, 1.0, torch.zeros(200, dtype=torch.long))


def test_cfg_needs_labels(three):
    with pytest.raises(ValueError, match="cond"):
        G.guided(three, G.CFG(2.0))(torch.zeros(3, 2), 0.5, None)


def test_guide_of_other_shape_is_refused(three):
    bad_guide = G.AutoGuidance(lambda x, s, c: torch.zeros(x.shape[0], 3), 2.0)
    with pytest.raises(ValueError, match="guide"):
        G.guided(three, bad_guide)(torch.zeros(3, 2), 0.5, torch.zeros(3, dtype=torch.long))


def test_bad_schedule_output(three):
    with pytest.raises(ValueError, match="w\\(sigma\\)"):
        G.guided(three, G.CFG(lambda s: s * math.nan))(torch.zeros(3, 2), 0.5, torch.zeros(3, dtype=torch.long))
