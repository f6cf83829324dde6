"""No notebook can stall nbclient (the executor of `jupyter nbconvert --execute` and of Voila), checked cheaply.

Why: nbclient mimics an Output widget that captures output (`with output:`, as `ipywidgets.interact` and
`interactive_output` draw) by sending comm messages on the shell socket while it awaits the cell's execute_reply on
that socket, and then often misses the reply: `jupyter nbconvert --execute` stalled for the whole cell timeout, or
forever with none (its default). The notebooks draw through `toydiff.plot.interact` and the explorer's page through
`toydiff.plot.show_figure`, which set the Output widget's outputs instead.

nbval already runs every walkthrough and solution notebook to its end (tests run `--nbval-lax`, where a cell that
raises fails), so running them a second time under nbclient only to count comm messages doubled the notebook tier's
cost (notebook 06: 75 s + 93 s). Instead: (1) the mechanism is tested under nbclient on a small notebook that uses
both drawing helpers and on the explorer's page (which nbval does not run); (2) every notebook is checked to draw
its widgets only through those helpers (no capturing widget API in any code cell).
"""
import asyncio
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("notebooks/assignments/source/*/*.ipynb"))
EXPLORER = ROOT / "toydiff" / "app" / "explore.ipynb"
CELL_TIMEOUT, NOTEBOOK_TIMEOUT = 120, 300                       # seconds; the explorer's page takes ~10 s
# the widget APIs that capture output through an Output widget (nbclient then sends comm messages mid-cell)
CAPTURING = re.compile(r"\binteract(ive_output|ive|_manual)?\s*\(|\bwith\s+\w*(out|figure)\w*\s*:|\.capture\(")
HELPERS = "plot.interact("

SMALL = ['''%matplotlib inline
import matplotlib.pyplot as plt
import ipywidgets as W
from toydiff import plot

def draw(a=1.0):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, a])
    return fig

plot.interact(draw, a=(0.0, 2.0, 0.5))
draw(1.0);''', '''out = W.Output()
plot.show_figure(out, draw(2.0))
out''']


class CountingClient(NotebookClient):
    """NotebookClient counting the comm messages its Output-widget mimics send to the kernel."""
    sent = 0

    def on_comm_open_jupyter_widget(self, msg):
        widget = super().on_comm_open_jupyter_widget(msg)
        if widget is not None:
            send = widget.send

            def counted(*args, **kwargs):
                self.sent += 1
                return send(*args, **kwargs)
            widget.send = counted
        return widget


def _run(nb: nbformat.NotebookNode, where: Path) -> CountingClient:
    client = CountingClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(where)}})
    asyncio.run(asyncio.wait_for(client.async_execute(), NOTEBOOK_TIMEOUT))
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.execution_count is not None for c in code)
    return client


@pytest.mark.parametrize("nb, name", [(lambda: nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s)
                                                                               for s in SMALL]), "helpers"),
                                      (lambda: nbformat.read(EXPLORER, as_version=4), "explorer")],
                         ids=["helpers", "explorer"])
def test_drawing_helpers_send_no_comm_message_under_nbclient(nb, name, tmp_path):
    client = _run(nb(), EXPLORER.parent if name == "explorer" else tmp_path)
    assert client.sent == 0, f"{name}: nbclient sent {client.sent} comm messages (an Output widget captured output)"


def test_the_counter_sees_a_capturing_widget(tmp_path):
    """The check above can fail: `ipywidgets.interact` (which captures) makes nbclient send comm messages."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import ipywidgets as W\nW.interact(lambda a=1: print(a), a=(0, 2));")])
    assert _run(nb, tmp_path).sent > 0


@pytest.mark.parametrize("path", NOTEBOOKS + [EXPLORER], ids=lambda p: p.stem)
def test_notebooks_draw_widgets_only_through_the_safe_helpers(path):
    nb = nbformat.read(path, as_version=4)
    code = [line.partition("#")[0] for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()]
    bad = [line.strip() for line in code if CAPTURING.search(line) and HELPERS not in line]
    assert not bad, f"{path.name} captures output in an Output widget (use toydiff.plot.interact / show_figure): {bad}"
