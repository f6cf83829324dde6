"""ADM-style class-conditional UNet with EDM preconditioning, obeying toydiff's denoiser contract.

Network: Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs", the ADM UNet, their guided-diffusion
code): residual blocks with scale-shift norm, resblock up/down-sampling, multi-head self-attention at
chosen resolutions, a noise embedding plus a class embedding added to it. The class table has one extra
row, the null label, used by condition dropout and by CFG's unconditional branch (Ho & Salimans 2022).

Wrapper: EDM preconditioning (Karras et al. 2022, Table 1 / Eq. 7):
    D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), c)
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,   sd = sigma_data = 0.5.

`build(name, **kwargs)` gives the named configurations: `tiny` (CPU tests and the digits proof),
`xs` / `s` (guide and main model for autoguidance, Karras et al. 2024), `adm64` (ADM ImageNet-64:
192 channels, multipliers 1,2,3,4, 3 residual blocks, attention at 32,16,8 with 64-channel heads,
dropout 0.1; about 296M parameters).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toydiff.core.denoiser import count_parameters, edm_preconditioning
from toydiff.infra.clitools import Parser, positive_int, user_errors
from toydiff.infra.validation import as_sigma, check_batch, label_index, sigma_like

__all__ = ["UNetConfig", "CONFIGS", "ADMUNet", "EDMDenoiser", "build", "forward_flops"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of the ADM UNet (names follow guided-diffusion's `create_model`)."""
    resolution: int = 64
    in_channels: int = 3
    num_classes: int = 1000
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (32, 16, 8)   # image resolutions (pixels) with self-attention
    head_channels: int = 64                          # channels per attention head
    dropout: float = 0.1
    sigma_data: float = 0.5
    groups: int = 32                                 # GroupNorm groups

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONFIGS: dict[str, UNetConfig] = {
    # CPU: 16x16 digits in minutes. resolutions 16 -> 8 -> 4, attention at 8.
    "tiny": UNetConfig(resolution=16, num_classes=10, model_channels=32, channel_mult=(1, 2, 2),
                       num_res_blocks=1, attn_resolutions=(8,), head_channels=32, dropout=0.0, groups=8),
    # the weaker guide for autoguidance (Karras et al. 2024 use EDM2-XS as guide of EDM2-S)
    "xs": UNetConfig(model_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                     attn_resolutions=(16, 8), head_channels=64, dropout=0.0),
    "s": UNetConfig(model_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                    attn_resolutions=(32, 16, 8), head_channels=64, dropout=0.1),
    # Dhariwal & Nichol 2021, ImageNet 64x64
    "adm64": UNetConfig(),
}


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch, eps=1e-5)


def _zero(module: nn.Module) -> nn.Module:
    """ADM zero-initializes the last layer of every residual branch and of the network."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def noise_embedding(c_noise: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] of the noise label (ADM's timestep embedding applied to EDM's c_noise)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
    args = c_noise.float()[:, None] * freqs[None]        # [N, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """ADM residual block: h = conv(SiLU(GN(x))); h = GN(h) * (1 + scale) + shift; out = skip(x) + conv(SiLU(h)).

    `up` / `down` resample both branches by nearest upsampling / 2x2 average pooling (resblock_updown).
    """

    def __init__(self, cin: int, cout: int, emb: int, dropout: float, groups: int,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.up, self.down = up, down
        self.norm0 = _norm(cin, groups)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, 2 * cout)             # -> (scale, shift)
        self.norm1 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        h = self.conv0(self._resample(h))
        x = self._resample(x)
        scale, shift = self.affine(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm1(h) * (1 + scale) + shift
        h = self.conv1(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual (ADM AttentionBlock, head_channels per head)."""

    def __init__(self, ch: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, ch // head_channels)        # a narrow layer gets one head of all its channels
        if ch % self.heads:
            raise ValueError(f"channels {ch} not divisible into heads of {head_channels} channels")
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        n, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x).reshape(n, c, hgt * wid))             # [N, 3C, L]
        q, k, v = qkv.reshape(n, 3, self.heads, c // self.heads, hgt * wid).permute(1, 0, 2, 4, 3)  # [N, h, L, d]
        h = F.scaled_dot_product_attention(q, k, v)                          # softmax(q k^T / sqrt(d)) v
        h = h.permute(0, 1, 3, 2).reshape(n, c, hgt * wid)
        return x + self.proj(h).reshape(n, c, hgt, wid)


class ADMUNet(nn.Module):
    """The raw network F(x_in, c_noise, class) of Dhariwal & Nichol 2021 (class-conditional, null label = num_classes)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch0, emb = cfg.model_channels, 4 * cfg.model_channels
        self.map = nn.Sequential(nn.Linear(ch0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(cfg.num_classes + 1, emb)   # last row: the null label
        nn.init.zeros_(self.label.weight[-1])                    # null starts as "no class information"
        self.enc = nn.ModuleList([nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)])
        skips, ch, res = [ch0], ch0, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, ch0 * mult, emb, cfg.dropout, cfg.groups)]
                ch = ch0 * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch, cfg.head_channels, cfg.groups))
                self.enc.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.enc.append(nn.ModuleList([ResBlock(ch, ch, emb, cfg.dropout, cfg.groups, down=True)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, cfg.dropout, cfg.groups),
                                  AttnBlock(ch, cfg.head_channels, cfg.groups),
                                  ResBlock(ch, ch, emb, cfg.dropout, cfg.groups)])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), ch0 * mult, emb, cfg.dropout, cfg.groups)]
                ch = ch0 * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch, cfg.head_channels, cfg.groups))
                if level and i == cfg.num_res_blocks:
                    blocks.append(ResBlock(ch, ch, emb, cfg.dropout, cfg.groups, up=True))
                    res *= 2
                self.dec.append(nn.ModuleList(blocks))
        self.out = nn.Sequential(_norm(ch, cfg.groups), nn.SiLU(), _zero(nn.Conv2d(ch, cfg.in_channels, 3, padding=1)))

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor) -> Tensor:
        # x [N, C, H, W]; c_noise [N]; labels int64 [N] in [0, num_classes] (num_classes = null)
        emb = self.map(noise_embedding(c_noise, self.cfg.model_channels)) + self.label(labels)
        hs = [self.enc[0](x)]
        h = hs[0]
        for blocks in self.enc[1:]:
            for blk in blocks:
                h = blk(h, emb)
            hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blocks in self.dec:
            h = torch.cat([h, hs.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        return self.out(h)


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser D(x, sigma, cond) -> x0_hat (Karras et al. 2022, Eq. 7 and Table 1).

    x: [N, C, H, W]; sigma: float, 0-d, [N] or [N, 1, 1, 1]; cond: int64 [N] with -1 = null label, or None
    (the whole batch unconditional). Computation of the preconditioning is in float32 even under bf16 autocast.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sigma_data = cfg.sigma_data
        self.num_classes = cfg.num_classes
        self.net = ADMUNet(cfg)

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        x = check_batch(x, "x")
        n = x.shape[0]
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"x must have shape [N, {self.cfg.in_channels}, H, W], got {tuple(x.shape)}")
        s = as_sigma(sigma, n, device=x.device, dtype=torch.float32)          # [N]
        labels = label_index(cond, n, self.num_classes, device=x.device)     # null (-1 / None) -> num_classes
        x32 = x.float()
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma_like(s, x32), self.sigma_data, sigma_floor=1e-20)
        f = self.net(c_in * x32, c_noise.reshape(-1), labels).float()          # sigma = 0 -> D = x exactly
        return (c_skip * x32 + c_out * f).to(x.dtype)


def build(name: str, **kwargs: Any) -> EDMDenoiser:
    """The named configuration (`tiny`, `xs`, `s`, `adm64`) as an EDM denoiser; kwargs override UNetConfig fields.

    Convenience aliases: `channels` -> model_channels, `in_ch` -> in_channels.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; expected one of {sorted(CONFIGS)}")
    alias = {"channels": "model_channels", "in_ch": "in_channels"}
    kw = {alias.get(k, k): v for k, v in kwargs.items()}
    known = set(UNetConfig.__dataclass_fields__)
    bad = sorted(set(kw) - known)
    if bad:
        raise TypeError(f"unknown UNet option(s) {bad}; expected some of {sorted(known)}")
    for key in ("channel_mult", "attn_resolutions"):
        if key in kw:
            kw[key] = tuple(int(v) for v in kw[key])
    cfg = replace(CONFIGS[name], **kw)
    levels = len(cfg.channel_mult)
    if cfg.resolution < 2 ** (levels - 1) or cfg.resolution % (2 ** (levels - 1)):
        raise ValueError(f"resolution {cfg.resolution} must be a positive multiple of 2^{levels - 1} for {levels} "
                         f"levels")
    return EDMDenoiser(cfg)


def forward_flops(model: EDMDenoiser, batch: int = 1) -> int:
    """Forward FLOPs (multiply-add = 2 FLOPs) for `batch` images, counted by torch's FlopCounterMode on the
    meta device (no memory, no compute), so it works for adm64 on a laptop."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    with torch.device("meta"):
        meta = EDMDenoiser(cfg)
        x = torch.zeros(batch, cfg.in_channels, cfg.resolution, cfg.resolution)
        c_noise = torch.zeros(batch)
        labels = torch.zeros(batch, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta.net(x, c_noise, labels)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    """`python -m imagenet_ext.unet [names...]`: print parameter counts and forward FLOPs per image."""
    p = Parser(prog="python -m imagenet_ext.unet", description=main.__doc__)
    p.add_argument("names", nargs="*", default=list(CONFIGS))
    p.add_argument("--resolution", type=positive_int, default=None)
    a = p.parse_args(argv)
    for name in a.names:
        kw = {} if a.resolution is None else {"resolution": a.resolution}
        with torch.device("meta"), user_errors(p.prog):
            m = build(name, **kw)
        print(f"{name:6s} res {m.cfg.resolution:3d}  params {count_parameters(m) / 1e6:8.2f} M  "
              f"forward {forward_flops(m) / 1e9:8.2f} GFLOP/image")


if __name__ == "__main__":
    main()
