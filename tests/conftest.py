import os
import subprocess
import time

import pytest
import torch
from hypothesis import settings
from threadpoolctl import threadpool_limits  # ships with scikit-learn (a test extra)

from toydiff import datasets
from toydiff.infra.workers import stop

# Property tests explore new examples on a developer's machine; under CI they replay a fixed set, so a red run
# is always reproducible and never a coin toss.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test on one intra-op thread (torch and numpy's BLAS): the suite runs on 2 pytest-xdist workers on a
    2-core machine, where extra threads only contend (measured 10-50x slower on small batches); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def three():
    return datasets.three_gaussians()


@pytest.fixture(scope="session")
def tree_mix():
    return datasets.tree()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, chosen as `toydiff explore` chooses its own."""
    from toydiff.explore import _free_port
    return _free_port()


@pytest.fixture
def server(tmp_path):
    """start(args, env=None) -> (process, log file): a server subprocess, stopped at teardown if still running.

    Its output goes to the log file (shown when the server dies early), never to a pipe: a pipe nobody reads fills
    at 64 KB and then blocks the server mid-request. Stopped with SIGTERM first, which `toydiff explore` forwards
    to Voila (a SIGKILL would leave Voila running), then SIGKILL."""
    procs = []

    def start(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, "os.PathLike"]:
        log = tmp_path / f"server-{len(procs)}.log"
        with open(log, "w") as out:
            procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT))
        return procs[-1], log

    yield start
    for proc in procs:
        stop(proc, grace=30)


# Test tiers (README, "Tests"): every test gets exactly one marker. `notebooks`: nbval over the notebooks and the
# nbgrader course; `browser`: a real server (JupyterLab, Voila) and a headless browser; `slow`: a test over ~5 s CPU
# here (trains, runs a CLI end to end, starts processes), listed in SLOW by file or by test; `unit`: all the rest.
NOTEBOOK_FILES = ("tests/test_assignments.py", "tests/test_notebooks_execute.py", "tests/test_wheel_install.py")
SLOW = ("tests/test_imagenet_multinode.py", "tests/test_imagenet_sample_fid.py", "tests/test_imagenet_train.py",
        "tests/test_tree_recipe.py", "tests/test_crash.py", "tests/test_signals.py", "tests/test_widgets.py",
        "tests/test_cli.py",
        "tests/test_digits.py::test_export_is_deterministic",
        "tests/test_guidance_modifiers.py::test_measured_effect_on_thin_tree",
        "tests/test_bad_input.py::test_cases_reach_every_validating_module",
        "tests/test_classifier.py::test_accuracy_matches_the_exact_posterior",
        "tests/test_figure_style.py::test_reproductions_fit_a_lecture_hall")
TIERS = ("unit", "slow", "browser", "notebooks")


def _tier(item: pytest.Item) -> str:
    where = item.nodeid.replace("\\", "/")
    if where.startswith("notebooks/") or where.startswith(NOTEBOOK_FILES):
        return "notebooks"
    if "server" in getattr(item, "fixturenames", ()) or where.startswith("tests/test_browser.py"):
        return "browser"
    if where.startswith(SLOW):
        return "slow"
    return "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(_tier(item))


def pytest_terminal_summary(terminalreporter):
    """Never skip the browser tests silently: say why at the end of every run (the README command has no -rs)."""
    reasons = {str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else str(r.longrepr)
               for r in terminalreporter.stats.get("skipped", []) if "test_browser" in r.nodeid}
    for reason in sorted(reasons):
        terminalreporter.write_line(f"BROWSER TESTS SKIPPED: {reason}", yellow=True, bold=True)


@pytest.fixture
def batch(gen):
    """64 points [64, 2] (float64), sigmas from 0.05 to 3 and labels of three classes, for the guidance tests."""
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64) * 1.5
    sigma = torch.linspace(0.05, 3.0, 64, dtype=torch.float64)
    cond = torch.randint(0, 3, (64,), generator=gen)
    return x, sigma, cond


@pytest.fixture
def wait_for():
    """wait_for(path, proc, timeout=120): block until the subprocess `proc` has created `path`; fail (killing it)
    if it exits first or the timeout passes. For tests that signal a run once it has written something."""
    def wait(path, proc, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                pytest.fail(f"the child exited ({proc.returncode}) before writing {path}: "
                            f"{proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no {path} after {timeout} s")
            time.sleep(0.002)
    return wait
