"""GPU benchmark of the imagenet_ext UNets at 64x64: training images/s, MFU, peak memory, guided sampling.

For each config (default `s` and `adm64`, 1000 classes):
- forward FLOPs per image counted by torch's FlopCounterMode (multiply-add = 2 FLOPs); a training step is
  counted as 3x the forward (forward + backward ~ 2x forward);
- training: Adam, EDM loss, bf16 autocast (on GPU), optional torch.compile; images/s over timed steps after warm-up;
  MFU = 3 * forward FLOPs * images/s / the device's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s);
- peak memory (torch.cuda.max_memory_allocated; on CPU the process's max RSS);
- guided sampling images/s, EDM Heun: CFG through toydiff.guidance with both branches in ONE batched forward
  (2B images per call) vs two separate forwards of B (a `denoise_pair` that calls the network twice).

    python benchmarks/bench_unet.py                      # on a GPU
    python benchmarks/bench_unet.py --smoke              # tiny config on the CPU, seconds (checked in CI)
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch

from imagenet_ext.unet import build, forward_flops
from toydiff.guidance import CFG, guided
from toydiff.denoiser import count_parameters
from toydiff.training import edm_loss
from toydiff.samplers import sample

# dense bf16 tensor-core peaks, FLOP/s (vendor datasheets, without sparsity)
BF16_PEAK = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10", 125e12), ("L4", 121e12), ("4090", 165e12)]


def bf16_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK:
        if key in name:
            return name, peak
    return name, None


class TwoForwards:
    """The same network, but CFG's two branches as two separate forward calls (the unbatched baseline)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x, sigma, cond=None):
        return self.model(x, sigma, cond)

    def denoise_pair(self, x, sigma, cond):
        return self.model(x, sigma, cond), self.model(x, sigma, torch.full_like(cond, -1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(name: str, a: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build(name, resolution=a.resolution, num_classes=a.num_classes).to(device)
    cfg = model.cfg
    fwd = forward_flops(model)
    res: dict[str, Any] = {"config": name, "params_M": count_parameters(model) / 1e6, "fwd_gflop_per_image": fwd / 1e9,
                           "resolution": cfg.resolution, "batch": a.batch}
    amp = device.type == "cuda"
    net = torch.compile(model) if a.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    y = torch.rand(a.batch, cfg.in_channels, cfg.resolution, cfg.resolution, device=device) * 2 - 1
    labels = torch.randint(0, cfg.num_classes, (a.batch,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        sigma = (torch.randn(a.batch, device=device) * 1.2 - 1.2).exp()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = edm_loss(net(y + sigma[:, None, None, None] * torch.randn_like(y), sigma, labels), y, sigma,
                            0.5).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for _ in range(a.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    _sync(device)
    ips = a.batch * a.steps / (time.perf_counter() - t0)
    dev_name, peak = bf16_peak(device)
    res.update(device=dev_name, train_images_per_s=ips, train_tflops=3 * fwd * ips / 1e12,
               mfu=None if peak is None else 3 * fwd * ips / peak,
               peak_mem_gib=(torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30)
    # guided sampling: batched branches vs two forwards, same noise and labels
    model.eval()
    del opt
    b = a.sample_batch
    noise = torch.randn(b, cfg.in_channels, cfg.resolution, cfg.resolution, device=device) * 80.0
    cond = torch.randint(0, cfg.num_classes, (b,), device=device)
    for label, den in (("batched", net), ("two_forwards", TwoForwards(net))):
        d = guided(den, CFG(a.w))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            sample(d, noise, cond, method="heun", steps=2)                  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(a.sample_reps):
                sample(d, noise, cond, method="heun", steps=a.sample_steps)
            _sync(device)
        res[f"sample_images_per_s_{label}"] = b * a.sample_reps / (time.perf_counter() - t0)
    res["sample_speedup_batched"] = res["sample_images_per_s_batched"] / res["sample_images_per_s_two_forwards"]
    res["sample_steps"] = a.sample_steps
    return res


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["s", "adm64"])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64, help="training batch per GPU")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sample-batch", type=int, default=128)
    p.add_argument("--sample-steps", type=int, default=32, help="Heun steps (2 * steps - 1 guided evaluations)")
    p.add_argument("--sample-reps", type=int, default=2)
    p.add_argument("--w", type=float, default=2.0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny config, 16x16, CPU, a few steps (a correctness check)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.smoke:
        a.configs, a.resolution, a.num_classes, a.batch = ["tiny"], 16, 10, 4
        a.warmup, a.steps, a.sample_batch, a.sample_steps, a.sample_reps = 1, 2, 4, 3, 1
        a.device = a.device or "cpu"
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [bench_config(n, a, device) for n in a.configs]
    print("| config | params | GFLOP/img fwd | device | train img/s | TFLOP/s | MFU | peak mem GiB | "
          "CFG sample img/s batched | two forwards | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['config']} | {r['params_M']:.1f}M | {r['fwd_gflop_per_image']:.2f} | {r['device']} | "
              f"{r['train_images_per_s']:.1f} | {r['train_tflops']:.3f} | {mfu} | {r['peak_mem_gib']:.2f} | "
              f"{r['sample_images_per_s_batched']:.2f} | {r['sample_images_per_s_two_forwards']:.2f} | "
              f"{r['sample_speedup_batched']:.2f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
