"""Every notebook runs to its end under nbclient (the executor of `jupyter nbconvert --execute`), within a timeout
per cell and for the whole notebook, and shows no ipywidgets Output widget.

Why the last check: nbclient mimics an Output widget (the one `ipywidgets.interact` draws into) by sending comm
messages on the shell socket while it awaits the cell's execute_reply on that socket, and then often misses the
reply: `jupyter nbconvert --execute` stalled for the whole cell timeout, or forever with none (its default).
The notebooks use `toydiff.plot.interact`, which updates a display by id instead (see its docstring).
"""
import asyncio
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("notebooks/assignments/*.ipynb"))
CELL_TIMEOUT, NOTEBOOK_TIMEOUT = 300, 600                       # seconds; the slowest notebook takes about 40 s


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_to_the_end_under_nbclient(path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    asyncio.run(asyncio.wait_for(client.async_execute(), NOTEBOOK_TIMEOUT))
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.execution_count is not None for c in code)
    output_widgets = [k for k, s in client.widget_state.items() if s.get("_model_name") == "OutputModel"]
    assert not output_widgets, f"{path.name} creates ipywidgets Output widgets (use toydiff.plot.interact)"
