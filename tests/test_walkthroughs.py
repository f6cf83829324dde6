"""What the walkthrough notebooks (notebooks/0*.ipynb) teach, read from their markdown."""
from __future__ import annotations

from pathlib import Path

import nbformat

from toydiff import guidance

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))


def _markdown() -> str:
    return "\n".join(c.source for path in NOTEBOOKS for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "markdown")


def test_every_registered_guidance_method_is_taught_in_a_walkthrough():
    """Each recipe of the guidance registry is named (as `name`) in the markdown of a walkthrough, beside its paper:
    a method added to the registry fails here until a notebook teaches it (notebook 07 teaches the zoo)."""
    text = _markdown()
    missing = [name for name in guidance.names() if f"`{name}`" not in text]
    assert NOTEBOOKS and not missing, f"registry methods no walkthrough teaches: {missing}"


def test_stop_and_think_prompts_fold_their_answers():
    """A stop-and-think prompt keeps its answer folded (<details>), so students think before they read it."""
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown" and "Stop and think" in cell.source:
                assert "<details>" in cell.source and "</details>" in cell.source, f"{path.name}: unfolded answer"
