"""The class assignments (notebooks/assignments/) under nbgrader, with nbgrader's own commands (its Python API):

- the committed student versions are what `nbgrader generate_assignment` makes from the solutions, and hide the
  solutions and the hidden tests;
- `nbgrader autograde` gives the solutions full marks and the stubs zero, and the feedback a student receives shows
  the toydiff.grading messages (the Ho & Salimans weight mix-up, named as such);
- every graded cell carries points, every assignment has hidden tests.
The solution notebooks themselves also run under nbval (the README test command)."""
from __future__ import annotations

import html
import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader", reason="nbgrader is a test extra: pip install -e '.[test]'")
from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.apps import NbGraderAPI  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "notebooks" / "assignments"
IDS = sorted(p.name for p in (COURSE / "source").iterdir() if p.is_dir())


def _script():
    spec = importlib.util.spec_from_file_location("make_student_notebooks", ROOT / "scripts" / "make_student_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _nbgrader(cells) -> list[dict]:
    return [c.metadata["nbgrader"] for c in cells if "nbgrader" in c.metadata]


def _course(tmp_path: Path) -> tuple[Path, NbGraderAPI]:
    course = tmp_path / "course"
    course.mkdir()
    shutil.copy(COURSE / "nbgrader_config.py", course)
    shutil.copytree(COURSE / "source", course / "source")
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    return course, NbGraderAPI(config=config)


def _ok(result: dict, what: str) -> None:
    assert result["success"], f"nbgrader {what} failed:\n{result.get('error')}\n{result.get('log')}"


def test_four_assignments_with_points_and_hidden_tests():
    assert IDS == ["a1", "a2", "a3", "a4"]
    for aid in IDS:
        (path,) = (COURSE / "source" / aid).glob("*.ipynb")
        nb = nbformat.read(path, as_version=4)
        meta = _nbgrader(nb.cells)
        tests = [m for m in meta if m["grade"]]
        assert sum(m["solution"] for m in meta) >= 2, f"{aid}: fewer than two solution cells"
        assert len(tests) >= 3 and all(m.get("points", 0) > 0 for m in tests), f"{aid}: test cells need points"
        assert len({m["grade_id"] for m in meta}) == len(meta), f"{aid}: grade_ids must be unique"
        hidden = [c for c in nb.cells if "### BEGIN HIDDEN TESTS" in c.source]
        assert hidden and all(c.metadata.get("nbgrader", {}).get("grade") for c in hidden), f"{aid}: no hidden tests"


def test_student_notebooks_are_what_nbgrader_generates():
    assert _script().stale() == [], "run python scripts/make_student_notebooks.py"


@pytest.mark.parametrize("aid", IDS)
def test_student_notebooks_hide_solutions_and_hidden_tests(aid):
    (src,) = (COURSE / "source" / aid).glob("*.ipynb")
    student = nbformat.read(COURSE / "student" / aid / src.name, as_version=4)
    text = "\n".join(c.source for c in student.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in text
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code"), "student notebooks carry no outputs"
    solution = nbformat.read(src, as_version=4)
    secret = set()
    for cell in solution.cells:
        lines, inside = cell.source.splitlines(), False
        for line in lines:
            if "### BEGIN" in line:
                inside = True
            elif "### END" in line:
                inside = False
            elif inside and len(line.strip()) > 12 and not line.strip().startswith("#"):
                secret.add(line.strip())
    leaked = secret & {line.strip() for line in text.splitlines()}
    assert secret and not leaked, f"{aid}: solution or hidden-test lines in the student notebook: {leaked}"


# a submission with the classic mistake: Ho & Salimans' (1 + w) D_1 - w D_0 where toydiff's w is theirs plus 1
MISTAKE = ("return d_uncond + w * (d_cond - d_uncond)", "return (1 + w) * d_cond - w * d_uncond")


@pytest.mark.filterwarnings("ignore:Object of type")        # nbgrader's own SQLAlchemy session warnings
@pytest.mark.parametrize("aid", IDS)
def test_nbgrader_autograde_full_marks_for_solutions_zero_for_stubs(aid, tmp_path):
    """nbgrader's own generate_assignment + autograde + generate_feedback on a copy of the course: the solution
    notebook scores every point, the stub notebook none, and the feedback shows why (toydiff.grading's messages)."""
    course, api = _course(tmp_path)
    _ok(api.generate_assignment(aid, force=True, create=True), "generate_assignment")
    (src,) = (course / "source" / aid).glob("*.ipynb")
    student = course / "student" / aid / src.name
    submissions = {"solution": src.read_text(), "stub": student.read_text()}
    if aid == "a2":
        assert MISTAKE[0] in submissions["solution"]
        submissions["mistake"] = submissions["solution"].replace(*MISTAKE)
    for sid, text in submissions.items():
        (course / "submitted" / sid / aid).mkdir(parents=True)
        (course / "submitted" / sid / aid / src.name).write_text(text)
        _ok(api.autograde(aid, sid, force=True, create=True), f"autograde {sid}")
        if sid != "solution":
            _ok(api.generate_feedback(aid, sid, force=True), f"generate_feedback {sid}")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {sid: (gb.find_submission(aid, sid).score, gb.find_submission(aid, sid).max_score) for sid in submissions}
    total = scores["solution"][1]
    assert total > 0 and scores["solution"][0] == total, scores
    assert scores["stub"][0] == 0, scores
    graded = nbformat.read(course / "autograded" / "stub" / aid / src.name, as_version=4)
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in graded.cells), "autograde must restore the hidden tests"
    feedback = html.unescape((course / "feedback" / "stub" / aid / src.with_suffix(".html").name).read_text())
    assert "NotImplementedError" in feedback
    if aid == "a2":
        assert 0 < scores["mistake"][0] < total, scores
        feedback = html.unescape((course / "feedback" / "mistake" / aid / src.with_suffix(".html").name).read_text())
        assert "that is Ho & Salimans' convention" in feedback, "the feedback must explain the weight mix-up"
