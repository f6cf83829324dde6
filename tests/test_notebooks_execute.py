"""Every notebook runs to its end under nbclient (the executor of `jupyter nbconvert --execute`), within a timeout
per cell and for the whole notebook, and nbclient never has to send a comm message to the kernel.

Why the last check: nbclient mimics an Output widget that captures output (`with output:`, as `ipywidgets.interact`
draws) by sending comm messages on the shell socket while it awaits the cell's execute_reply on that socket, and
then often misses the reply: `jupyter nbconvert --execute` stalled for the whole cell timeout, or forever with none
(its default). Voila executes `toydiff explore`'s page the same way. The notebooks use `toydiff.plot.interact` and
the explorer's page `toydiff.plot.show_figure`, which set the Output widget's outputs instead.
"""
import asyncio
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = (sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("notebooks/assignments/*.ipynb"))
             + [ROOT / "toydiff" / "app" / "explore.ipynb"])      # Voila executes the explorer's page through nbclient too
CELL_TIMEOUT, NOTEBOOK_TIMEOUT = 300, 600                       # seconds; the slowest notebook takes about 40 s


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_to_the_end_under_nbclient(path):
    nb = nbformat.read(path, as_version=4)
    client = CountingClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    asyncio.run(asyncio.wait_for(client.async_execute(), NOTEBOOK_TIMEOUT))
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.execution_count is not None for c in code)
    assert client.sent == 0, f"{path.name} captures output in an Output widget (use toydiff.plot.interact / show_figure)"
