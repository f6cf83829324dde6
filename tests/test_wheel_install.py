"""The notebooks need only the installed package, as on Colab or a student's laptop: build the wheel
(`pip wheel --no-deps`), install it into a fresh virtual environment (system site-packages for the heavy
dependencies; toydiff and imagenet_ext must then come from the wheel, not from this repository), and run a
walkthrough notebook, which loads shipped checkpoints, from a temporary directory. Its first cell (the install cell)
must do nothing there: toydiff imports."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_guided_densities.ipynb"


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_walkthrough_runs_from_the_wheel_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(MPLBACKEND="agg", OMP_NUM_THREADS="1")
    source = tmp_path / "source"                       # a clean copy: no build/ or egg-info left in the repository
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", "notebooks", "benchmarks", "tests"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
          str(source)], tmp_path, env)
    wheel = next(tmp_path.glob("toydiff-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = str(env_dir / "bin" / "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
          str(wheel)], tmp_path, env)
    work = tmp_path / "class"
    work.mkdir()
    nb = json.loads(NOTEBOOK.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "import sys, toydiff, imagenet_ext\n"
                                  "print('WHERE', sys.prefix, toydiff.__file__, imagenet_ext.__file__)"})
    (work / NOTEBOOK.name).write_text(json.dumps(nb))
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"     # `python` is the venv's, for the kernel
    _run([python, "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",        # not `jupyter nbconvert`:
          "--ExecutePreprocessor.timeout=1200", NOTEBOOK.name], work, env)             # its script has its own python
    out = json.loads((work / NOTEBOOK.name).read_text())
    text = [o.get("text", "") for o in out["cells"][-1]["outputs"]]
    where = "".join(t if isinstance(t, str) else "".join(t) for t in text).split()
    prefix, package, ext = where[1:4]
    assert Path(prefix) == env_dir and package.startswith(str(env_dir)) and ext.startswith(str(env_dir)), where
    assert not any(str(ROOT) in p for p in (package, ext))
    assert out["cells"][1]["outputs"] == []           # the install cell did nothing: toydiff was importable
