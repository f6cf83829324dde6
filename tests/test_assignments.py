"""The class assignments (notebooks/assignments/): the student versions are what the generator makes from the
solution notebooks, contain no solution code, and their automatic checks fail on the stubs. The solution
notebooks themselves run under nbval (the README test command)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "notebooks" / "assignments"
STUDENTS = SOLUTIONS / "student"
NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "scripts" / "make_student_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def test_there_are_at_least_three_assignments():
    assert len(NAMES) >= 3, NAMES
    for name in NAMES:
        nb = nbformat.read(SOLUTIONS / name, as_version=4)
        assert any("exercise" in _tags(c) for c in nb.cells), f"{name}: no cell tagged 'exercise'"
        assert any("grader" in _tags(c) for c in nb.cells), f"{name}: no cell tagged 'grader'"


def test_student_notebooks_up_to_date(tmp_path):
    gen = _generator()
    written = gen.generate(SOLUTIONS, tmp_path)
    assert sorted(p.name for p in written) == NAMES
    assert sorted(p.name for p in STUDENTS.glob("*.ipynb")) == NAMES, \
        "notebooks/assignments/student/ must hold exactly one student notebook per solution notebook"
    for path in written:
        new = nbformat.read(path, as_version=4)
        old = nbformat.read(STUDENTS / path.name, as_version=4)
        assert [(c.cell_type, c.source) for c in old.cells] == [(c.cell_type, c.source) for c in new.cells], (
            f"{path.name}: the student notebook is out of date; run python scripts/make_student_notebooks.py")


@pytest.mark.parametrize("name", NAMES)
def test_student_notebooks_contain_no_solution_code(name):
    gen = _generator()
    solution = nbformat.read(SOLUTIONS / name, as_version=4)
    student = nbformat.read(STUDENTS / name, as_version=4)
    student_text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in student_text and "END SOLUTION" not in student_text
    assert "SOLUTION ONLY" not in student_text
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code"), "student notebooks carry no outputs"
    student_lines = {line.strip() for line in student_text.splitlines()}
    leaked = []
    for cell in solution.cells:
        if cell.cell_type == "code":
            leaked += [line for line in gen.solution_lines(cell.source)
                       if line in student_lines and not line.startswith("#") and len(line) > 8]
    assert not leaked, f"{name}: solution lines found in the student notebook: {leaked}"
    n_regions = sum(len(re.findall(r"# BEGIN SOLUTION", c.source)) for c in solution.cells if c.cell_type == "code")
    assert student_text.count("raise NotImplementedError") >= n_regions > 0


def test_generator_stub_keeps_indentation_and_hint():
    gen = _generator()
    src = "def f(x):\n    '''doc'''\n    # BEGIN SOLUTION implement f\n    return x + 1\n    # END SOLUTION\n"
    out = gen.strip_source(src)
    assert "return x + 1" not in out
    assert "    raise NotImplementedError('implement f')" in out
    compile(out, "stub", "exec")
    with pytest.raises(ValueError, match="never closed"):
        gen.strip_source("# BEGIN SOLUTION\nx = 1\n")


@pytest.mark.parametrize("name", NAMES)
def test_student_checks_fail_on_the_stubs(name, monkeypatch):
    """Run the student notebook's code in order (magics dropped, cells tagged 'uses-solution' skipped): every
    'exercise' cell defines its stub without error and every 'grader' cell raises NotImplementedError."""
    monkeypatch.setenv("MPLBACKEND", "agg")
    import matplotlib
    matplotlib.use("agg")
    student = nbformat.read(STUDENTS / name, as_version=4)
    ns: dict = {"__name__": "__student__"}
    graders = 0
    for i, cell in enumerate(student.cells):
        tags = _tags(cell)
        if cell.cell_type != "code" or "uses-solution" in tags:
            continue
        src = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        code = compile(src, f"{name} cell {i}", "exec")
        if "grader" in tags:
            graders += 1
            with pytest.raises(NotImplementedError):
                exec(code, ns)
        else:
            exec(code, ns)
    assert graders >= 2, f"{name}: expected at least two grader cells"
