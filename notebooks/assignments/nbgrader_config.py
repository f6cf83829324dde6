"""nbgrader course configuration for the toydiff assignments (run nbgrader from this directory).

    nbgrader generate_assignment a1 --force     # source/a1 (solutions) -> student/a1 (what students get)
    nbgrader autograde a1                       # grades submitted/<student>/a1/*.ipynb into autograded/
    nbgrader generate_feedback a1               # feedback/<student>/a1/*.html: the toydiff.grading messages

Solution cells use ### BEGIN/END SOLUTION, test cells ### BEGIN/END HIDDEN TESTS (removed from the student version,
restored by autograde). gradebook.db, submitted/, autograded/ and feedback/ are per course: not in git.
"""
from pathlib import Path

c = get_config()  # noqa: F821 (provided by nbgrader)
c.CourseDirectory.root = str(Path(__file__).resolve().parent)
c.CourseDirectory.release_directory = "student"
c.CourseDirectory.course_id = "toydiff"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.enforce_metadata = True
c.Execute.timeout = 600
