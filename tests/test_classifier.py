"""The noise-aware classifier p(c | x; sigma) against the mixture's exact posterior: accuracy and calibration
(expected calibration error) by sigma, and classifier guidance with it."""
import pytest
import torch

from toydiff import datasets, metrics, nets, samplers
from toydiff.classifier import train_classifier
from toydiff import guidance as G

# Measured (labels target, 3 layers x 64, 800 steps x 1024, 6000 test points):
#   sigma        0.02   0.1    0.3    0.7    1.5    4.0
#   accuracy     0.949  0.945  0.910  0.766  0.570  0.415
#   exact (Bayes) 0.949 0.946  0.911  0.766  0.576  0.422
#   ECE          0.008  0.004  0.009  0.012  0.016  0.010   (exact posterior: 0.003 0.002 0.007 0.012 0.013 0.007)
#   E|p - p*|_1  0.018  0.020  0.032  0.053  0.073  0.066
# Classifier guidance (unconditional exact model, scale 1): class accuracy 0.947 trained vs 0.939 exact posterior.
SIGMAS = (0.02, 0.1, 0.3, 0.7, 1.5, 4.0)


@pytest.fixture(scope="module")
def three():
    return datasets.three_gaussians()


@pytest.fixture(scope="module")
def classifier(three):
    model = nets.NoiseAwareClassifier(num_classes=3, width=64, depth=3, seed=0)
    return train_classifier(model, three, steps=800, batch_size=1024, lr_decay_steps=128,
                                     seed=0, progress=False).model


def _ece(probs, labels, bins=10):
    """Expected calibration error: sum over confidence bins of |accuracy - confidence| x share of samples."""
    conf, pred = probs.max(1)
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.double().mean() * ((pred[sel] == labels[sel]).double().mean() - conf[sel].mean()).abs()
    return float(ece)


@pytest.fixture(scope="module")
def by_sigma(three, classifier):
    """{sigma: (classifier accuracy, exact-posterior accuracy, classifier ECE, exact ECE, mean |p - p_exact|)}."""
    y, c = three.sample(6000, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(8))
    out = {}
    for sigma in SIGMAS:
        x = y + sigma * noise
        p, p_exact = classifier.log_prob(x, sigma).exp(), three.class_posterior(x, sigma)
        out[sigma] = ((p.argmax(1) == c).double().mean().item(), (p_exact.argmax(1) == c).double().mean().item(),
                      _ece(p, c), _ece(p_exact, c), (p - p_exact).abs().sum(1).mean().item())
    print("\nsigma  acc  exact_acc  ece  exact_ece  L1(p, p_exact)")
    print("\n".join(f"{s:5.2f} " + " ".join(f"{v:.3f}" for v in row) for s, row in out.items()))
    return out


@pytest.mark.parametrize("sigma", SIGMAS)
def test_accuracy_matches_the_exact_posterior(by_sigma, sigma):
    acc, bayes, *_ = by_sigma[sigma]
    assert bayes - 0.02 <= acc <= bayes + 0.01            # nothing beats the Bayes classifier (+ sampling noise)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_calibration(by_sigma, sigma):
    _, _, ece, ece_exact, l1 = by_sigma[sigma]
    assert ece < ece_exact + 0.03 and l1 < 0.1


def test_posterior_targets_train_too(three):
    model = nets.NoiseAwareClassifier(num_classes=3, width=32, depth=2, seed=1)
    res = train_classifier(model, three, steps=200, batch_size=256, target="posterior", seed=1, progress=False)
    x, _ = three.sample(2000, sigma=0.3, generator=torch.Generator().manual_seed(3))
    l1 = (res.model.log_prob(x, 0.3).exp() - three.class_posterior(x, 0.3)).abs().sum(1).mean()
    assert l1 < 0.15 and res.losses.shape == (200,)


def test_same_seed_same_classifier(three):
    def run(seed):
        model = nets.NoiseAwareClassifier(num_classes=3, width=16, depth=2, seed=0)
        return train_classifier(model, three, steps=20, batch_size=64, seed=seed, progress=False).model
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_classifier_guidance_with_the_trained_classifier(three, classifier):
    # Dhariwal & Nichol: the unconditional model + scale * grad log p(c|x). With the exact posterior and scale 1
    # this samples p(x|c) exactly; the trained classifier must come close, and a larger scale sharpens the class.
    cond = torch.arange(3).repeat_interleave(700)
    def run(log_posterior, scale):
        den = G.guided(three, G.ClassifierGuidance(log_posterior, scale, unconditional=True))
        x = samplers.sample(den, (cond.shape[0], 2), cond, steps=24, sigma_max=10.0,
                            generator=torch.Generator().manual_seed(0))
        return metrics.class_accuracy(x, three, cond)
    trained = run(lambda x, s: classifier.log_prob(x, s), 1.0)
    exact = run(three.class_log_posterior, 1.0)
    print(f"\nclass accuracy, classifier guidance scale 1: trained {trained:.3f}, exact posterior {exact:.3f}")
    assert abs(trained - exact) < 0.03
    assert run(lambda x, s: classifier.log_prob(x, s), 4.0) > trained + 0.02


@pytest.mark.parametrize("make, err, word", [
    (lambda m: train_classifier(nets.MLPDenoiser(num_classes=3), m, steps=1), TypeError, "model"),
    (lambda m: train_classifier(nets.NoiseAwareClassifier(num_classes=2), m, steps=1), ValueError, "classes"),
    (lambda m: train_classifier(nets.NoiseAwareClassifier(num_classes=3), m, steps=1, target="soft"),
     ValueError, "target"),
    (lambda m: train_classifier(nets.NoiseAwareClassifier(num_classes=3), m, steps=0), ValueError, "steps"),
    (lambda m: nets.NoiseAwareClassifier(num_classes=1), ValueError, "num_classes"),
    (lambda m: nets.NoiseAwareClassifier(num_classes=3)(torch.zeros(4, 3), 1.0), ValueError, r"\bx\b"),
    (lambda m: nets.NoiseAwareClassifier(num_classes=3)(torch.zeros(4, 2), -1.0), ValueError, "sigma"),
])
def test_bad_classifier_input(three, make, err, word):
    with pytest.raises(err, match=word):
        make(three)
