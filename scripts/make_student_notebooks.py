"""Generate the student versions of the class assignments from the solution notebooks.

    python scripts/make_student_notebooks.py            # notebooks/assignments/*.ipynb -> notebooks/assignments/student/
    python scripts/make_student_notebooks.py --check    # exit 1 if the student notebooks are out of date

In a solution notebook, solution code sits between two marker lines (any indentation):

    # BEGIN SOLUTION
    ...the solution...
    # END SOLUTION

The generator replaces each region by `raise NotImplementedError("<hint>")` at the indentation of the
BEGIN marker (the hint: the text after "BEGIN SOLUTION", e.g. `# BEGIN SOLUTION  implement drop_labels`),
clears every output and execution count, and drops cells whose source starts with `# SOLUTION ONLY`.
Everything else (narration, the grader cells, the measurement cells) is kept as it is.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "notebooks" / "assignments"
STUDENTS = SOLUTIONS / "student"
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\b\s*(.*)$")
END = re.compile(r"^\s*# END SOLUTION\b")
ONLY = "# SOLUTION ONLY"


def strip_source(source: str, where: str = "cell") -> str:
    """The source with every solution region replaced by a NotImplementedError stub."""
    out, inside, indent = [], False, ""
    for lineno, line in enumerate(source.splitlines(), 1):
        m = BEGIN.match(line)
        if m:
            if inside:
                raise ValueError(f"{where}, line {lineno}: nested '# BEGIN SOLUTION'")
            inside, indent = True, m.group(1)
            hint = m.group(2).strip() or "your code here"
            out.append(f"{indent}# YOUR CODE HERE ({hint})")
            out.append(f"{indent}raise NotImplementedError({hint!r})")
        elif END.match(line):
            if not inside:
                raise ValueError(f"{where}, line {lineno}: '# END SOLUTION' without a BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '# BEGIN SOLUTION' is never closed")
    return "\n".join(out)


def solution_lines(source: str) -> list[str]:
    """The stripped, non-empty lines inside the solution regions of a source (for the no-leak test)."""
    lines, inside = [], False
    for line in source.splitlines():
        if BEGIN.match(line):
            inside = True
        elif END.match(line):
            inside = False
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def make_student(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A student copy of a solution notebook (a new object; the input is not modified)."""
    out = nbformat.v4.new_notebook(metadata={k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")})
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.lstrip().startswith(ONLY):
            continue
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(strip_source(cell.source, f"{name} cell {i}"))
            new.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source)
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        new.pop("id", None)
        out.cells.append(new)
    out.nbformat, out.nbformat_minor = 4, 4                      # no cell ids: stable bytes from run to run
    return out


def generate(src_dir: Path = SOLUTIONS, dst_dir: Path = STUDENTS) -> list[Path]:
    """Write a student notebook for every solution notebook in src_dir; returns the written paths."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(src_dir.glob("*.ipynb")):
        student = make_student(nbformat.read(path, as_version=4), path.name)
        target = dst_dir / path.name
        nbformat.write(student, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed student notebooks")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    stale = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(SOLUTIONS, Path(tmp)):
            committed = STUDENTS / path.name
            new = path.read_text()
            old = committed.read_text() if committed.is_file() else ""
            if new != old:
                stale += 1
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                           str(committed), "generated", n=1))
    print("student notebooks are up to date" if not stale else f"{stale} student notebook(s) out of date: "
          "run python scripts/make_student_notebooks.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
