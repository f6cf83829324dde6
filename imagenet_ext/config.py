"""The settings of an imagenet_ext training run: `TrainConfig` (validated as it is built, each error naming the
field) and `parse_args`, the command line that builds the same TrainConfig (each error naming the flag, one line,
exit status 2). Re-exported by imagenet_ext.train."""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, dataclass, fields

from toydiff.infra.clitools import Parser, check_output
from toydiff.infra.validation import check_device, check_positive_int, check_real, check_seed

__all__ = ["TrainConfig", "parse_args", "RESUME_KEYS", "OBJECTIVES"]

# settings a resumed run must share with its checkpoint (with the data's fingerprint and the model config);
# accum, device, threads, logging and checkpointing may change between the pieces of one run
RESUME_KEYS = ("resolution", "config", "channels", "dropout", "batch", "lr", "warmup", "p_uncond", "p_mean", "p_std",
               "ema_kimg", "ema_rampup", "seed", "precision", "objective")
OBJECTIVES = ("edm", "flow")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (the CLI flags, same names with '-' for '_'; see `parse_args` for help)."""
    data: str
    steps: int
    out: str
    resolution: int = 64
    cache: str | None = None
    config: str = "tiny"
    channels: int | None = None
    dropout: float | None = None
    batch: int = 64
    accum: int = 1
    lr: float = 1e-4
    warmup: int = 0
    p_uncond: float = 0.1
    p_mean: float = -1.2
    p_std: float = 1.2
    ema_kimg: float = 50.0
    ema_rampup: float = 0.05
    seed: int = 0
    ckpt_every: int = 1000
    keep: int = 3
    resume: str | None = None
    force_resume: bool = False
    log_every: int = 10
    precision: str = "bf16"
    objective: str = "edm"
    compile: bool = False
    device: str | None = None
    no_progress: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        for k in ("steps", "batch", "accum", "ckpt_every", "log_every", "resolution"):
            check_positive_int(getattr(self, k), k)
        for k in ("channels", "threads"):
            if getattr(self, k) is not None:
                check_positive_int(getattr(self, k), k)
        for k in ("warmup", "keep"):
            check_positive_int(getattr(self, k), k, minimum=0)
        check_real(self.lr, "lr", 0, lo_open=True), check_real(self.p_std, "p_std", 0, lo_open=True)
        check_real(self.p_mean, "p_mean"), check_real(self.p_uncond, "p_uncond", 0, 1)
        check_real(self.ema_kimg, "ema_kimg", 0), check_real(self.ema_rampup, "ema_rampup", 0)
        if self.dropout is not None:
            check_real(self.dropout, "dropout", 0, 1)
        check_seed(self.seed)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if self.device is not None:
            check_device(self.device, "device")
        check_output(self.out, "out", directory=True)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line (errors: one line naming the flag, exit 2)."""
    p = Parser(prog="python -m imagenet_ext.train", description="class-conditional EDM training with condition "
               "dropout, EMA and DDP", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="'digits', an ImageNet-64 directory/file, an image folder or a .zip")
    p.add_argument("--resolution", type=int), p.add_argument("--lr", type=float), p.add_argument("--ckpt-every", type=int)
    p.add_argument("--cache", help="directory for a memory-mapped .npy copy of ImageNet-64 (shared by a node's processes)")
    p.add_argument("--config", help="UNet config: tiny, xs, s, adm64")
    p.add_argument("--channels", type=int, help="override model_channels")
    p.add_argument("--dropout", type=float, help="override the config's dropout")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps")
    p.add_argument("--batch", type=int, help="GLOBAL batch (over all processes and accumulation)")
    p.add_argument("--accum", type=int, help="gradient accumulation micro-steps per step")
    p.add_argument("--warmup", type=int, help="linear learning-rate warmup steps")
    p.add_argument("--p-uncond", type=float, help="condition dropout probability (Ho & Salimans)")
    p.add_argument("--p-mean", type=float), p.add_argument("--p-std", type=float)
    p.add_argument("--ema-kimg", type=float, help="EMA half-life in thousands of images")
    p.add_argument("--ema-rampup", type=float, help="cap the EMA half-life at this fraction of images seen")
    p.add_argument("--seed", type=int), p.add_argument("--log-every", type=int)
    p.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl); one run at a time (locked)")
    p.add_argument("--keep", type=int, help="checkpoints to keep (0 = all)")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from the latest checkpoint in --out, or from "
                   "the given checkpoint file or run directory")
    p.add_argument("--force-resume", action="store_true", help="resume although the checkpoint's data or settings "
                   "differ from this run's")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="autocast dtype on GPU (CPU: fp32)")
    p.add_argument("--objective", help="edm: EDM's loss; flow: conditional flow matching on the network's velocity "
                   "view (rectified flow, logit-normal t with logit t ~ N(p_mean, p_std^2))")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true"), p.add_argument("--threads", type=int, help="torch threads")
    p.set_defaults(**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING})  # one source
    a = p.parse_args(argv)
    try:
        return TrainConfig(**vars(a))
    except (TypeError, ValueError) as e:                 # name the flag: the message starts with the field name
        p.error(re.sub(r"^(\w+)", lambda m: f"argument --{m.group(1).replace('_', '-')}:", str(e), count=1))
