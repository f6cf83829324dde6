"""Which code cells of a notebook its `interact` calls need (tests/test_widgets.py drives them in-process,
tests/test_browser.py in JupyterLab): the cells calling `interact` and, walking back, every cell binding a name that a
needed cell reads (inside its functions too). The other cells draw or print for the reader; nbval runs them all."""
from __future__ import annotations

import symtable

import nbformat


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    """The code cells' sources without IPython magics and shell lines."""
    return ["\n".join(line for line in c.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            for c in nb.cells if c.cell_type == "code"]


def _names(code: str) -> tuple[set[str], set[str]]:
    """(names a cell binds at module level, global names it reads anywhere, inside its functions included)."""
    top = symtable.symtable(code, "cell", "exec")
    binds = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    reads, tables = {s.get_name() for s in top.get_symbols() if s.is_referenced()}, list(top.get_children())
    while tables:
        table = tables.pop()
        reads |= {s.get_name() for s in table.get_symbols() if s.is_global()}
        tables += table.get_children()
    return binds, reads


def needed_cells(cells: list[str]) -> list[int]:
    """Indices of the code cells, up to the last one calling `interact`, that the `interact` calls need: every cell
    calling `interact`, and (walking back) every cell binding a name that a needed cell reads."""
    last = max(i for i, src in enumerate(cells) if "interact(" in src)
    keep, wanted = [], set()
    for i in range(last, -1, -1):
        binds, reads = _names(cells[i])
        if "interact(" in cells[i] or binds & wanted:
            keep.append(i)
            wanted |= reads
    return keep[::-1]


def interact_only(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `nb` without the code cells its `interact` calls do not need (markdown cells kept)."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    keep = {code[k] for k in needed_cells(code_cells(nb))}
    out = nbformat.from_dict(nb)
    out.cells = [c for i, c in enumerate(nb.cells) if c.cell_type != "code" or i in keep]
    return out
