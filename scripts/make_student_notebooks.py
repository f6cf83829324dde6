"""Generate the student versions of the class assignments with nbgrader (the tool does the work).

    python scripts/make_student_notebooks.py            # source/aN (solutions) -> student/aN, for every assignment
    python scripts/make_student_notebooks.py --check    # exit 1 if a committed student notebook is out of date

The same as `cd notebooks/assignments && nbgrader generate_assignment aN --force` for each N, through nbgrader's
Python API (one process instead of one per assignment). The course configuration is
notebooks/assignments/nbgrader_config.py; `--check` generates into a temporary copy of the course.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "notebooks" / "assignments"


def assignments(course: Path = COURSE) -> list[str]:
    """The assignment ids: the folders of source/."""
    return sorted(p.name for p in (course / "source").iterdir() if p.is_dir())


def generate(course: Path = COURSE) -> list[Path]:
    """Run nbgrader generate_assignment for every assignment of `course`; returns the student notebooks."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    api = NbGraderAPI(config=config)
    for aid in assignments(course):
        result = api.generate_assignment(aid, force=True, create=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {aid} failed:\n{result['error']}\n{result['log']}")
    return sorted((course / "student").glob("*/*.ipynb"))


def cells(path: Path) -> list[tuple]:
    """What a student notebook is made of: (type, source, nbgrader metadata) per cell."""
    nb = nbformat.read(path, as_version=4)
    return [(c.cell_type, c.source, c.metadata.get("nbgrader")) for c in nb.cells]


def stale(course: Path = COURSE) -> list[str]:
    """The student notebooks (relative paths) that differ from what nbgrader generates now, or are missing/extra."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "course"
        copy.mkdir()
        shutil.copy(course / "nbgrader_config.py", copy)
        shutil.copytree(course / "source", copy / "source")
        fresh = {p.relative_to(copy / "student") for p in generate(copy)}
        committed = {p.relative_to(course / "student") for p in (course / "student").glob("*/*.ipynb")}
        return sorted(str(p) for p in fresh ^ committed) + sorted(
            str(p) for p in fresh & committed if cells(copy / "student" / p) != cells(course / "student" / p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed student notebooks")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    bad = stale()
    print("student notebooks are up to date" if not bad else
          f"out of date: {', '.join(bad)}; run python scripts/make_student_notebooks.py")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
