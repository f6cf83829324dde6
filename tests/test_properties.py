"""Property-based tests (hypothesis): for finite inputs (|x| <= 1e4, including exact zeros) and sigma in [0, 1e4]
(including 0 and tiny values), the exact distributions and every guided denoiser return finite values of the right
shape, and at sigma = 0 they return x itself. (Far beyond that, log p ~ -|x|^2 / 2 leaves the float range and is
-inf, honestly: about |x| > 1e19 in float32; denoisers stay finite.)"""
import pytest
import torch

from toydiff.denoiser import renoise_of, start_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toydiff import datasets, nets
from toydiff import guidance as G


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MIXTURES = {name: datasets.get(name) for name in ("three_gaussians", "tree", "rings")}

coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
sigma_value = st.one_of(st.just(0.0), st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False),
                        st.floats(1e-8, 1e-3))


@st.composite
def batches(draw, max_n=6):
    n = draw(st.integers(1, max_n))
    x = torch.tensor(draw(st.lists(st.tuples(coord, coord), min_size=n, max_size=n)), dtype=torch.float64)
    sigma = torch.tensor(draw(st.lists(sigma_value, min_size=n, max_size=n)), dtype=torch.float64)
    return x, sigma


def _finite(t, shape):
    assert t.shape == shape and torch.isfinite(t).all(), t


@pytest.mark.parametrize("name", sorted(MIXTURES))
@SETTINGS
@given(batch=batches(), cls=st.integers(-1, 1))
def test_mixture_is_finite_everywhere(name, batch, cls):
    mix, (x, sigma) = MIXTURES[name], batch
    cond = torch.full((x.shape[0],), cls)
    n = x.shape[0]
    _finite(mix.log_prob(x, sigma), (n,))
    _finite(mix.log_prob(x, sigma, cond.clamp_min(0)), (n,))
    _finite(mix.score(x, sigma.clamp_min(1e-8), cond), (n, 2))
    d = mix.denoise(x, sigma, cond)
    _finite(d, (n, 2))
    torch.testing.assert_close(d[sigma == 0], x[sigma == 0])                       # D(x; 0) = x
    post = mix.class_posterior(x, sigma)
    _finite(post, (n, mix.num_classes))
    torch.testing.assert_close(post.sum(1), torch.ones(n, dtype=x.dtype))


def _weak(mix):
    """A 'bad version' of the exact model (the denoiser at 1.3 x the noise level), exact at sigma = 0 like any denoiser."""
    return lambda x, s, c: mix(x, torch.as_tensor(s, dtype=x.dtype) * 1.3, c)


METHODS = {
    "cfg": lambda m: G.CFG(4.0),
    "cfg_interval_rescale": lambda m: G.CFG(lambda s: 1 + 5 * torch.exp(-s), interval=(0.1, 5.0), rescale=0.7),
    "auto": lambda m: G.AutoGuidance(_weak(m), 3.0, rescale=0.5),
    "classifier": lambda m: G.ClassifierGuidance(m.class_log_posterior, 3.0),
    "score_scaling": lambda m: G.ScoreScaling(2.0),
    "apg": lambda m: G.APG(6.0, norm_threshold=0.5, momentum=-0.5, eta=0.3),
    "apg_auto": lambda m: G.APG(6.0, on=G.AutoGuidance(_weak(m))),
    "cfgpp": lambda m: G.CFGpp(0.7),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@SETTINGS
@given(batch=batches(), cls=st.integers(-1, 2), w_big=st.booleans())
def test_guided_denoisers_are_finite(method, batch, cls, w_big):
    mix, (x, sigma) = MIXTURES["three_gaussians"], batch
    guidance = METHODS[method](mix)
    if w_big and not callable(guidance.w) and not isinstance(guidance, G.CFGpp):
        guidance.w = 50.0
    den = start_run(G.guided(mix, guidance), None)                               # one run (APG's momentum)
    cond = torch.full((x.shape[0],), cls)
    pair = renoise_of(den)
    d, d_renoise = pair(x, sigma, cond) if pair is not None else (den(x, sigma, cond),) * 2
    _finite(d, x.shape), _finite(d_renoise, x.shape)
    if not isinstance(guidance, G.ScoreScaling):                                  # every branch is x at sigma 0
        torch.testing.assert_close(d[sigma == 0], x[sigma == 0])


@SETTINGS
@given(batch=batches(), cls=st.integers(-1, 2), seed=st.integers(0, 3))
def test_network_denoiser_is_finite(batch, cls, seed):
    x, sigma = batch
    model = nets.MLPDenoiser(num_classes=3, width=16, depth=2, seed=seed).double()
    with torch.no_grad():
        for p in model.parameters():                                              # leave the zero-init behind
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype))
    cond = torch.full((x.shape[0],), cls)
    _finite(G.guided(model, G.CFG(3.0, rescale=0.5))(x, sigma, cond), x.shape)
    _finite(G.guided(model, G.APG(3.0, norm_threshold=1.0))(x, sigma, cond), x.shape)
