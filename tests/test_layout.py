"""The layout's rule of arrows (docs/DESIGN.md, "Layout"): core <- infra only; toy <- core, infra; bench <- toy;
app <- everything in toydiff; imagenet_ext <- toydiff.core and toydiff.infra only; toydiff never imports
imagenet_ext. Checked twice: statically over every import statement (deferred ones inside functions included),
and dynamically by importing each module in a fresh process and listing what got loaded."""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import toydiff

ROOT = Path(__file__).resolve().parents[1]
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "toydiff.infra": {"toydiff.infra"},
    "toydiff.core": {"toydiff.core", "toydiff.infra"},
    "toydiff.toy": {"toydiff.toy", "toydiff.core", "toydiff.infra"},
    "toydiff.bench": {"toydiff.bench", "toydiff.toy", "toydiff.core", "toydiff.infra"},
    "toydiff.app": {"toydiff.app", "toydiff.bench", "toydiff.toy", "toydiff.core", "toydiff.infra"},
    "imagenet_ext": {"imagenet_ext", "toydiff.core", "toydiff.infra"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> list[str]:
    files = sorted((ROOT / "toydiff").rglob("*.py")) + sorted((ROOT / "imagenet_ext").glob("*.py"))
    return [_module_name(f) for f in files if _module_name(f) != "toydiff"]


def _layer(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), None)


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The absolute module names one import statement loads (for `from X import a`, X.a when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    base = ".".join(p for p in (package if node.level else "", node.module or "") if p)
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [base] + [n for n in names if importlib.util.find_spec(base) and _is_module(n)]


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _real(name: str) -> str:
    """A flat alias (toydiff.zoo) stands for its module in the layout (toydiff.toy.zoo)."""
    head, _, rest = name.removeprefix("toydiff.").partition(".")
    if name.startswith("toydiff.") and head in toydiff._FLAT:
        return ".".join(p for p in ("toydiff." + toydiff._FLAT[head], rest) if p)
    return name


def test_every_import_statement_points_down_the_layers():
    wrong = []
    for module in _modules():
        path = ROOT / (module.replace(".", "/") + ".py")
        is_package = not path.exists()
        path = path if path.exists() else ROOT / module.replace(".", "/") / "__init__.py"
        own = _layer(module)
        assert own is not None, f"{module} is outside the layers: put it in one (docs/DESIGN.md)"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in map(_real, _resolve(module, node, is_package)):
                    layer = _layer(target)
                    if target.startswith(("toydiff.", "imagenet_ext")) and layer not in ALLOWED[own]:
                        wrong.append(f"{module} imports {target} (line {node.lineno})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


# One process imports the third-party libraries once, then forks a child per module: each child starts with no
# toydiff module loaded (a fresh interpreter as far as toydiff is concerned) and reports what importing its one
# module loaded.
_PROBE = """
import json, os, sys
import matplotlib.pyplot, numpy, scipy.spatial, scipy.special, torch, tqdm.auto
results = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        __import__(name)
        loaded = sorted(m for m in sys.modules if m.startswith(("toydiff", "imagenet_ext")))
        os.write(w, json.dumps(loaded).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    results[name] = json.loads(data) if data else None
print(json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the probe forks a child per module (POSIX)")
def test_importing_each_module_loads_only_its_own_layers():
    modules = [m for m in _modules() if not m.startswith("toydiff.app.explore")] + ["toydiff.app.explore"]
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=300)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    wrong = {}
    for module, mods in loaded.items():
        assert mods is not None, f"importing {module} failed in a fresh process"
        bad = [m for m in mods if m != "toydiff" and _layer(m) not in ALLOWED[_layer(module)]]
        if bad:
            wrong[module] = bad
    assert not wrong, f"modules loaded against the layers: {wrong}"
    # the cases the layout exists for
    assert not any(m.startswith("toydiff.toy") for m in loaded["imagenet_ext.train"]), "imagenet_ext.train loads the toy MLPs"
    assert not any(m.startswith(("toydiff.toy", "toydiff.app")) for m in loaded["toydiff.core.samplers"])


def test_flat_names_are_the_modules_themselves():
    """`from toydiff import zoo` and `import toydiff.zoo` give the very module of the layout (monkeypatching one
    patches the other), with its own name and spec."""
    for flat, real in toydiff._FLAT.items():
        module = importlib.import_module(f"toydiff.{flat}")
        assert module is importlib.import_module(f"toydiff.{real}")
        assert module.__name__ == module.__spec__.name == f"toydiff.{real}"
    from toydiff import guidance, samplers
    assert samplers.sample is importlib.import_module("toydiff.core.samplers").sample
    assert importlib.import_module("toydiff.guidance.registry") is guidance.registry
