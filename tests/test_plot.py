"""Every panel draws what it is given (the plotted arrays are the inputs); figures save to PNG."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toydiff import datasets, density, plot  # noqa: E402


def test_panels_draw_their_data_and_render(tmp_path):
    dist = datasets.three_gaussians()
    grid = density.make_grid((-2, 2, -2, 2), 40)
    logp = dist.log_prob(grid.points, 0.0, 0)
    x = dist.sample(200, cond=0, generator=torch.Generator().manual_seed(0))[0]
    fig, axes = plot.figure(1, 5)
    ax = plot.density_panel(grid, logp, axes[0, 0], title="p")
    expected = grid.image(logp.double())
    np.testing.assert_allclose(ax.images[0].get_array(), (expected - expected.max()).exp().numpy())  # p / max p
    assert ax is axes[0, 0] and ax.get_title() == "p"
    ax = plot.samples_panel(x, axes[0, 1], grid=grid, log_density=logp)
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), x.numpy())
    ax = plot.score_field(lambda p: dist.score(p, 0.3, None), grid, axes[0, 2], every=8)
    (arrows,) = ax.collections
    assert arrows.N == (40 // 8) ** 2                                  # every 8th grid point in each direction
    traj = torch.linspace(1, 0, 5)[:, None, None] * torch.randn(1, 20, 2) + x[:20]
    ax = plot.trajectories_panel(traj, axes[0, 3])
    assert len(ax.lines) == 20
    np.testing.assert_allclose(ax.lines[3].get_xydata(), traj[:, 3].numpy())
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), traj[-1].numpy())      # the end points
    lr = dist.log_prob(grid.points, 0.3, 0) - dist.log_prob(grid.points, 0.3, None)
    ax = plot.ratio_panel(grid, lr, axes[0, 4], field=lambda p: dist.score(p, 0.3, 0))
    np.testing.assert_allclose(ax.images[0].get_array(), grid.image(lr.double()).clamp(-4, 4).numpy())
    labels = [a.get_ylabel() for a in fig.axes[5:]]                     # the colorbars, with units
    assert labels == [r"$p\,/\,\max\,p$", r"$\log(p_1 / p_0)$ (nats)"], labels
    plot.save(fig, tmp_path / "panels.png")
    assert (tmp_path / "panels.png").stat().st_size > 1000
    from PIL import Image
    assert Image.open(tmp_path / "panels.png").info["dpi"] == pytest.approx((150, 150), abs=0.1)
    assert plot.samples_panel(x).figure is not fig                     # ax=None makes a new figure


def test_title_with_metrics():
    t = plot.title_with_metrics("cfg", dict(outlier_fraction=0.031, precision=0.95, recall=0.5))
    assert "3.1%" in t and "P 0.95" in t and "R 0.50" in t


def test_interact_redraws_into_its_output_widget_and_closes_figures():
    import matplotlib.pyplot as plt

    calls = []

    def draw(sigma=0.5, name="a"):
        calls.append((sigma, name))
        fig, ax = plt.subplots()
        ax.set_title(f"{sigma} {name}")
        return fig

    plt.close("all")
    box = plot.interact(draw, sigma=(0.1, 1.0, 0.1), name=["a", "b"])
    sigma, name, output = box.children
    assert (sigma.description, name.description) == ("sigma", "name") and calls == [(0.5, "a")]
    first = output.outputs[0]["data"]["image/png"]
    sigma.value = 0.3
    name.value = "b"
    assert calls[1:] == [(0.3, "a"), (0.3, "b")] and plt.get_fignums() == []
    assert output.outputs[0]["data"]["image/png"] != first and len(output.outputs) == 1
    assert output.msg_id == ""                      # never captured with `with output:` (what stalls nbclient)
    with pytest.raises(ValueError, match="no argument"):
        plot.interact(draw, tau=(0.0, 1.0))
    with pytest.raises(TypeError, match="Figure"):
        plot.interact(lambda sigma=0.5: None, sigma=(0.1, 1.0))
