"""The class assignments (notebooks/assignments/) under nbgrader, with nbgrader's own commands (its Python API):

- the committed student versions are what `nbgrader generate_assignment` makes from the solutions, and hide the
  solutions and the hidden tests;
- `nbgrader autograde` gives the solutions full marks and the stubs zero, and the feedback a student receives shows
  the toydiff.grading messages (the Ho & Salimans weight mix-up, named as such);
- every graded cell carries points, every assignment has hidden tests, a predict-then-run question (a prediction
  answer cell before the code cell that reveals it) and a written explanation graded by hand with a rubric beside it;
- a submission that calls the library function it is asked to write scores nothing for it (a3), and the open-ended
  guidance design (a4) earns partial credit on the Pareto criterion with the reason in the feedback.
The solution notebooks themselves also run under nbval (the README test command)."""
from __future__ import annotations

import functools
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


@pytest.fixture(scope="module", autouse=True)
def alembic_head_asked_once():
    """nbgrader asks `alembic heads` (a subprocess, ~3 s CPU) for its schema version each time it creates a gradebook,
    five times in this module; the answer is fixed by the installed nbgrader, so the first answer is kept."""
    import nbgrader.api
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nbgrader.api, "get_alembic_version", functools.cache(nbgrader.api.get_alembic_version))
        yield


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
        manual = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and _grades(c) and _solution(c)]
        predictions = [i for i in manual if _id(nb.cells[i]).startswith("predict_")]
        assert predictions and all(nb.cells[i + 1].cell_type == "code" for i in predictions), \
            f"{aid}: a prediction answer cell must come right before the code cell that reveals the answer"
        written = [i for i in manual if not _id(nb.cells[i]).startswith("predict_")]
        assert written, f"{aid}: no written explanation graded by hand"
        for i in written:
            rubric = nb.cells[i - 1]
            assert rubric.source.startswith("**Rubric") and rubric.metadata["nbgrader"]["locked"], \
                f"{aid}: {_id(nb.cells[i])} needs a locked rubric cell right above it"
            assert f"({nb.cells[i].metadata['nbgrader']['points']} point" in rubric.source, f"{aid}: rubric points"


def _id(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def _grades(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade"))


def _solution(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def test_visible_tests_do_not_name_the_library_function_that_solves_the_exercise():
    solving = {"a1": ("training.train", "edm_loss"), "a2": ("guidance.CFG(", "samplers.sample(", "METHODS"),
               "a3": ("AutoGuidance", "metrics.outlier_fraction"), "a4": ("density.sample_tv", ".weight(")}
    for aid in IDS:
        (path,) = (COURSE / "student" / aid).glob("*.ipynb")
        for cell in nbformat.read(path, as_version=4).cells:
            if _grades(cell) and cell.cell_type == "code":
                named = [name for name in solving[aid] if name in cell.source and "check_samples" not in cell.source
                         and "check_method_table" not in cell.source]
                assert not named, f"{aid} {_id(cell)}: the visible test names {named}"


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


# typical mistakes, (solution line, mistake) and what the feedback must say about it
MISTAKES = {
    # the comparison the wrong way round: labels dropped with probability 1 - p_uncond
    "a1": ("return labels.masked_fill(u < p_uncond, -1)", "return labels.masked_fill(u > p_uncond, -1)",
           "did you use > instead of < ?"),
    # Ho & Salimans' (1 + w) D_1 - w D_0 where toydiff's w is theirs plus 1
    "a2": ("return d_uncond + w * (d_cond - d_uncond)", "return (1 + w) * d_cond - w * d_uncond",
           "that is Ho & Salimans' convention"),
    # a "solution" that only calls the library
    "a3": ("    d_guide = guide(x, sigma, cond)\n    return d_guide + w * (main(x, sigma, cond) - d_guide)",
           "    return guidance.guided(main, guidance.AutoGuidance(guide, w))(x, sigma, cond)",
           "autoguide called toydiff's AutoGuidance.branches"),
    # the guidance design keeps only the part of CFG's update along D_1: on CFG's front, not beyond (2 of 4 points)
    "a4": ("return d1, delta - parallel", "return d1, parallel", "my_guidance: 2 / 4 points: on CFG's front"),
}


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
    if aid in MISTAKES:
        right, wrong, _ = MISTAKES[aid]
        mistake = nbformat.reads(submissions["solution"], as_version=4)
        (cell,) = [c for c in mistake.cells if right in c.source]
        cell.source = cell.source.replace(right, wrong)
        submissions["mistake"] = nbformat.writes(mistake)
    for sid, text in submissions.items():
        (course / "submitted" / sid / aid).mkdir(parents=True)
        (course / "submitted" / sid / aid / src.name).write_text(text)
        _ok(api.autograde(aid, sid, force=True, create=True), f"autograde {sid}")
        if sid != "solution":
            _ok(api.generate_feedback(aid, sid, force=True), f"generate_feedback {sid}")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores, manual = {}, {}
        for sid in submissions:
            grades = [g for nb in gb.find_submission(aid, sid).notebooks for g in nb.grades]
            auto = [g for g in grades if g.cell.name not in _manual_ids(src)]
            scores[sid] = (sum(g.auto_score or 0 for g in auto), sum(g.max_score for g in auto))
            manual[sid] = [g for g in grades if g.cell.name in _manual_ids(src)]
    total = scores["solution"][1]
    assert total > 0 and scores["solution"][0] == total, scores
    assert scores["stub"][0] == 0, scores
    assert manual["solution"] and all(g.needs_manual_grade for g in manual["solution"]), "answers go to formgrader"
    assert all(not g.manual_score and not g.auto_score for g in manual["stub"]), "unanswered questions score 0"
    graded = nbformat.read(course / "autograded" / "stub" / aid / src.name, as_version=4)
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in graded.cells), "autograde must restore the hidden tests"
    feedback = html.unescape((course / "feedback" / "stub" / aid / src.with_suffix(".html").name).read_text())
    assert "NotImplementedError" in feedback
    if aid in MISTAKES:
        assert 0 < scores["mistake"][0] < total, scores
        feedback = html.unescape((course / "feedback" / "mistake" / aid / src.with_suffix(".html").name).read_text())
        assert MISTAKES[aid][2] in feedback, f"the feedback must explain the mistake: {MISTAKES[aid][2]!r}"


def _manual_ids(path: Path) -> set[str]:
    """The grade ids of the cells graded by hand (markdown answer cells)."""
    return {_id(c) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown" and _grades(c)}
