"""`python -m imagenet_ext.fid`: Frechet Inception Distance and Inception Score of generated images.

FID (Heusel et al. 2017, Eq. 6) between Gaussians fitted to Inception pool3 features [2048]:
    FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).
tr (S_1 S_2)^{1/2} is computed symmetrically: S_1 S_2 is similar to A = S_1^{1/2} S_2 S_1^{1/2} (symmetric PSD), so
tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(A)); eigh in float64, negative round-off eigenvalues clipped to 0.
`frechet_distance_sqrtm` is the scipy.linalg.sqrtm formulation of pytorch-fid for comparison.

IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean over 10 splits in the samples' order, from the
1008-way logits without the fc bias (as torch-fidelity does). torch-fidelity shuffles the samples before splitting
by default: this equals its `isc` with `samples_shuffle=False` when N is a multiple of the splits (measured 7e-15;
0.13 apart with its shuffle at IS ~ 21.5, see docs/CONVENTIONS.md).

Reference statistics: an `.npz` with `mu` [2048] and `sigma` [2048, 2048] (pytorch-fid's format), or any dataset
`imagenet_ext.data.load_dataset` reads (`digits`, ImageNet-64 files, a folder, a zip); `--save-ref` caches them.
Samples: an `.npz` of uint8 NHWC images under `images` (imagenet_ext.sample) or `arr_0` (ADM's batches), or a dataset.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from toydiff.infra.atomic import atomic_path
from toydiff.infra.clitools import Parser, check_output, device, positive_int, user_errors

from .data import load_dataset
from .inception import FIDInceptionV3, load_inception

__all__ = ["frechet_distance", "frechet_distance_sqrtm", "inception_features", "inception_score",
           "feature_stats", "load_images", "reference_stats", "main"]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1 S2)^{1/2} via the symmetric eigen route (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("statistics contain NaN or inf")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    lam, vec = np.linalg.eigh(s1)
    root1 = (vec * np.sqrt(np.clip(lam, 0, None))) @ vec.T              # S1^{1/2}
    a = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((a + a.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                           eps: float = 1e-6) -> float:
    """The same distance with scipy.linalg.sqrtm(S1 S2) (pytorch-fid's formulation): a diagonal offset eps I when
    the root is inaccurate (see _sqrtm), and the real part when round-off leaves a small imaginary component."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    covmean = _sqrtm(s1 @ s2)
    if covmean is None:
        off = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + off) @ (s2 + off))
        if covmean is None:
            raise ValueError("sqrtm(S1 S2) is inaccurate even with eps I added to both covariances")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component {np.max(np.abs(covmean.imag)):g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray, tol: float = 1e-6) -> np.ndarray | None:
    """scipy's sqrtm, judged by its residual ||X X - A||_F / ||A||_F <= tol rather than by its singularity warning:
    S1 S2 is singular whenever there are fewer images than features (N < 2048), and its root is still exact then
    (S1 S2 is similar to a PSD matrix). None where the root is inaccurate or not finite (pytorch-fid adds eps I)."""
    import warnings

    from scipy import linalg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)     # replaced by the explicit residual check below
        root = linalg.sqrtm(a)
    if not np.isfinite(root).all():
        return None
    scale = max(np.linalg.norm(a), np.finfo(np.float64).tiny)
    return root if np.linalg.norm(root @ root - a) / scale <= tol else None


@torch.no_grad()
def inception_features(net: FIDInceptionV3, images: Tensor, batch: int = 100, progress: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, C, H, W] (C = 1 or 3) -> pool3 features [N, 2048] and unbiased logits [N, 1008] (float64)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, 1|3, H, W], got {images.dtype} {tuple(images.shape)}")
    dev = next(net.parameters()).device
    feats, logits = [], []
    for i in tqdm(range(0, images.shape[0], batch), desc="inception", disable=not progress, leave=False):
        x = images[i:i + batch].to(dev).float().div(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        f, _ = net(x)
        feats.append(f.double().cpu())
        logits.append((f @ net.fc.weight.T).double().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, like np.cov) of features [N, D]."""
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {feats.shape[0]}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split; returns (mean, std) over splits."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    if z.ndim != 2 or z.shape[0] == 0 or not torch.isfinite(z).all():
        raise ValueError(f"logits must be a finite array [N, classes], got shape {tuple(z.shape)}"
                         f"{'' if z.ndim != 2 or not z.numel() or torch.isfinite(z).all() else ' with NaN/inf'}")
    logp = torch.log_softmax(z, dim=1)
    scores = []
    for part in torch.tensor_split(logp, min(splits, z.shape[0])):
        log_py = torch.logsumexp(part, 0) - np.log(part.shape[0])                # log of the marginal p(y)
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def load_images(spec: str, resolution: int | None = None) -> Tensor:
    """uint8 [N, C, H, W] from a samples `.npz` (`images` or `arr_0`, NHWC) or from a dataset spec."""
    p = Path(spec)
    if p.suffix.lower() == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"samples file not found: {p}")
        with np.load(p) as z:
            key = "images" if "images" in z else "arr_0" if "arr_0" in z else None
            if key is None:
                raise ValueError(f"{p}: expected an array 'images' or 'arr_0' (uint8 NHWC), found {sorted(z.files)}")
            arr = z[key]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"{p}: images must be uint8 [N, H, W, 1|3], got {arr.dtype} {arr.shape}")
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    if resolution is None:
        raise ValueError(f"a dataset spec ({spec!r}) needs a resolution")
    return load_dataset(spec, resolution).images


def reference_stats(spec: str, net: FIDInceptionV3 | None, resolution: int | None, batch: int = 100,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an `.npz` with `mu`/`sigma`, or computed from a dataset / images npz."""
    p = Path(spec)
    if p.suffix.lower() == ".npz" and p.is_file():
        with np.load(p) as z:
            if "mu" in z or "sigma" in z:
                if not ("mu" in z and "sigma" in z):
                    raise ValueError(f"{p}: reference statistics need both 'mu' and 'sigma', found {sorted(z.files)}")
                return z["mu"], z["sigma"]
    if net is None:
        raise ValueError("computing reference statistics needs the Inception network")
    feats, _ = inception_features(net, load_images(spec, resolution), batch, progress)
    return feature_stats(feats)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = Parser(prog="python -m imagenet_ext.fid", description=__doc__.split("\n")[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("samples", help="samples .npz (images / arr_0, uint8 NHWC) or a dataset spec")
    p.add_argument("--ref", required=True, help="reference stats .npz (mu, sigma), or a dataset spec ('digits', path)")
    p.add_argument("--inception", default=os.environ.get("TOYDIFF_INCEPTION"),
                   help="path to pt_inception-2015-12-05-6726825d.pth (or env TOYDIFF_INCEPTION)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="resolution for dataset specs (default: the samples')")
    p.add_argument("--input-size", type=positive_int, default=299, help="Inception input size (299 for real FID)")
    p.add_argument("--batch", type=positive_int, default=100)
    p.add_argument("--splits", type=positive_int, default=10)
    p.add_argument("--save-ref", default=None, help="write the reference mu/sigma to this .npz (the exact name)")
    p.add_argument("--device", type=device, default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    with user_errors(p.prog):
        if a.save_ref:
            check_output(a.save_ref, "--save-ref", suffixes=(".npz",))
        dev = a.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = load_inception(a.inception, input_size=a.input_size, device=dev)
        imgs = load_images(a.samples, a.resolution)
        feats, logits = inception_features(net, imgs, a.batch, not a.no_progress)
        mu, sigma = feature_stats(feats)
        mu_r, sigma_r = reference_stats(a.ref, net, a.resolution or imgs.shape[-1], a.batch, not a.no_progress)
        if a.save_ref:
            with atomic_path(a.save_ref) as tmp, open(tmp, "wb") as f:     # a file object: np.savez adds no suffix
                np.savez(f, mu=mu_r, sigma=sigma_r)
        is_mean, is_std = inception_score(logits, a.splits)
        res = {"fid": frechet_distance(mu, sigma, mu_r, sigma_r), "is": is_mean, "is_std": is_std,
               "n": int(imgs.shape[0])}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
