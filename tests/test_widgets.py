"""Every `interact` of the walkthrough notebooks, driven over its sliders: the notebook's code runs in-process up to
its last `interact` call, which is recorded instead of displayed (only the cells the `interact` calls need: the others
draw or print for the reader, and nbval runs them); ipywidgets itself turns each abbreviation into its
widget (the same ranges a student gets), and the callback then runs at every corner of the sliders' box and at the
middle, and with one control at a time moved to each end (dropdowns: every option). No call may raise, and moving any
single control must change the rendered figure (nbval only ever runs the defaults)."""
from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest

from notebook_cells import code_cells, interact_only, needed_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("0*.ipynb") if "interact(" in p.read_text())
widgets = pytest.importorskip("ipywidgets", reason="ipywidgets is a test extra: pip install -e '.[test]'")


def run_until_interacts(path: Path, monkeypatch) -> list[tuple]:
    """Execute the notebook's code cells in order (IPython magics dropped) up to the last one calling `interact`;
    returns the recorded (callback, abbreviations) of every interact call."""
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    recorded = []
    monkeypatch.setattr(widgets, "interact", lambda f, **kw: recorded.append((f, kw)))
    from toydiff import plot                                  # the notebooks' interact (safe under nbconvert)
    monkeypatch.setattr(plot, "interact", lambda f, **kw: recorded.append((f, kw)))
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    monkeypatch.chdir(path.parent)
    cells = code_cells(nbformat.read(path, as_version=4))
    ns: dict = {"__name__": "__main__"}
    for i in needed_cells(cells):
        exec(compile(cells[i], f"{path.name} cell {i}", "exec"), ns)
        plt.close("all")
    assert recorded, f"{path.name}: no interact call was recorded"
    return recorded


def control_values(abbreviations: dict) -> dict[str, tuple[object, list]]:
    """For each control that ipywidgets builds from the abbreviations: (middle value, [the other values to visit]):
    a slider's middle step and its two ends (the values the slider really takes), a dropdown's middle option and
    all the others."""
    ui = widgets.interactive(lambda **kw: None, **abbreviations)
    out = {}
    for w in ui.kwargs_widgets:
        if hasattr(w, "options"):
            opts = [v for _, v in w._options_full]
            mid = len(opts) // 2
            out[w.description] = (opts[mid], opts[:mid] + opts[mid + 1:])
        else:
            mid = w.min + round((w.max - w.min) / w.step) // 2 * w.step
            out[w.description] = (type(w.min)(round(mid, 10)), [w.min, w.max])
    return out


def render(f, kwargs: dict) -> np.ndarray:
    import matplotlib.pyplot as plt
    plt.close("all")
    f(**kwargs)
    figs = [plt.figure(n) for n in plt.get_fignums()]
    assert figs, f"{f.__name__}{kwargs} drew no figure"
    images = []
    for fig in figs:
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba()).copy())
    plt.close("all")
    return np.concatenate([im.reshape(-1) for im in images])


def check_callback(f, abbreviations: dict, where: str) -> None:
    """Run f at the middle, at every corner of the controls' box, and with each control alone moved to each of its
    other values: nothing raises, and every single move changes the rendered figure."""
    values = control_values(abbreviations)
    assert set(values) == set(abbreviations), f"{where}: {f.__name__} has controls {sorted(values)}"
    middle = {k: mid for k, (mid, _) in values.items()}
    base = render(f, middle)
    for corner in itertools.product(*[(others[0], others[-1]) for _, others in values.values()]):
        render(f, dict(zip(values, corner)))
    for key, (_, others) in values.items():
        for value in others:
            moved = render(f, {**middle, key: value})
            assert moved.shape != base.shape or not np.array_equal(moved, base), (
                f"{where}: {f.__name__}: moving {key} from {middle[key]!r} to {value!r} leaves the figure unchanged")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_interact_callbacks_over_slider_ranges(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "agg")
    for f, abbreviations in run_until_interacts(path, monkeypatch):
        check_callback(f, abbreviations, path.name)


def test_needed_cells_are_the_interact_cells_and_what_they_read():
    """A cell is skipped only when no needed cell reads a name it binds; a function's own locals read nothing."""
    cells = ["import torch\nfrom toydiff import plot",          # read by the callback and the interact cell
             "data = torch.zeros(3)",                           # read inside the callback
             "x = 5\nfig = draw(data)",                         # binds only names the callback has as locals
             "def f(a=1):\n    x = data * a\n    fig = plot.figure(1, 1)\n    return fig",
             "f(2);",                                           # binds nothing
             "plot.interact(f, a=(0, 2, 1))",
             "after = 1"]
    assert needed_cells(cells) == [0, 1, 3, 5]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title")]
                                  + [nbformat.v4.new_code_cell(src) for src in cells])
    assert [c.source for c in interact_only(nb).cells] == ["# title"] + [cells[i] for i in (0, 1, 3, 5)]


def test_check_callback_catches_a_dead_slider_and_a_crash():
    """The check above can fail: a control the figure ignores, and a callback that raises at a slider's end."""
    import matplotlib.pyplot as plt
    matplotlib.use("agg")

    def ignores_b(a=1.0, b=0):
        plt.figure(figsize=(1, 1)).gca().plot([0, a])

    def crashes(a=1.0):
        if a > 1.5:
            raise ValueError("a too large")
        plt.figure(figsize=(1, 1)).gca().plot([0, a])

    with pytest.raises(AssertionError, match="moving b"):
        check_callback(ignores_b, {"a": (0.0, 2.0, 0.5), "b": [0, 1, 2]}, "test")
    with pytest.raises(ValueError, match="too large"):
        check_callback(crashes, {"a": (0.0, 2.0, 0.5)}, "test")
    assert control_values({"a": (0.0, 2.0, 0.5), "n": (200, 3000, 200), "m": ["x", "y", "z"]}) == {
        "a": (1.0, [0.0, 2.0]), "n": (1600, [200, 3000]), "m": ("y", ["x", "z"])}
