"""Every figure a library function draws is fit for a lecture hall: stored at plot.NOTEBOOK_DPI (saved PNGs at
plot.DPI), at least 600 px wide, no text under plot.FONT points, and no two pieces of text overlapping (their window
extents from the renderer)."""
import base64
import io
import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from toydiff import datasets, density, explore, figures, plot, zoo  # noqa: E402


def text_boxes(fig: Figure) -> list[tuple[Text, object]]:
    """(text, window extent in pixels) of every visible, non-empty text of the drawn figure."""
    fig.draw_without_rendering()                        # the layout as it is saved (constrained layout included)
    boxes = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip():
            box = t.get_window_extent()
            if box.width > 0 and box.height > 0:
                boxes.append((t, box))
    return boxes


def overlapping(boxes, tolerance: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than `tolerance` pixels both ways."""
    bad = []
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        dx, dy = min(ba.x1, bb.x1) - max(ba.x0, bb.x0), min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if dx > tolerance and dy > tolerance:
            bad.append((a.get_text(), b.get_text()))
    return bad


def check(fig: Figure) -> None:
    assert fig.dpi == plot.NOTEBOOK_DPI
    assert fig.get_size_inches()[0] * fig.dpi >= 600
    boxes = text_boxes(fig)
    small = sorted({(t.get_text(), t.get_fontsize()) for t, _ in boxes if t.get_fontsize() < plot.FONT})
    assert not small, f"text under {plot.FONT} pt: {small[:5]}"
    assert overlapping(boxes) == []


def test_the_checks_fail_on_a_crowded_figure():
    fig, axes = plot.figure(1, 2)
    axes[0, 0].set_title("a title far too long for its narrow panel, running into the next one")
    axes[0, 1].set_title("the next one")
    assert overlapping(text_boxes(fig)) != []
    fig.texts.clear()
    fig.text(0.5, 0.5, "tiny", fontsize=6)
    with pytest.raises(AssertionError, match="under"):
        check(fig)


@pytest.fixture(scope="module")
def models():
    return zoo.pretrained(progress=False)


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_reproductions_fit_a_lecture_hall(name, models, tmp_path):
    fig, _ = figures.reproduce(name, models, fast=True)
    check(fig)
    path = plot.save(fig, tmp_path / f"{name}.png")
    from PIL import Image
    assert Image.open(path).info["dpi"] == pytest.approx((plot.DPI, plot.DPI), abs=0.1)


def test_panels_fit_a_lecture_hall():
    dist = datasets.three_gaussians()
    grid = density.make_grid((-2, 2, -2, 2), 40)
    logp = dist.log_prob(grid.points, 0.0, 0)
    x = dist.sample(200, cond=0, generator=torch.Generator().manual_seed(0))[0]
    fig, axes = plot.figure(1, 3)
    plot.density_panel(grid, logp, axes[0, 0], title=r"$p(x \mid 0)$")
    plot.samples_panel(x, axes[0, 1], grid=grid, log_density=logp, title="samples")
    lr = dist.log_prob(grid.points, 0.3, 0) - dist.log_prob(grid.points, 0.3, None)
    plot.ratio_panel(grid, lr, axes[0, 2], title=r"$\log(p_1/p_0)$, $\sigma = 0.3$")
    check(fig)
    check(plot.samples_panel(x, title="one panel, widened").figure)


def test_explorer_figure_fits_a_lecture_hall():
    ex = explore.Explorer(n=200, steps=8)
    fig, _ = ex.update("three_gaussians", "cfg", 3.0)
    check(fig)


NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("0[1-6]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebook_figures_fit_a_lecture_hall(path):
    """Every figure stored in notebooks 01-06 was drawn at >= 110 dpi and is >= 600 px wide; each file < 2 MB."""
    from PIL import Image

    assert path.stat().st_size < 2_000_000
    images = [base64.b64decode(out["data"]["image/png"]) for cell in json.loads(path.read_text())["cells"]
              for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images
    for png in images:
        image = Image.open(io.BytesIO(png))
        assert image.info["dpi"][0] >= 110 - 0.5 and image.size[0] >= 600, (image.info.get("dpi"), image.size)
