"""Bad input across the library and the CLIs: each case must raise a clear error whose message names the
argument (DESIGN.md, Conventions). One table; `word` is a regex the message (or the CLI's stderr) must contain."""
import io
import json
import math
import pickle
import re
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from toydiff import bench, bench_models, classifier, datasets, histogram, metrics, nets, samplers, training
from toydiff import guidance as G
from toydiff.denoiser import VPEpsDenoiser
from toydiff.distributions import GaussianMixture


THREE = datasets.three_gaussians()
X = torch.randn(4, 2)
C = torch.tensor([0, 1, 2, -1])


def _model(**kw):
    return nets.MLPDenoiser(num_classes=3, width=8, depth=2, **kw)


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _checkpoint(tmp_path, model):
    path = tmp_path / "ck.pt"
    training.train(model, THREE, steps=2, batch_size=8, pool_size=64, progress=False, checkpoint=path)
    return path


def _truncated(tmp_path):
    good = _checkpoint(tmp_path, _model())
    data = good.read_bytes()
    return _write(tmp_path, "cut.pt", data[: len(data) // 2])


def _not_toydiff(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def _resume_other_model(tmp_path):
    path = _checkpoint(tmp_path, _model())
    training.train(nets.MLPDenoiser(num_classes=3, width=16, depth=2), THREE, steps=4, batch_size=8, pool_size=64,
                   progress=False, checkpoint=path, resume=True)


def _cli(*argv):
    from toydiff.cli import main
    return main(list(argv))


def _imagenet(module, *argv):
    import importlib
    return importlib.import_module(f"imagenet_ext.{module}").main(list(argv))


def _checkpoint_in_use(tmp_path):
    from toydiff.runs import RunLock
    with RunLock(tmp_path / "ck.pt", directory=False):
        _checkpoint(tmp_path, _model())


def _pickle_of_missing_module(tmp_path):
    import sys
    import types
    mod = types.ModuleType("toydiff_gone_module")
    exec("class Thing:\n    pass", mod.__dict__)
    sys.modules[mod.__name__] = mod
    mod.Thing.__module__ = mod.__name__
    try:
        torch.save({"format": "toydiff-checkpoint", "thing": mod.Thing()}, tmp_path / "gone.pt")
    finally:
        del sys.modules[mod.__name__]
    return training.load_model(tmp_path / "gone.pt")


def _imagenet_train_locked(tmp_path):
    from toydiff.runs import RunLock
    with RunLock(tmp_path / "run", directory=True):
        _imagenet_train(tmp_path)


def _far_apart():
    return GaussianMixture([1, 1], [[0, 0], [100, 0]], [[[1, 0], [0, 1]]] * 2, labels=[0, 1])


def _zoo():
    from toydiff import zoo
    return zoo


def _imagenet_train(tmp_path, *argv):
    return _imagenet("train", "--data", "digits", "--resolution", "8", "--config", "tiny", "--channels", "8",
                     "--batch", "4", "--steps", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"),
                     *argv)


def _flipped_pickle(tmp_path):
    """An ImageNet-64 batch file whose bytes name a module that does not exist (one flipped byte)."""
    from imagenet_ext.data import load_imagenet64_file
    data = pickle.dumps({"data": np.zeros((2, 3 * 8 * 8), np.uint8), "labels": [1, 2]})
    (tmp_path / "val_data").write_bytes(data.replace(b"numpy", b"Bumpy", 1))
    return load_imagenet64_file(tmp_path / "val_data", 8)


def _nan_null(x, sigma, cond):
    """The exact denoiser, NaN on the null label (a broken unconditional branch)."""
    d = THREE.denoise(x, sigma, None if cond is None else cond.clamp(0))
    return d if cond is None else torch.where((cond < 0)[:, None], math.nan, d)


CASES = {
    # ---- distributions: shapes, dtypes, sigma, labels, empty batches ----
    "x of wrong shape": (lambda p: THREE.log_prob(torch.zeros(4, 3)), ValueError, r"\bx\b"),
    "x of int dtype": (lambda p: THREE.score(torch.zeros(4, 2, dtype=torch.long), 1.0), TypeError, r"\bx\b"),
    "x with NaN": (lambda p: THREE.denoise(torch.tensor([[0.0, math.nan]]), 1.0), ValueError, r"\bx\b"),
    "empty batch": (lambda p: THREE.denoise(torch.zeros(0, 2), 1.0), ValueError, r"\bx\b"),
    "sigma NaN": (lambda p: THREE.denoise(X, math.nan), ValueError, "sigma"),
    "sigma inf": (lambda p: THREE.score(X, torch.full((4,), math.inf)), ValueError, "sigma"),
    "sigma negative": (lambda p: THREE.denoise(X, -0.1), ValueError, "sigma"),
    "sigma of wrong shape": (lambda p: THREE.denoise(X, torch.ones(5)), ValueError, "sigma"),
    "sigma a string": (lambda p: THREE.denoise(X, "1.0"), TypeError, "sigma"),
    "label out of range": (lambda p: THREE.denoise(X, 1.0, torch.tensor([0, 1, 2, 3])), ValueError, "cond"),
    "label below -1": (lambda p: THREE.log_prob(X, 0.0, torch.tensor([0, 1, 2, -2])), ValueError, "cond"),
    "label of float dtype": (lambda p: THREE.denoise(X, 1.0, torch.zeros(4)), TypeError, "cond"),
    "labels of wrong length": (lambda p: THREE.denoise(X, 1.0, torch.zeros(3, dtype=torch.long)), ValueError, "cond"),
    "unknown dataset": (lambda p: datasets.get("swissroll"), ValueError, "dataset"),
    # ---- networks ----
    "net input of wrong dim": (lambda p: _model()(torch.zeros(4, 3), 1.0), ValueError, r"\bx\b"),
    "net label out of range": (lambda p: _model()(X, 1.0, torch.tensor([0, 1, 2, 3])), ValueError, "cond"),
    "net negative sigma": (lambda p: _model()(X, torch.tensor([1.0, 1.0, -1.0, 1.0])), ValueError, "sigma"),
    # ---- guidance ----
    "weight NaN": (lambda p: G.CFG(math.nan), ValueError, r"\bw\b"),
    "weight inf": (lambda p: G.AutoGuidance(THREE, math.inf), ValueError, r"\bw\b"),
    "weight negative": (lambda p: G.ClassifierGuidance(THREE.class_log_posterior, -1.0), ValueError, "scale"),
    "weight schedule NaN": (lambda p: G.guided(THREE, G.CFG(lambda s: s * math.nan))(X, 1.0, C), ValueError,
                            r"w\(sigma\)"),
    "rescale above 1": (lambda p: G.CFG(2.0, rescale=2.0), ValueError, "rescale"),
    "interval reversed": (lambda p: G.CFG(2.0, interval=(1.0, 0.5)), ValueError, "interval"),
    "CFG without labels": (lambda p: G.guided(THREE, G.CFG(2.0))(X, 1.0, None), ValueError, "cond"),
    "guide of another shape": (lambda p: G.guided(THREE, G.AutoGuidance(lambda x, s, c: x[:, :1], 2.0))(X, 1.0, C),
                               ValueError, "guide"),
    "guide not callable": (lambda p: G.AutoGuidance("tree_guide.pt", 2.0), TypeError, "guide"),
    "classifier of wrong output": (lambda p: G.guided(THREE, G.ClassifierGuidance(lambda x, s: x.sum(1)))(X, 1.0, C),
                                   ValueError, "classifier"),
    "APG momentum out of range": (lambda p: G.APG(2.0, momentum=-1.0), ValueError, "momentum"),
    "CFG++ lambda above 1": (lambda p: G.CFGpp(2.0), ValueError, "lambda"),
    "CFG++ lambda schedule above 1": (lambda p: G.guided(THREE, G.CFGpp(lambda s: 1 + s))(X, 1.0, C), ValueError,
                                      "lambda"),
    "CFG++ with heun": (lambda p: samplers.sample(G.guided(THREE, G.CFGpp(0.5)), (4, 2), 0), ValueError, "method"),
    "recipe without its guide": (lambda p: G.make("autoguidance", 2.0), ValueError, "guidance 'autoguidance' needs guide"),
    "VP table not decreasing": (lambda p: VPEpsDenoiser(lambda x, t, c: x, torch.linspace(0.1, 0.9, 10)), ValueError,
                                "alphas_cumprod must be a 1-d tensor"),
    # ---- samplers ----
    "eta outside ddim": (lambda p: samplers.sample(THREE, (4, 2), method="euler", eta=0.5), ValueError,
                         "eta is a parameter of method 'ddim' only"),
    "sigmas and steps together": (lambda p: samplers.sample(THREE, (4, 2), sigmas=samplers.edm_sigmas(4), steps=4),
                                  ValueError, "do not also pass steps"),
    "unknown sampler": (lambda p: samplers.sample(THREE, (4, 2), method="dpm++"), ValueError, "method"),
    "unknown schedule": (lambda p: samplers.sample(THREE, (4, 2), schedule="cosine"), ValueError, "schedule"),
    "empty sample shape": (lambda p: samplers.sample(THREE, (0, 2)), ValueError, "shape_or_noise"),
    "sampler steps float": (lambda p: samplers.sample(THREE, (4, 2), steps=3.5), TypeError, "steps"),
    # ---- training and checkpoints ----
    "unknown loss": (lambda p: training.train(_model(), THREE, steps=1, loss="l1", progress=False), ValueError, "loss"),
    "p_uncond above 1": (lambda p: training.train(_model(), THREE, steps=1, p_uncond=1.5, progress=False), ValueError,
                         "p_uncond"),
    "data labels out of range": (lambda p: training.train(_model(), (X, torch.tensor([0, 1, 2, 5])), steps=1,
                                                          progress=False), ValueError, "labels"),
    "missing checkpoint": (lambda p: training.load_model(p / "nope.pt"), FileNotFoundError, "nope.pt"),
    "garbage checkpoint": (lambda p: training.load_model(_write(p, "junk.pt", b"not a zip" * 10)), ValueError,
                           "junk.pt"),
    "truncated checkpoint": (lambda p: training.load_model(_truncated(p)), ValueError, "cut.pt"),
    "foreign checkpoint": (lambda p: training.load_model(_not_toydiff(p)), ValueError, "not a toydiff checkpoint"),
    "resume into another model": (_resume_other_model, ValueError, "checkpoint"),
    "classifier input of wrong dim": (lambda p: nets.NoiseAwareClassifier(num_classes=3)(torch.zeros(4, 3), 1.0),
                                      ValueError, r"\bx\b"),
    "classifier for another mixture": (lambda p: classifier.train_classifier(nets.NoiseAwareClassifier(num_classes=2),
                                                                           THREE, steps=1), ValueError, "classes"),
    # ---- metrics ----
    "metric points of wrong shape": (lambda p: metrics.precision_recall(torch.zeros(10, 3), torch.zeros(10, 2)),
                                     ValueError, "real"),
    # ---- CLIs ----
    "cli sample --n 0": (lambda p: _cli("sample", "--n", "0", "--out", str(p / "s.pt")), SystemExit, "--n"),
    "cli unknown guidance": (lambda p: _cli("sample", "--guidance", "magic"), SystemExit,
                             "argument --guidance: invalid choice 'magic'"),
    "cli unknown sampler": (lambda p: _cli("sample", "--sampler", "rk4"), SystemExit,
                            "argument --sampler: invalid choice 'rk4'"),
    "cli negative weight": (lambda p: _cli("sample", "--guidance", "cfg", "--w", "-2", "--n", "4",
                                           "--out", str(p / "s.pt"), "--no-progress"), SystemExit, "--w"),
    "cli CFG++ with heun": (lambda p: _cli("sample", "--guidance", "cfgpp", "--n", "4", "--out", str(p / "s.pt"),
                                           "--no-progress"), SystemExit, "method 'heun' cannot run"),
    "cli unknown figure": (lambda p: _cli("figure", "nosuch"), SystemExit, "name"),
    "cli train without --out": (lambda p: _cli("train"), SystemExit, "--out"),
    "cli bench unknown method": (lambda p: _cli("bench", "--methods", "magic"), SystemExit, "unknown method"),
    "bench unknown dataset": (lambda p: bench.run(datasets=["mnist"]), ValueError, "unknown dataset"),
    "bench missing checkpoint": (lambda p: bench_models.load_bench_models("spirals", p), FileNotFoundError,
                                 "bench checkpoint not found"),
    "histogram points of 3 dims": (lambda p: histogram.histogram_divergence(torch.zeros(4, 3), THREE, 0), ValueError,
                                   "x"),
    "histogram unknown class": (lambda p: histogram.class_box(THREE, 7), ValueError, "cls"),
    "imagenet sample missing checkpoint": (lambda p: _imagenet("sample", "--ckpt", str(p / "none.pt"), "--out",
                                                               str(p / "g.png")), SystemExit, "none.pt"),
    "imagenet fid missing Inception weights": (lambda p: _imagenet("fid", str(p / "s.npz"), "--ref", str(p / "r.npz"),
                                                                   "--inception", str(p / "none.pth")),
                                               SystemExit, "none.pth"),
    # ---- issue 11: schedules ----
    "edm sigma_min above sigma_max": (lambda p: samplers.edm_sigmas(8, 5.0, 1.0), ValueError, "sigma_min"),
    "edm negative sigma_min": (lambda p: samplers.edm_sigmas(8, -0.1, 1.0), ValueError, "sigma_min"),
    "edm rho zero": (lambda p: samplers.edm_sigmas(8, rho=0), ValueError, "rho"),
    "edm rho NaN": (lambda p: samplers.edm_sigmas(8, rho=math.nan), ValueError, "rho"),
    "vp sigma_min above sigma_max": (lambda p: samplers.vp_sigmas(8, 5.0, 1.0), ValueError, "sigma_min"),
    "vp negative sigma_max": (lambda p: samplers.vp_sigmas(8, 0.002, -80.0), ValueError, "sigma_max"),
    "vp beta_d zero": (lambda p: samplers.vp_sigmas(8, beta_d=0.0), ValueError, "beta_d"),
    "ddpm more steps than time steps": (lambda p: samplers.linear_beta_sigmas(2000), ValueError, "num_train_steps"),
    "ddpm beta above 1": (lambda p: samplers.linear_beta_sigmas(10, beta_end=1.5), ValueError, "beta_end"),
    "edm schedule collapsing to repeats": (lambda p: samplers.edm_sigmas(100, 1.0, 1.0 + 1e-15), ValueError,
                                           "strictly decreasing"),
    # ---- issue 11: the mixture's finite range, devices, seeds, overflowing weights ----
    "mixture sigma beyond its finite range": (lambda p: THREE.denoise(X, 1e77), ValueError,
                                              r"sigma.*1e\+15.*a limit of floating point"),
    "mixture x beyond its finite range": (lambda p: THREE.log_prob(X.double() * 1e154), ValueError, r"\bx\b.*1e\+15"),
    "meta-device x": (lambda p: THREE.denoise(torch.zeros(4, 2, device="meta"), 1.0), ValueError, r"\bx\b.*meta"),
    "meta-device sigma": (lambda p: THREE.denoise(X, torch.ones(4, device="meta")), ValueError, "sigma.*meta"),
    "meta-device labels": (lambda p: THREE.denoise(X, 1.0, C.to("meta")), ValueError, "cond.*meta"),
    "meta-device net input": (lambda p: _model()(torch.zeros(4, 2, device="meta"), 1.0), ValueError, "meta"),
    "seed of 2**64": (lambda p: nets.MLPDenoiser(num_classes=3, width=8, depth=2, seed=2 ** 64), ValueError, "seed"),
    "negative seed": (lambda p: nets.MLPDenoiser(num_classes=3, width=8, depth=2, seed=-1), ValueError, "seed"),
    "seed a float": (lambda p: nets.MLPDenoiser(num_classes=3, width=8, depth=2, seed=1.5), TypeError, "seed"),
    "weight beyond float32": (lambda p: G.guided(THREE, G.CFG(1e308))(X, 1.0, C), ValueError, r"\bw\b"),
    "weight overflowing the output": (lambda p: G.guided(_far_apart(), G.CFG(3e38))(
        torch.tensor([[50.0, 0.0]] * 4), 10.0, torch.tensor([0, 1, 0, 1])), ValueError, r"\bw\b"),  # |D_c - D| ~ 50
    "interval lower bound inf": (lambda p: G.CFG(2.0, interval=(math.inf, math.inf)), ValueError, "interval"),
    "interval NaN": (lambda p: G.CFG(2.0, interval=(math.nan, 1.0)), ValueError, "interval"),
    "sampler steps a numpy float": (lambda p: samplers.edm_sigmas(np.float32(4.0)), TypeError, "steps"),
    # ---- issue 11: imagenet_ext data and FID ----
    "imagenet float labels": (lambda p: _imagenet_labels(p, np.array([1.0, 2.7])), ValueError, "labels.*float"),
    "imagenet bool labels": (lambda p: _imagenet_labels(p, np.array([True, False])), ValueError, "labels.*bool"),
    "imagenet pickled bool labels": (lambda p: _imagenet_labels(p, [True, 2], pickled=True), ValueError, "bool"),
    "zip with a JSON true label": (lambda p: _zip_labels(p, True), ValueError, "label"),
    "16-bit float TIFF image": (lambda p: _zip_labels(p, 0, mode="F"), ValueError, "range"),
    "fid --splits 0": (lambda p: _imagenet("fid", "s.npz", "--ref", "r.npz", "--splits", "0"), SystemExit, "--splits"),
    "fid --batch 0": (lambda p: _imagenet("fid", "s.npz", "--ref", "r.npz", "--batch", "0"), SystemExit, "--batch"),
    "fid --save-ref without .npz": (lambda p: _imagenet("fid", "s.npz", "--ref", "r.npz", "--save-ref",
                                                        str(p / "stats")), SystemExit, "--save-ref.*npz"),
    "fid --save-ref in a missing directory's file": (lambda p: _imagenet("fid", "s.npz", "--ref", "r.npz", "--save-ref",
                                                                         str(_write(p, "f", b"x") / "s.npz")),
                                                     SystemExit, "--save-ref"),
    "fid --device foo": (lambda p: _imagenet("fid", "s.npz", "--ref", "r.npz", "--device", "foo"), SystemExit,
                         "--device"),
    "Inception file holding a tensor": (lambda p: _inception_file(p, torch.zeros(3)), ValueError,
                                        "not an FID Inception-v3 state dict"),
    "Inception file of wrong shapes": (lambda p: _inception_file(p, "shapes"), ValueError, "wrong shapes"),
    "mixture of a huge covariance": (lambda p: GaussianMixture([1], [[0, 0]], [[[1e300, 0], [0, 1e300]]]), ValueError,
                                     "covs"),
    "mixture of a huge mean": (lambda p: GaussianMixture([1], [[1e200, 0]], [[[1, 0], [0, 1]]]), ValueError, "means"),
    "mixture num_classes a float": (lambda p: GaussianMixture([1], [[0, 0]], [[[1, 0], [0, 1]]], num_classes=2.5),
                                    TypeError, "num_classes"),
    "tree of depth 40": (lambda p: datasets.thin_tree(depth=40), ValueError, "depth"),
    "mean of a missing class": (lambda p: THREE.mean(7), ValueError, "cond"),
    "zip listing one image twice": (lambda p: _zip_labels(p, 0, twice=True), ValueError, "twice"),
    "zip label beyond int64": (lambda p: _zip_labels(p, 2 ** 70), ValueError, "label"),
    "dataset resolution 0": (lambda p: _imagenet_data().load_dataset("digits", 0), ValueError, "resolution"),
    "reference npz with mu only": (lambda p: _imagenet_fid().reference_stats(str(_npz(p, mu=np.zeros(3))), None, 8),
                                   ValueError, "sigma"),
    "Inception Score of NaN logits": (lambda p: _imagenet_fid().inception_score(np.full((3, 10), np.nan)), ValueError,
                                      "logits"),
    # ---- issue 11: runs own their output; resumes are the same run ----
    "checkpoint in use by another run": (_checkpoint_in_use, FileExistsError, "ck.pt is in use by another run"),
    "resume on other data": (lambda p: training.train(_model(), datasets.tree(), steps=4, batch_size=8, pool_size=64,
                                                      progress=False, checkpoint=_checkpoint(p, _model()), resume=True),
                             ValueError, "trained with data=.*force_resume"),
    "resume to fewer steps than done": (lambda p: training.train(_model(), THREE, steps=1, batch_size=8, pool_size=64,
                                                                 progress=False, checkpoint=_checkpoint(p, _model()),
                                                                 resume=True), ValueError, "beyond steps=1"),
    "training that diverges": (lambda p: training.train(_model(), THREE, steps=50, lr=1e8, batch_size=8, pool_size=64,
                                                        progress=False), FloatingPointError, "diverged"),
    "checkpoint pickling a missing module": (_pickle_of_missing_module, ValueError, "gone.pt"),
    "guide with fewer classes": (lambda p: G.guided(THREE, G.AutoGuidance(datasets.tree(), 2.0))(X, 1.0, C), ValueError,
                                 "guide"),
    "a weight for guidance none": (lambda p: _zoo().guided_denoiser(_zoo().ToyModels(*[_model()] * 4), "none", 3.0),
                                   ValueError, r"w=3 would be unused"),
    "an unknown zoo model name": (lambda p: _zoo().train_model("tree_mian"), ValueError, "name must be one of"),
    # ---- issue 11: CLIs (one line, exit 2, the flag named) ----
    "cli --seed 2**64": (lambda p: _cli("sample", "--seed", str(2 ** 64)), SystemExit, "--seed"),
    "cli --w 1e308": (lambda p: _cli("sample", "--guidance", "cfg", "--w", "1e308", "--n", "4", "--out",
                                     str(p / "s.pt"), "--no-progress"), SystemExit, r"\bw\b"),
    "cli sample --out of another format": (lambda p: _cli("sample", "--out", str(p / "x.jpg")), SystemExit, "--out"),
    "cli train --out an existing file": (lambda p: _cli("train", "--out", str(_write(p, "f", b"x"))), SystemExit,
                                         "--out"),
    "imagenet sample of a toydiff checkpoint": (lambda p: _imagenet("sample", "--ckpt", str(_checkpoint(p, _model())),
                                                                    "--out", str(p / "g.png")), SystemExit,
                                                r"ck\.pt holds a MLPDenoiser, not an imagenet_ext UNet"),
    "imagenet sample --guidance none --w 3": (lambda p: _imagenet("sample", "--ckpt", "c.pt", "--guidance", "none",
                                                                  "--w", "3", "--out", str(p / "g.png")), SystemExit,
                                              "--w"),
    "imagenet sample --scale 0": (lambda p: _imagenet("sample", "--ckpt", "c.pt", "--scale", "0", "--out",
                                                      str(p / "g.png")), SystemExit, "--scale"),
    "imagenet train --ema-kimg -1": (lambda p: _imagenet_train(p, "--ema-kimg", "-1"), SystemExit, "--ema-kimg"),
    "imagenet train --warmup -5": (lambda p: _imagenet_train(p, "--warmup", "-5"), SystemExit, "--warmup"),
    "imagenet train --channels 0": (lambda p: _imagenet_train(p, "--channels", "0"), SystemExit, "--channels"),
    "imagenet train --p-mean nan": (lambda p: _imagenet_train(p, "--p-mean", "nan"), SystemExit, "--p-mean"),
    "imagenet train --device foo": (lambda p: _imagenet_train(p, "--device", "foo"), SystemExit, "--device"),
    "imagenet train --out an existing file": (lambda p: _imagenet("train", "--data", "digits", "--steps", "1", "--out",
                                                                  str(_write(p, "f", b"x"))), SystemExit, "--out"),
    "imagenet train on a locked --out": (_imagenet_train_locked, SystemExit, "--out .* is in use by another run"),
    "imagenet train --resume of a missing file": (lambda p: _imagenet_train(p, "--resume", str(p / "gone.pt")),
                                                  SystemExit, "gone.pt"),
    # ---- issue 23: deep tracebacks and misleading messages ----
    "weight schedule of the wrong shape": (lambda p: G.guided(THREE, G.CFG(lambda s: torch.ones(3)))(X, 1.0, C),
                                           ValueError, r"weight schedule .* shaped like sigma \(4,\), got shape \(3,\)"),
    "checkpoint path that is a directory": (lambda p: training.load_model(p), ValueError,
                                            "is a directory, not a checkpoint file"),
    "imagenet pickle with a flipped module name": (_flipped_pickle, ValueError, r"val_data: corrupt or truncated"),
    "imagenet unet --resolution 0": (lambda p: _imagenet("unet", "tiny", "--resolution", "0"), SystemExit,
                                     "--resolution"),
    "imagenet unet resolution below its levels": (lambda p: _imagenet("unet", "tiny", "--resolution", "2"),
                                                  SystemExit, "resolution 2 must be a positive multiple"),
    "sample on a CUDA device that is not there": (lambda p: samplers.sample(THREE, (4, 2), device="cuda:99"),
                                                  ValueError, "'cuda:99': (CUDA is not available|this machine has)"),
    "checkpoint mapped to a CUDA device that is not there": (
        lambda p: training.load_checkpoint(_checkpoint(p, _model()), map_location="cuda:99"), ValueError,
        "map_location 'cuda:99': (CUDA is not available|this machine has)"),
    "CFG with w = 0 and a NaN unconditional branch": (lambda p: G.guided(_nan_null, G.CFG(0.0))(X, 1.0, C.clamp(0)),
                                                      ValueError, r"D_1 - D_0 \(the unconditional branch"),
    "classifier guidance with NaN log-probabilities": (
        lambda p: G.guided(THREE, G.ClassifierGuidance(lambda x, s: x.sum(1, keepdim=True).expand(-1, 3) * math.nan,
                                                       2.0))(X, 1.0, C.clamp(0)),
        ValueError, r"inf/NaN log-probabilities for the labels of rows \[0, 1, 2, 3\]"),
    "cli sample --out in a missing folder": (lambda p: _cli("sample", "--out", str(p / "nowhere" / "x.png")),
                                             SystemExit, "--out: the folder .*nowhere does not exist"),
    "fid --save-ref in a missing folder, before any work": (
        lambda p: _imagenet("fid", "s.npz", "--ref", "r.npz", "--save-ref", str(p / "nowhere" / "ref.npz")),
        SystemExit, "--save-ref: the folder .*nowhere does not exist"),
}



# every module that validates user input is reached by at least one case (a frame of it in the traceback)
VALIDATING = {"toydiff/core/denoiser.py", "toydiff/toy/nets.py", "toydiff/core/guidance/base.py",
              "toydiff/core/guidance/methods.py", "toydiff/core/guidance/modifiers.py",
              "toydiff/core/guidance/registry.py", "toydiff/core/samplers.py", "toydiff/toy/training.py",
              "toydiff/toy/classifier.py", "toydiff/toy/metrics.py", "toydiff/infra/validation.py",
              "toydiff/app/cli.py", "toydiff/bench/sweep.py", "toydiff/bench/models.py", "toydiff/toy/histogram.py",
              "imagenet_ext/sample.py", "imagenet_ext/fid.py", "toydiff/toy/distributions.py",
              "toydiff/toy/datasets.py", "toydiff/infra/runs.py", "toydiff/infra/clitools.py",
              "toydiff/core/checkpoint.py", "toydiff/toy/zoo.py", "toydiff/toy/sampling.py", "imagenet_ext/data.py",
              "imagenet_ext/image_files.py", "imagenet_ext/inception.py",
              "imagenet_ext/config.py", "imagenet_ext/train.py", "imagenet_ext/unet.py"}


def test_cases_reach_every_validating_module(tmp_path, capsys):
    reached = set()
    for i, (make, err, _) in enumerate(CASES.values()):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(err) as info:
            make(tmp_path / str(i))
        for frame in traceback.extract_tb(info.value.__traceback__):
            path = Path(frame.filename).as_posix()
            reached |= {m for m in VALIDATING if path.endswith("/" + m)}
    capsys.readouterr()
    assert reached == VALIDATING, f"no bad-input case reaches {sorted(VALIDATING - reached)}"


def _imagenet_data():
    import imagenet_ext.data
    return imagenet_ext.data


def _imagenet_fid():
    import imagenet_ext.fid
    return imagenet_ext.fid


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "r.npz", **arrays)
    return tmp_path / "r.npz"


def _imagenet_labels(tmp_path, labels, pickled=False):
    from imagenet_ext.data import load_imagenet64_file
    data = np.zeros((len(labels), 3 * 8 * 8), dtype=np.uint8)
    if pickled:
        path = tmp_path / "val_data"
        path.write_bytes(pickle.dumps({"data": data, "labels": labels}))
    else:
        path = tmp_path / "val_data.npz"
        np.savez(path, data=data, labels=labels)
    return load_imagenet64_file(path, 8)


def _zip_labels(tmp_path, label, mode="L", twice=False):
    from PIL import Image
    from imagenet_ext.data import load_zip
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), dtype=np.float32 if mode == "F" else np.uint8)).save(
        buf, format="TIFF" if mode == "F" else "PNG")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.writestr("a.img", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": [["a.img", label]] * (2 if twice else 1)}))
    return load_zip(tmp_path / "d.zip", 4)


def _inception_file(tmp_path, content):
    from imagenet_ext.inception import FIDInceptionV3, load_inception
    if content == "shapes":
        content = {k: v[..., :1] if v.ndim else v for k, v in FIDInceptionV3(75).state_dict().items()}
    torch.save(content, tmp_path / "w.pth")
    return load_inception(tmp_path / "w.pth", input_size=75)


def _hidden_folder(tmp_path):
    from PIL import Image
    from imagenet_ext.data import load_folder
    for sub in ("cat", ".ipynb_checkpoints"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / sub / "a.png")
    found = load_folder(tmp_path, 4)
    assert found.num_classes == 1 and len(found) == 1, "a hidden folder is not a class"
    return found


VALID = {  # inputs issue 11 found refused although they are valid: each must now run
    "numpy float32 sigma": lambda p: THREE.denoise(X, np.float32(0.5)),
    "numpy float32 weight": lambda p: G.guided(THREE, G.CFG(np.float32(2.0)))(X, 1.0, C),
    "numpy float32 momentum": lambda p: G.APG(2.0, momentum=np.float32(-0.5)),
    "numpy int steps": lambda p: samplers.edm_sigmas(np.int64(4)),
    "interval up to inf": lambda p: G.guided(THREE, G.CFG(2.0, interval=(0.5, math.inf)))(X, 1.0, C),
    "float64 weight of 1e30 on float64": lambda p: G.guided(THREE, G.CFG(1e30))(X.double(), 1.0, C),
    "mixture at |x| = 1e15, sigma = 1e15": lambda p: THREE.denoise(torch.full((2, 2), 1e15), 1e15),
    "ddpm with all its time steps": lambda p: samplers.linear_beta_sigmas(1000),
    "edm rho = 1e-3 (sigma_max^(1/rho) beyond float64)": lambda p: samplers.edm_sigmas(8, rho=1e-3),
    "seed 2**63 - 1": lambda p: nets.MLPDenoiser(num_classes=3, width=8, depth=2, seed=2 ** 63 - 1),
    "numpy int sample count and class": lambda p: THREE.sample(np.int64(5), cond=np.int64(1))[0],
    "a hidden folder beside the classes": lambda p: _hidden_folder(p).labels,
    "float64 input to the MLP": lambda p: _model()(X.double(), 1.0, C),
    "int32 training labels": lambda p: training.train(_model(), (X, C.clamp(0).int()), steps=2, batch_size=4,
                                                      progress=False).losses,
    "a 250-character checkpoint name": lambda p: training.train(_model(), THREE, steps=2, batch_size=8, pool_size=64,
                                                                progress=False, checkpoint=p / ("c" * 247 + ".pt")).losses,
    "cli sample --n 1": lambda p: _cli("sample", "--n", "1", "--out", str(p / "s.pt"), "--no-progress"),
    "numpy int class in metrics": lambda p: metrics.evaluate(THREE.sample(40, cond=1)[0], THREE, np.int64(1))["precision"],
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_input_runs(case, tmp_path):
    out = VALID[case](tmp_path)
    for t in out if isinstance(out, (tuple, list)) else [out]:
        if isinstance(t, torch.Tensor):
            assert torch.isfinite(t).all(), case



@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, capsys):
    make, err, word = CASES[case]
    with pytest.raises(err) as info:
        make(tmp_path)
    message = f"{info.value} {capsys.readouterr().err}"
    assert re.search(word, message), f"{case}: {message!r} does not mention {word!r}"
