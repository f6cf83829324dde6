"""`python -m imagenet_ext.train`: class-conditional EDM training with condition dropout, EMA and DDP.

Loss (Karras et al. 2022, Eq. 2 and Table 1, "EDM" column; `toydiff.core.training.edm_loss`, the squared norm summed
over pixels, averaged over the batch):
    ln sigma ~ N(P_mean, P_std^2),  n ~ N(0, I),  lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2
    L = E[ lambda(sigma) || D(y + sigma n; sigma, c') - y ||^2 ],
with condition dropout (Ho & Salimans 2022): c' = -1 (the null label) with probability p_uncond, so one
network learns both D(x; sigma, c) and D(x; sigma) for classifier-free guidance. `objective="flow"` (`--objective
flow`) trains the same network by conditional flow matching on its velocity view (rectified flow, toydiff.core.flow:
t = sigma / (1 + sigma), v = (x - D) / sigma - D): L = E |v - (n - y)|^2 = E |D - y|^2 / t^2 with logit-normal t
(SD3, Esser et al. 2024), logit t = ln sigma ~ N(P_mean, P_std^2), the same draw; the checkpoint is a denoiser as before.

Parallelism: one process per device under `torchrun` (torch.distributed, NCCL on GPU, gloo on CPU); the same
command runs without torchrun as one process. Data order is independent of the process count: every step,
every rank draws the whole global batch (indices, sigma, noise, dropout mask) from a generator seeded with
(seed, step) and takes its own contiguous slice, then splits it into `--accum` micro-batches. So a 2-process
run equals a 1-process run of the same global batch up to float reduction order, and resuming from a
checkpoint replays exactly the same batches.

Python: `train(TrainConfig(data=..., steps=..., out=...))`; the CLI builds the same TrainConfig (`parse_args`).
Checkpoints `RUN_DIR/ckpt-<step>.pt` (toydiff.training's format, atomic) every `--ckpt-every` steps, at the end
and when a rank gets SIGTERM/SIGINT (then the run stops; the ranks agree through the per-step all-reduce); the
`--keep` highest steps are kept. `--resume` (latest in RUN_DIR, a checkpoint, or another run directory) restores
model, EMA, optimizer, step and RNG, and refuses a checkpoint of other data, model or settings (the key named;
`--force-resume` overrides) or beyond `--steps`. RUN_DIR is locked while a run writes it (toydiff.runs). A JSONL
log `RUN_DIR/log.jsonl` records loss, learning rate and images/s, one record per step even across resumes.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from toydiff.core.denoiser import count_parameters
from toydiff.core.flow import flow_matching_loss, sigma_to_t, velocity_from_denoised
from toydiff.core.training import edm_loss, ema_beta_halflife, ema_update, load_checkpoint, save_checkpoint, torch_threads
from toydiff.infra.clitools import user_errors
from toydiff.infra.runs import (RunLock, StopSignals, append_jsonl, check_resume, fingerprint, prune_checkpoints,
                                truncate_log)

from .checkpoint import latest_checkpoint
from .config import RESUME_KEYS, TrainConfig, parse_args
from .data import load_dataset, to_float
from .unet import EDMDenoiser, build, forward_flops

__all__ = ["TrainConfig", "train", "parse_args", "main"]  # TrainConfig, parse_args: from imagenet_ext.config


def _dist_setup(device_arg: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg is None else device_arg.startswith("cuda")
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 12345) % (2 ** 63 - 1)


def _draw_global_batch(n_data: int, shape: tuple[int, ...], c: TrainConfig, step: int, device: torch.device
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The whole global batch's randomness for one step, identical on every rank: indices [B], dropout mask [B],
    sigma [B], noise [B, C, H, W] (drawn on `device` with a generator seeded by (seed, step))."""
    g = torch.Generator().manual_seed(_step_seed(c.seed, step))
    idx = torch.randint(n_data, (c.batch,), generator=g)
    drop = torch.rand(c.batch, generator=g) < c.p_uncond
    sigma = (c.p_mean + c.p_std * torch.randn(c.batch, generator=g)).exp()
    gd = torch.Generator(device=device).manual_seed(_step_seed(c.seed, step) + 1)
    noise = torch.randn((c.batch, *shape), generator=gd, device=device)
    return idx, drop, sigma, noise


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns a summary {step, loss, images_per_s, checkpoint}. Under torchrun every
    process calls it; `config.threads` sets torch's intra-op threads for the run (restored afterwards)."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an imagenet_ext.train.TrainConfig, got {type(config).__name__}")
    with torch_threads(config.threads):
        return _train(config)


def _train(args: TrainConfig) -> dict[str, Any]:
    rank, world, device = _dist_setup(args.device)
    if args.batch % (world * args.accum):
        raise ValueError(f"--batch {args.batch} must be divisible by world size x accum = {world} x {args.accum}")
    micro = args.batch // (world * args.accum)
    out = Path(args.out)
    lock = RunLock(out, directory=True, name="--out").acquire() if rank == 0 else None   # one run per --out
    try:
        last, stop = _run(args, rank, world, device, micro, out)
    finally:
        if lock is not None:
            lock.release()
    stop.exit()                    # after a signal: the checkpoint is written and the lock released, then end
    return last


def _resume_from(args: TrainConfig, out: Path, rank: int) -> Path | None:
    """The checkpoint --resume names: the latest in --out ("auto"; None if there is none yet), a file, or the
    latest in a run directory."""
    if args.resume is None:
        return None
    where = out if args.resume == "auto" else Path(args.resume)
    if not where.is_dir():
        return where
    found = latest_checkpoint(where)
    if found is None and args.resume != "auto":
        raise FileNotFoundError(f"--resume {where}: no ckpt-<step>.pt in that directory")
    if found is None and rank == 0:
        print(f"[train] --resume: no checkpoint in {out}, starting from scratch")
    return found


def _run(args: TrainConfig, rank: int, world: int, device: torch.device, micro: int, out: Path
         ) -> tuple[dict[str, Any], StopSignals]:
    # local rank 0 first: it may build the node's memory-mapped cache that the other ranks then open
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first and world > 1:
        dist.barrier()
    data = load_dataset(args.data, args.resolution, cache_dir=args.cache)
    if first and world > 1:
        dist.barrier()
    overrides: dict[str, Any] = {"resolution": args.resolution, "in_channels": data.channels,
                                 "num_classes": data.num_classes}
    if args.channels is not None:
        overrides["model_channels"] = args.channels
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    torch.manual_seed(args.seed)                       # identical initial weights on every rank
    model: EDMDenoiser = build(args.config, **overrides).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    step, resume_path = 0, _resume_from(args, out, rank)
    data_key = fingerprint(len(data), data.num_classes, data.channels, data.resolution, data.labels.numpy().tobytes())
    if resume_path is not None:
        ck = load_checkpoint(resume_path, map_location=device, resumable=True)
        check_resume(ck["model_config"], {"name": args.config, "overrides": overrides}, resume_path, None)
        if not args.force_resume:
            saved = {**{k: ck["config"].get(k, "edm" if k == "objective" else None) for k in RESUME_KEYS}, "data": ck.get("data", {}).get("fingerprint")}
            check_resume(saved, {**{k: getattr(args, k) for k in RESUME_KEYS}, "data": data_key}, resume_path,
                         "--force-resume")
        if ck["step"] > args.steps:
            raise ValueError(f"--steps {args.steps}: the checkpoint {resume_path} is already at step {ck['step']}")
        model.load_state_dict(ck["model"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        torch.set_rng_state(ck["rng"]["torch"])
        if rank == 0:
            truncate_log(out / "log.jsonl", step)                 # the records past the checkpoint are redone
    if rank == 0:
        flops = forward_flops(model)
        print(f"[train] {args.config}: {count_parameters(model) / 1e6:.2f} M params, {flops / 1e9:.3f} GFLOP/image forward; "
              f"data {data.name}: {len(data)} images, {data.num_classes} classes, {data.channels}x{data.resolution}^2; "
              f"world {world}, micro-batch {micro}, accum {args.accum}, global batch {args.batch}, start step {step}")
        (out / "args.json").write_text(json.dumps(asdict(args), indent=1))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ddp = net                                          # no_sync() lives on the DDP wrapper, not on the compiled module
    if args.compile:
        net = torch.compile(net)
    use_amp = device.type == "cuda" and args.precision == "bf16"
    shape = (data.channels, data.resolution, data.resolution)
    sd = model.sigma_data
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress or rank != 0, desc="train", dynamic_ncols=True)
    t_last, n_last, loss_acc, n_acc = time.perf_counter(), 0, 0.0, 0
    last = {"step": step, "loss": float("nan"), "images_per_s": float("nan"), "checkpoint": str(resume_path or "")}
    model.train()
    with StopSignals() as stop:
        while step < args.steps:
            torch.manual_seed(_step_seed(args.seed + 1 + rank, step))   # dropout RNG: a function of (seed, rank, step)
            idx, drop, sigma, noise = _draw_global_batch(len(data), shape, args, step, device)
            lo = rank * (args.batch // world)
            lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup > 0 else args.lr
            for grp in opt.param_groups:
                grp["lr"] = lr
            step_loss = torch.zeros((), device=device, dtype=torch.float64)
            for m in range(args.accum):
                sl = slice(lo + m * micro, lo + (m + 1) * micro)
                y = to_float(data.images[idx[sl]]).to(device, non_blocking=True)
                labels = torch.where(drop[sl], -1, data.labels[idx[sl]]).to(device)
                sync = contextlib.nullcontext() if (world == 1 or m == args.accum - 1) else ddp.no_sync()
                with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    s = sigma[sl].to(device)
                    x = y + s.reshape(-1, 1, 1, 1) * noise[sl]
                    d = net(x, s, labels)
                    per = edm_loss(d, y, s, sd) if args.objective == "edm" else flow_matching_loss(
                        velocity_from_denoised(x, s, d.float()), y, noise[sl], sigma_to_t(s))      # [micro]
                    (per.mean() / args.accum).backward()
                step_loss += per.detach().sum()
            # one collective: the global loss and whether any rank was asked to stop (SIGTERM / SIGINT)
            shared = torch.stack([step_loss, torch.tensor(float(stop.requested), device=device, dtype=torch.float64)])
            if world > 1:
                dist.all_reduce(shared)
            loss, stopping = shared[0].item() / args.batch, shared[1].item() > 0     # mean over the global batch
            if not math.isfinite(loss):                   # before the update: no NaN weights, none saved
                raise FloatingPointError(f"training diverged: loss {loss} at step {step + 1} (lr {lr:g}); the last "
                                         f"checkpoint in {out} is kept")
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            ema_update(list(ema.parameters()), list(model.parameters()),
                       ema_beta_halflife(args.batch, step * args.batch, args.ema_kimg, args.ema_rampup))
            loss_acc, n_acc, n_last = loss_acc + loss, n_acc + 1, n_last + args.batch
            bar.update(1)
            if step % args.log_every == 0 or step == args.steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                ips = n_last / max(now - t_last, 1e-9)
                last.update(step=step, loss=loss_acc / n_acc, images_per_s=ips)
                if rank == 0:
                    append_jsonl(out / "log.jsonl", {"step": step, "loss": loss_acc / n_acc, "loss_last": loss, "lr": lr,
                                                     "images_per_s": ips, "kimg": step * args.batch / 1000,
                                                     "time": time.time()})
                    bar.set_postfix(loss=f"{loss_acc / n_acc:.4f}", img_s=f"{ips:.0f}")
                t_last, n_last, loss_acc, n_acc = now, 0, 0.0, 0
            if step % args.ckpt_every == 0 or step == args.steps or stopping:
                path = out / f"ckpt-{step:07d}.pt"
                if rank == 0:
                    save_checkpoint(path, model, ema, opt, step, asdict(args),
                                    rng_state={"torch": torch.get_rng_state(), "seed": args.seed},
                                    model_config={"name": args.config, "overrides": overrides},
                                    meta={"role": "main", "dataset": data.name,
                                          "architecture": {"name": args.config, **overrides}},
                                    extra={"data": {"name": data.name, "num_classes": data.num_classes,
                                                    "fingerprint": data_key}})
                    prune_checkpoints(out, args.keep)
                if world > 1:
                    dist.barrier()
                last["checkpoint"] = str(path)
            if stopping:
                if rank == 0:
                    print(f"[train] stopped by a signal at step {step}; {path} written; continue with --resume")
                break
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last, stop


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        with user_errors("python -m imagenet_ext.train"):
            summary = train(config)
    except KeyboardInterrupt:                             # SIGINT: the checkpoint is written and reported above
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[train] done: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
