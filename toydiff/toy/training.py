"""The toy trainer: denoising or exact score matching with condition dropout on 2D mixtures, EDM2's power EMA,
atomic resumable checkpoints (the core pieces live in toydiff.core.training and are re-exported here).

Loss (Karras et al. 2022, EDM eq. 2), x = y + s n, ln s ~ N(P_mean, P_std^2): L = E[ lambda(s) |D(x; s, c) - target|^2 ]
with target = y (denoising score matching, "dsm"), the mixture's exact E[y | x; s, c] ("exact": same
minimizer, far lower variance, ~35 us per sample for 1000 components) or E[y | x, k; s], the posterior mean
within y's own component k ("component": same minimizer, as cheap as "dsm"; at s << the components' widths it
removes most of DSM's target noise, 10x at s = 0.005 on tree()). Condition dropout (Ho & Salimans 2022): each
label becomes -1 (null) with probability p_uncond, and for "exact" the target is then the marginal denoiser.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from ..core.flow import flow_matching_loss, sigma_to_t, t_to_sigma
from ..core.training import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, edm_loss, edm_weight, ema_beta_halflife,
                             ema_beta_power, ema_update, load_checkpoint, save_checkpoint, torch_threads)
from ..infra.runs import RunLock, StopSignals, check_resume, fingerprint
from ..infra.validation import check_positive_int, check_real, check_seed
from .loop import diverged, optimize
from .mixture_kernels import component_mean
from .nets import MLPDenoiser, VelocityMLP, build_model

__all__ = ["edm_weight", "edm_loss", "ema_beta_power", "ema_beta_halflife", "ema_update", "torch_threads",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint", "TrainResult", "train",
           "ToyTrainConfig",
           "load_model", "model_from_checkpoint", "denoiser_error", "DEFAULT_STEPS", "DEFAULT_BATCH_SIZE"]

DEFAULT_STEPS = 4096
DEFAULT_BATCH_SIZE = 1024
# settings that change the trajectory: a resume must match them exactly
_TRAJECTORY_KEYS = ("data", "batch_size", "lr", "lr_decay_steps", "loss", "p_uncond", "p_mean", "p_std", "ema_std",
                    "seed", "pool_size", "objective")
_OBJECTIVES = ("edm", "flow", "flow_uniform")


@dataclass
class TrainResult:
    """The trained network, its EMA copy (use this one), per-step losses [steps] and wall-clock seconds."""
    model: MLPDenoiser
    ema: MLPDenoiser
    losses: Tensor
    seconds: float


def _data_pool(data: Any, model: MLPDenoiser, pool_size: int, seed: int) -> tuple[Tensor, Tensor, Any, Any]:
    """(x [P, dim] float32, labels [P] int64 with -1 for an unconditional model, mixture or None, component index
    [P] or None)."""
    k = None
    if hasattr(data, "sample") and hasattr(data, "denoise"):
        x, y, k = data.sample(pool_size, generator=torch.Generator().manual_seed(seed), components=True)
        mixture = data
    else:
        x, y = data if isinstance(data, (tuple, list)) else (data, None)
        mixture = None
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 2 or x.shape[1] != model.dim \
                or x.shape[0] == 0 or not torch.isfinite(x).all():
            raise ValueError(f"data must be a GaussianMixture or (x [N, {model.dim}] finite float, y int64 [N]), "
                             f"got x of {getattr(x, 'shape', type(x).__name__)}")
        if y is None and model.num_classes > 0:
            raise ValueError("data has no labels but the model is conditional; pass data=(x, y)")
        if y is not None and (not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex()
                              or y.dtype == torch.bool or y.shape != x.shape[:1] or (y < 0).any()):
            raise ValueError(f"data labels must be an integer tensor [{x.shape[0]}] of labels >= 0")
    if model.num_classes == 0 or y is None:
        y = torch.full((x.shape[0],), -1, dtype=torch.long)
    elif int(y.max()) >= model.num_classes:
        raise ValueError(f"data has labels up to {int(y.max())} but the model has num_classes={model.num_classes}")
    return x.to(torch.float32).contiguous(), y.long().contiguous(), mixture, k


@dataclass(frozen=True)
class ToyTrainConfig:
    """The settings of `train` (its keyword arguments), checked when built. The trajectory settings (all but
    `checkpoint`, `checkpoint_every`, `resume`, `force_resume`, `progress`, `threads`) must match on resume."""
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = 1e-2
    lr_decay_steps: int = 512
    loss: str = "dsm"
    p_uncond: float = 0.1
    p_mean: float = -2.3
    p_std: float = 1.5
    ema_std: float = 0.010
    seed: int = 0
    pool_size: int = 1 << 16
    progress: bool = True
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 1024
    resume: bool = False
    force_resume: bool = False
    threads: int | None = 1
    objective: str = "edm"
    meta: dict | None = None            # what the model is, stored in its checkpoints (toydiff.core.checkpoint)

    def __post_init__(self) -> None:
        checked = dict(steps=check_positive_int(self.steps, "steps"),
                       batch_size=check_positive_int(self.batch_size, "batch_size"),
                       lr=check_real(self.lr, "lr", 0, lo_open=True),
                       lr_decay_steps=check_positive_int(self.lr_decay_steps, "lr_decay_steps"),
                       p_uncond=check_real(self.p_uncond, "p_uncond", 0, 1),
                       p_mean=check_real(self.p_mean, "p_mean"),
                       p_std=check_real(self.p_std, "p_std", 0),
                       ema_std=check_real(self.ema_std, "ema_std", 0, 0.28, lo_open=True),
                       seed=check_seed(self.seed),
                       pool_size=check_positive_int(self.pool_size, "pool_size"),
                       checkpoint_every=check_positive_int(self.checkpoint_every, "checkpoint_every"))
        if self.objective not in _OBJECTIVES:
            raise ValueError(f"objective must be one of {_OBJECTIVES}, got {self.objective!r}")
        if self.loss not in ("dsm", "exact", "component"):
            raise ValueError(f"loss must be 'dsm', 'exact' or 'component', got {self.loss!r}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def recorded(self) -> dict[str, Any]:
        """The settings a checkpoint records (its `config`, with the data fingerprint added by `train`)."""
        return {k: getattr(self, k) for k in ("steps", "batch_size", "lr", "lr_decay_steps", "loss", "p_uncond",
                                              "p_mean", "p_std", "ema_std", "seed", "pool_size", "checkpoint_every",
                                              "objective")}


def train(model: MLPDenoiser, data: Any, config: ToyTrainConfig | None = None, **settings: Any) -> TrainResult:
    """Train ``model`` in place (Adam, betas 0.9/0.99) and return it with its EMA copy and the loss history.
    `config` (default ToyTrainConfig()) with `settings` (its fields by keyword, e.g. ``train(model, data,
    steps=512, p_uncond=0.2)``) replacing some.

    EDM loss with log-normal sigma (Karras et al. 2022, eq. 2, Table 1); the defaults P_mean = -2.3,
    P_std = 1.5, lr 1e-2 decayed as lr / sqrt(max(t / lr_decay_steps, 1)), Adam betas (0.9, 0.99) and a
    power-function EMA with std 0.010 are those of the 2D toy of Karras et al. 2024 (autoguidance), whose
    data also has sigma_data = 0.5. Condition dropout with probability ``p_uncond`` (Ho & Salimans 2022).

    data: a GaussianMixture (``pool_size`` samples are drawn once from ``seed``; ``loss="exact"`` regresses onto
    its exact denoiser, ``"component"`` onto each sample's component's) or a tensor dataset
    ``(x [N, dim], y integer [N])`` / ``x`` (unconditional).
    Every step draws indices, dropout, sigma and noise from one torch.Generator seeded with ``seed``, so the
    same seed gives bit-identical weights. ``checkpoint``: a path written atomically every
    ``checkpoint_every`` steps and at the end, locked against a second run for the duration (toydiff.runs), with
    ``meta`` (what the model is: toydiff.core.checkpoint); SIGTERM/SIGINT write it at the current step, release the
    lock, then end the run as the signal would. An existing checkpoint is never overwritten by a fresh run
    (FileExistsError: another run's work): ``resume=True``
    continues from it and ends bit-identical to an uninterrupted run; it refuses a checkpoint
    of other data (a fingerprint of the training pool), model or settings, naming the key, unless
    ``force_resume=True``, and one beyond ``steps``. A non-finite loss stops training with FloatingPointError
    (the last checkpoint stays as it was). ``threads``: torch intra-op threads while training (restored
    afterwards; None keeps the current setting).

    ``objective``: "edm" (the loss above; a denoiser) or conditional flow matching for a `toydiff.nets.VelocityMLP`
    (toydiff.core.flow.flow_matching_loss, x_t = (1 - t) y + t n): "flow" draws logit-normal t (SD3, Esser et al. 2024,
    arXiv 2403.03206) with logit t ~ N(p_mean, p_std^2), the very draw of EDM's ln sigma (logit t = ln sigma), so
    both objectives see the same noise levels; "flow_uniform" draws t ~ U[0, 1) (Lipman et al. 2023; Liu et al. 2022).
    """
    if not isinstance(model, MLPDenoiser):
        raise TypeError(f"model must be a toydiff.nets MLPDenoiser (or subclass), got {type(model).__name__}")
    if config is not None and not isinstance(config, ToyTrainConfig):
        raise TypeError(f"config must be a ToyTrainConfig, got {type(config).__name__}")
    unknown = sorted(set(settings) - {f.name for f in fields(ToyTrainConfig)})
    if unknown:
        raise TypeError(f"train() got unknown settings {unknown}: the keywords are ToyTrainConfig's fields")
    config = replace(config or ToyTrainConfig(), **settings)
    if (config.objective != "edm") != isinstance(model, VelocityMLP):
        raise ValueError(f"objective={config.objective!r} does not fit a {type(model).__name__}: the flow objectives "
                         f"train a VelocityMLP, 'edm' a denoiser")
    pool_x, pool_y, mixture, pool_k = _data_pool(data, model, config.pool_size, config.seed)
    if config.loss != "dsm" and mixture is None:
        raise ValueError(f"loss={config.loss!r} needs a GaussianMixture as data (it regresses onto its exact "
                         f"denoisers)")
    recorded = {**config.recorded(), "data": fingerprint(pool_x.numpy().tobytes(), pool_y.numpy().tobytes())}

    model.train().requires_grad_(True)
    ema = build_model(type(model).__name__, model.config).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99), foreach=True)
    gen = torch.Generator().manual_seed(config.seed)
    losses, start, t0 = torch.zeros(config.steps), 0, time.perf_counter()
    path = config.checkpoint
    lock = RunLock(path, directory=False, name="checkpoint").acquire() if path is not None else None
    try:
        if path is not None and os.path.exists(path):
            if not config.resume:
                raise FileExistsError(f"checkpoint {path} already exists (another run's, or an earlier one's); "
                                      f"resume=True continues it, or delete it to start over")
            start = _resume(path, model, ema, opt, gen, losses, recorded, config.force_resume)
        with torch_threads(config.threads), StopSignals() as stop:
            _loop(model, ema, opt, gen, losses, start, (pool_x, pool_y, pool_k), mixture, config, recorded, stop)
    finally:
        if lock is not None:
            lock.release()
    stop.exit()                                   # after a signal: the checkpoint is written, the lock released
    model.eval()
    return TrainResult(model, ema, losses, time.perf_counter() - t0)


def _resume(path: Any, model: MLPDenoiser, ema: MLPDenoiser, opt: torch.optim.Optimizer, gen: torch.Generator,
            losses: Tensor, config: dict, force: bool) -> int:
    """Load a train() checkpoint into model, ema, opt, gen and losses after checking it belongs to this run."""
    ck = load_checkpoint(path, resumable=True)
    check_resume({"model_class": ck["model_class"], **ck["model_config"]},
                 {"model_class": type(model).__name__, **model.config}, path, None)
    if not force:
        check_resume({k: ck["config"].get(k, "edm" if k == "objective" else None) for k in _TRAJECTORY_KEYS}, {k: config[k] for k in _TRAJECTORY_KEYS},
                     path, "force_resume=True")
    if ck.get("rng") is None or ck.get("losses") is None:
        raise ValueError(f"checkpoint {path} has no RNG state / loss history (not written by train())")
    if ck["step"] > config["steps"]:
        raise ValueError(f"checkpoint {path} is at step {ck['step']}, beyond steps={config['steps']}: resuming "
                         f"cannot train fewer steps (load it with load_model, or pass more steps)")
    model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["optimizer"])
    gen.set_state(ck["rng"])
    losses[:ck["step"]] = ck["losses"][:ck["step"]]
    return ck["step"]


def _loop(model: MLPDenoiser, ema: MLPDenoiser, opt: torch.optim.Optimizer, gen: torch.Generator, losses: Tensor,
          start: int, pool: tuple[Tensor, Tensor, Any], mixture: Any, config: ToyTrainConfig, recorded: dict,
          stop: StopSignals) -> None:
    """Steps start..steps of train() (see there) through toydiff.toy.loop.optimize; updates model, ema, opt, gen and
    losses in place. `recorded`: the config a checkpoint stores. Returns early, after writing the checkpoint, when
    `stop` has caught a signal."""
    params, ema_params = list(model.parameters()), list(ema.parameters())
    pool_x, pool_y, pool_k = pool                           # samples, labels, components (None for tensor data)
    n, flow = config.batch_size, config.objective != "edm"
    if config.loss == "component":          # each pool sample's component (C_k, mu_k), gathered once, not per step
        pool_cov, pool_mu = mixture.covs.index_select(0, pool_k), mixture.means.index_select(0, pool_k)

    def batch_loss(step: int) -> Tensor:
        idx = torch.randint(pool_x.shape[0], (n,), generator=gen)
        y, c = pool_x.index_select(0, idx), pool_y.index_select(0, idx)             # [B, dim], [B]
        c = c.masked_fill(torch.rand(n, generator=gen) < config.p_uncond, -1)       # condition dropout
        if config.objective == "flow_uniform":
            t = torch.rand(n, generator=gen)                                        # t ~ U[0, 1)
            sigma = t_to_sigma(t)
        else:
            sigma = (torch.randn(n, generator=gen) * config.p_std + config.p_mean).exp()   # ln s ~ N(P_mean, P_std^2)
        noise = torch.randn(y.shape, generator=gen)
        x, target = y + sigma[:, None] * noise, y                                   # x = y + s n
        if config.loss == "exact":
            target = mixture.denoise(x, sigma, None if model.num_classes == 0 else c).to(x.dtype)
        elif config.loss == "component":        # GaussianMixture.component_denoise on the gathered components
            target = component_mean(x, sigma.double() ** 2, pool_cov.index_select(0, idx),
                                    pool_mu.index_select(0, idx)).to(x.dtype)
        if not flow:
            return edm_loss(model(x, sigma, c), target, sigma, model.sigma_data).mean()
        if config.objective == "flow":
            t = sigma_to_t(sigma)                                                   # logit-normal t
        x_t = (1 - t[:, None]) * y + t[:, None] * noise                             # x_t = (1 - t) y + t n
        return flow_matching_loss(model(x_t, t, c), y, noise, t, None if config.loss == "dsm" else target).mean()

    def after_step(step: int) -> bool:
        ema_update(ema_params, params, ema_beta_power(step, config.ema_std))
        due = (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps
        if config.checkpoint is not None and (due or stop.requested):
            if not all(bool(torch.isfinite(p).all()) for p in params):
                diverged("non-finite weights", step + 1, config.lr, config.checkpoint)
            save_checkpoint(config.checkpoint, model, ema, opt, step + 1, recorded, rng_state=gen.get_state(),
                            losses=losses, meta=config.meta)
        return stop.requested                           # train() re-delivers the signal once the lock is released

    optimize(opt, losses, batch_loss, steps=config.steps, lr=config.lr, lr_decay_steps=config.lr_decay_steps,
             start=start, after_step=after_step, checkpoint=config.checkpoint, progress=config.progress)


@torch.no_grad()
def denoiser_error(denoiser: Any, mixture: Any, sigma: float, *, n: int = 1024, cond: int | None = None,
                   seed: int = 0) -> float:
    """EDM-weighted error E[lambda(s) |D(x; s, c) - D*(x; s, c)|^2] vs the mixture's exact denoiser D*, over
    x ~ p(x | c; s) (n samples from ``seed``; cond None = the marginal and the null label)."""
    x, _ = mixture.sample(n, cond=cond, sigma=sigma, generator=torch.Generator().manual_seed(seed))
    c = None if cond is None else torch.full((n,), cond, dtype=torch.long)
    err = (denoiser(x, sigma, c) - mixture.denoise(x, sigma, c).to(x.dtype)).square().sum(1).mean()
    return float(err * edm_weight(sigma, getattr(denoiser, "sigma_data", 0.5)))


def load_model(path: str | os.PathLike, expect: dict | None = None) -> MLPDenoiser:
    """Rebuild the model from a checkpoint's class name and config and return its EMA weights (a model file: its
    weights) in eval mode; `expect`: the `meta` it must carry (toydiff.core.checkpoint.load_checkpoint)."""
    return model_from_checkpoint(load_checkpoint(path, expect=expect), path)


def model_from_checkpoint(ck: dict, path: str | os.PathLike) -> MLPDenoiser:
    """The model of a checkpoint dict read from `path` (load_model's work once the file is read)."""
    try:
        model = build_model(ck["model_class"], ck["model_config"])
        model.load_state_dict(ck["model"] if ck["ema"] is None else ck["ema"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path}: stored weights do not fit {ck['model_class']}"
                         f"{ck['model_config']}: {e}") from e
    return model.eval().requires_grad_(False)
