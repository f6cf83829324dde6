"""The outputs of `toydiff.bench`: `leaderboard.md` (one table per dataset, best first), `bench.json` (everything,
the whole sweeps included) and one Pareto plot per dataset (outlier fraction vs recall, one curve per method over
its weights)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..infra.atomic import naming_full_disk
from ..toy.metrics import LABELS

__all__ = ["leaderboard", "pareto_figure", "write_outputs"]

_COLUMNS = tuple((k, LABELS[k]) for k in ("tv", "kl", "outlier_fraction", "precision", "recall", "class_accuracy",
                                          "energy_distance"))
_MARKERS = "osD^v<>pXh*P8d"
_CFG_LIKE = ("cfg", "cfg_separate", "cfg_interval", "cfg_rescale", "apg", "cfgpp", "cfg_zero_star", "linear_cfg")


def _ranked(data: dict, criterion: str) -> list[tuple[str, dict]]:
    return sorted(data["methods"].items(), key=lambda kv: (round(kv[1]["best"][criterion], 12), kv[0]))


def leaderboard(result: dict) -> str:
    """Markdown: per dataset, the methods at their best weight, ranked by the criterion (smaller is better)."""
    cfg, criterion = result["config"], result["criterion"]
    lines = ["# toydiff bench: guidance methods against the exact ground truth", "",
             f"Criterion: each method at the weight w with the smallest **{criterion.upper()}** (total variation "
             f"between the sample histogram and the exact mass of p(x|c) per bin, {cfg['bins']}x{cfg['bins']} bins "
             f"+ outside, mean over classes), ranked by it. w = 1 is no guidance (Ho & Salimans' w is w - 1); for CFG++ the "
             f"column is its lambda. {cfg['n']} samples per weight, EDM Heun {cfg['steps']} steps from sigma_max = "
             f"{cfg['sigma_max']:g}, seed {cfg['seed']}, weights swept: {cfg['grid']}.", ""]
    for name, data in result["datasets"].items():
        floor = data["noise_floor"]
        lines += [f"## {name}", "",
                  f"Histogram noise floor (true samples, same n, {floor['seeds']} seeds): TV {floor['tv']:.3f} "
                  f"(std {floor['tv_std']:.3f}), KL {floor['kl']:.3f}. TV gaps smaller than about twice that std are "
                  f"noise.", "",
                  "| rank | method | w | " + " | ".join(h for _, h in _COLUMNS) + " |",
                  "|---:|---|---:|" + "---:|" * len(_COLUMNS)]
        for rank, (method, entry) in enumerate(_ranked(data, criterion), 1):
            best = entry["best"]
            lines.append(f"| {rank} | {method} | {best['w']:g} | "
                         + " | ".join(f"{best[k]:.3f}" for k, _ in _COLUMNS) + " |")
        lines.append("")
        if "samplers" in data:
            lines += _sampler_lines(data["samplers"])
    return "\n".join(lines)


def _sampler_lines(table: dict) -> list[str]:
    """Markdown: the samplers at equal cost (`toydiff.bench.sampler_table`), TV and outliers per denoiser and budget."""
    results = table["results"]
    columns = [(d, e, k) for d in results for e in results[d] for k in ("tv", "outlier_fraction")]
    name = {"exact": "exact", "cfg": f"CFG w={table['w']:g}"}
    rows = list(next(iter(next(iter(results.values())).values())))
    lines = ["Samplers at equal cost (denoiser evaluations; same start noise; `toydiff.bench.sampler_table`):", "",
             "| sampler | " + " | ".join(f"{name[d]} {LABELS[k]}, {e} ev." for d, e, k in columns)
             + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{results[d][e][row][k]:.3f}" for d, e, k in columns) + " |")
    return lines + [""]


def pareto_figure(name: str, data: dict, criterion: str = "tv") -> Figure:
    """Outlier fraction vs recall, one curve per method through its weights (marker size
    grows with w; the curves of the w-swept methods start at the "none" point, w = 1), a star at the weight the
    criterion picks; up-left is better. Two panels, CFG-like methods (the unconditional or null branch as D_0)
    and the rest, each with the exact denoiser and no guidance as references."""
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 6.2), sharey=True, layout="constrained")
    cmap = plt.get_cmap("tab20")
    methods = data["methods"]
    none = methods.get("none", {}).get("best")
    refs = [m for m in ("exact", "none") if m in methods]
    groups = ([m for m in methods if m in _CFG_LIKE], [m for m in methods if m not in _CFG_LIKE and m not in refs])
    for ax, group, title in zip(axes, groups, ("CFG and its variants", "other guidance")):
        for method in refs + group:
            i = list(methods).index(method)
            entry, color, marker = methods[method], cmap(i % 20), _MARKERS[i % len(_MARKERS)]
            sweep = entry["sweep"]
            xs, ys = [r["outlier_fraction"] for r in sweep], [r["recall"] for r in sweep]
            start = [none] if none is not None and entry["from_none"] else []      # w = 1 is the "none" point
            ax.plot([r["outlier_fraction"] for r in start] + xs, [r["recall"] for r in start] + ys, "-", color=color,
                    lw=1.2, alpha=0.8)
            grid = f"$w$ {sweep[0]['w']:g}$\\to${sweep[-1]['w']:g}" if len(sweep) > 1 else f"$w$ {sweep[0]['w']:g}"
            ax.scatter(xs, ys, s=[16 + 14 * j for j in range(len(xs))], color=color, marker=marker, alpha=0.85,
                       label=f"{entry['label']} ({grid})")
            ax.scatter([entry["best"]["outlier_fraction"]], [entry["best"]["recall"]], s=180, marker="*", facecolor="none",
                       edgecolor=color, linewidths=1.3)
        right = ax.get_xlim()[1]
        ax.set_xlim(-0.02 * right, right)                                           # room for the markers at 0
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("outlier fraction (below the 1% quantile of true $\\log p(x|c)$)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8.5, frameon=False)
    axes[0].set_ylabel("recall ($k$-NN, $k=3$)")
    fig.suptitle(f"{name}: outliers vs recall over the guidance weight $w$ (up-left is better)\n"
                 f"curves start at no guidance ($w = 1$), marker size grows with $w$, "
                 f"$\\star$ = best $w$ by {criterion.upper()}")
    return fig


def write_outputs(result: dict, out: str | os.PathLike) -> list[Path]:
    """Write leaderboard.md, bench.json and pareto_<dataset>.png (150 dpi) into `out`; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.md", out / "bench.json"]
    for path, text in zip(paths, (leaderboard(result), json.dumps(result, indent=1))):
        with naming_full_disk(path):                       # a full disk names the file, as every writer does
            path.write_text(text)
    for name, data in result["datasets"].items():
        fig = pareto_figure(name, data, result["criterion"])
        paths.append(out / f"pareto_{name}.png")
        with naming_full_disk(paths[-1]):
            fig.savefig(paths[-1], dpi=150)
        plt.close(fig)
    return paths
