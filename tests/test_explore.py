"""toydiff.explore without a browser: the controls map to the right guidance, the page's update samples what the
library samples and measures it, the page notebook ships in the package, the CLI rejects a bad port (exit 2), and
stopping `toydiff explore` stops Voila and its kernels. The page itself in Chromium: tests/test_browser.py."""
from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from toydiff import cli, datasets, explore, guidance, samplers


def test_make_guidance_maps_method_weight_and_interval():
    g = explore.make_guidance("cfg", 4.0, (0.0, explore.SIGMA_MAX), None)
    assert isinstance(g, guidance.CFG) and g.w == 4.0 and g.interval is None          # full range = no interval
    assert explore.make_guidance("cfg", 4.0, (0.3, 1.0), None).interval == (0.3, 1.0)
    assert explore.make_guidance("cfg_interval", 4.0, (0.0, 80.0), None).interval == guidance.CFG_INTERVAL
    assert isinstance(explore.make_guidance("autoguidance", 2.0, (0.5, 0.5), datasets.three_gaussians()),
                      guidance.NoGuidance)                                             # an empty interval
    assert isinstance(explore.make_guidance("none", 5.0, (0, 80), None), guidance.NoGuidance)   # none ignores w
    assert isinstance(explore.make_guidance("score_scaling", 2.0, (0, 80), None), guidance.ScoreScaling)
    with pytest.raises(ValueError, match="method"):
        explore.make_guidance("nope", 2.0, (0, 1), None)
    with pytest.raises(ValueError, match="interval"):
        explore.make_guidance("cfg", 2.0, (0, float("nan")), None)


def test_methods_follow_the_guidance_registry():
    """A recipe registered in toydiff.guidance appears on the page with no other edit; one needing a classifier
    (which the explorer cannot supply) does not."""
    assert "autoguidance" in explore.methods() and "classifier" not in explore.methods()
    class HalfCFG(guidance.CFG):
        def __init__(self, w, **m):
            super().__init__(1 + (w - 1) / 2, **m)

    guidance.register("half_cfg_test", HalfCFG)
    try:
        assert "half_cfg_test" in explore.methods()
        g = explore.make_guidance("half_cfg_test", 5.0, (0.0, explore.SIGMA_MAX), None)
        assert isinstance(g, guidance.CFG) and g.w == 3.0
    finally:
        del guidance.RECIPES["half_cfg_test"]


def test_every_control_reaches_the_samples_and_metrics():
    ex = explore.Explorer(n=400, steps=12)
    data = datasets.three_gaussians()
    x = ex.sample("three_gaussians", "cfg", 3.0, (0.0, explore.SIGMA_MAX), "euler")
    ref = samplers.sample(guidance.guided(data, guidance.CFG(3.0)), (400, 2), 0, method="euler", steps=12,
                          sigma_max=explore.SIGMA_MAX, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, ref)
    base = dict(problem="three_gaussians", method="cfg", w=3.0, interval=(0.0, explore.SIGMA_MAX), sampler="heun")
    fig, m = ex.update(**base)
    assert set(m) == set(explore.METRICS) and all(0 <= v <= 1 for v in m.values())
    assert fig.axes and "Ho & Salimans 2" in fig.axes[0].get_title()
    seen = {json.dumps(m)}
    for change in (dict(w=1.0), dict(method="autoguidance"), dict(interval=(0.3, 2.0)), dict(sampler="ddpm")):
        seen.add(json.dumps(ex.update(**{**base, **change})[1]))
    assert len(seen) == 5, "every control must change the metrics"
    with pytest.raises(ValueError, match="sampler"):
        ex.sample("three_gaussians", "cfg", 3.0, (0, 10), "rk4")
    with pytest.raises(ValueError, match="problem"):
        explore.problem("moons")


def test_each_method_gets_its_own_parameter_and_description_from_the_registry():
    cfgpp, cfg, none = (explore.weight_control(m) for m in ("cfgpp", "cfg", "none"))
    assert (cfgpp["min"], cfgpp["max"], cfgpp["value"]) == (0.0, 1.0, guidance.default_weight("cfgpp"))
    assert cfgpp["description"].startswith("λ") and cfg["description"].startswith("w") and cfg["max"] > 1
    assert none["disabled"] and not cfg["disabled"]
    for method in explore.methods():
        first, formula = guidance.describe(method).split("\n")
        assert first and formula.startswith("$") and formula in explore.description(method)
    assert "Salimans 2022" in explore.description("cfg") and "Chung et al. 2024" in explore.description("cfgpp")
    with pytest.raises(ValueError, match="method"):
        explore.weight_control("classifier")                  # needs a classifier: not on the page
    with pytest.raises(ValueError, match="weight_range"):
        guidance.register("bad_range_test", guidance.CFG, default_w=4.0, weight_range=("$w$", 0.0, 1.0))
    ipywidgets = pytest.importorskip("ipywidgets")
    slider = ipywidgets.FloatSlider(value=6.25, min=0.0, max=8.0)
    explore.set_weight_control(slider, "cfgpp")               # not clamped to the new max: the recipe's default
    assert (slider.description[0], slider.max, slider.value) == ("λ", 1.0, 0.5)
    explore.set_weight_control(slider, "cfg")
    assert (slider.max, slider.value, slider.disabled) == (8.0, 4.0, False)
    menu = ipywidgets.Dropdown(options=explore.SAMPLERS, value="heun")
    explore.restrict_samplers(menu, "cfgpp")                  # CFG++ cannot run Heun: the menu moves to Euler
    assert menu.options == tuple(samplers.RENOISE_METHODS) and menu.value == samplers.RENOISE_METHODS[0]
    explore.restrict_samplers(menu, "cfg")
    assert menu.options == explore.SAMPLERS and menu.value == samplers.RENOISE_METHODS[0]
    ex = explore.Explorer(n=100, steps=6)
    for method in explore.methods():                          # every method runs with every sampler it offers
        for sampler in (explore.samplers_for(method)[0], explore.samplers_for(method)[-1]):
            ex.update("three_gaussians", method, explore.weight_control(method)["value"], sampler=sampler)


def test_the_title_states_the_parameter_interval_and_class_in_use():
    ex = explore.Explorer(n=200, steps=8)
    title = lambda **kw: ex.update(**{"problem": "three_gaussians", "sampler": "euler", **kw})[0].axes[0].get_title()
    t = title(method="cfg_interval", w=4.0)
    assert "$\\sigma \\in (0, 0.3]$" in t and "Ho & Salimans 3" in t       # the recipe's own interval
    assert "$\\sigma \\in (0.5, 2]$" in title(method="cfg", w=4.0, interval=(0.5, 2.0))
    t = title(method="cfgpp", w=0.5)
    assert "$\\lambda$ = 0.5" in t and "Ho & Salimans" not in t             # lambda is not CFG's weight
    assert "no guidance" in title(method="none", w=1.0)
    assert "(class 0)" in t and explore.problem("tree").class_name == "class A"


def test_latest_only_drops_superseded_states():
    """While one state computes, four more arrive: only the last of them is computed and shown."""
    import threading

    release, started, shown, computed = threading.Event(), threading.Event(), [], []

    def compute(state):
        computed.append(state)
        if state == 1:
            started.set()
            release.wait(30)
        return state * 10

    done = threading.Event()
    redraw = explore.LatestOnly(compute, lambda r: (shown.append(r), r == 50 and done.set()))
    redraw.submit(1)
    assert started.wait(30)
    for state in (2, 3, 4, 5):
        redraw.submit(state)
    release.set()
    assert done.wait(30)
    assert computed == [1, 5] and shown == [50]                   # 1 was superseded while computing: dropped
    errors, failed = [], threading.Event()
    bad = explore.LatestOnly(lambda s: (_ for _ in ()).throw(ValueError("no")), shown.append,
                             lambda e: (errors.append(str(e)), failed.set()))
    bad.submit(0)
    assert failed.wait(30) and errors == ["no"]


def test_tree_problem_uses_the_shipped_networks():
    p = explore.problem("tree")
    assert p.main is not p.guide and p.cls == 0 and p.data.num_classes == 2


def test_tree_flow_problem_uses_the_flow_models():
    from toydiff import zoo
    p, flow, edm = explore.problem("tree_flow"), zoo.flow_models(), explore.problem("tree")
    x, c = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(8, dtype=torch.long)
    assert torch.equal(p.main(x, 0.3, c), flow.main(x, 0.3, c)) and torch.equal(p.guide(x, 0.3, c), flow.guide(x, 0.3, c))
    assert torch.equal(p.main(x, 0.3, -1), flow.uncond(x, 0.3, None))         # CFG's D_0: the flow uncond model
    assert not torch.allclose(p.main(x, 0.3, c), edm.main(x, 0.3, c))


def test_page_ships_in_the_package_and_is_thin():
    nb = json.loads(explore.NOTEBOOK.read_text())
    code = "".join(src for c in nb["cells"] if c["cell_type"] == "code" for src in c["source"])
    assert "explore.Explorer()" in code and "ex.update(" in code
    assert len(code.splitlines()) < 50
    cmd = explore.voila_command(8888)
    assert "--Voila.ip=127.0.0.1" in cmd and "--port=8888" in cmd and "--no-browser" in cmd


def test_cli_explore_bad_port_exits_2(capsys):
    assert cli.main(["explore", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "port" in err[0]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):                                   # it ended while being read
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through Linux's /proc")
def test_terminating_explore_stops_voila_its_kernels_and_frees_the_port(free_port, server):
    """`kill` of `toydiff explore` (SIGTERM) must reach Voila: it used to outlive its parent with its kernel."""
    port = free_port
    proc, log = server([sys.executable, "-m", "toydiff.app.cli", "explore", "--port", str(port)])
    end = time.monotonic() + 120
    while True:                                         # the page renders in a kernel: Voila then has a child
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60).read()
            break
        except OSError:
            assert time.monotonic() < end and proc.poll() is None, f"explore did not serve its page: {log.read_text()}"
            time.sleep(0.3)
    assert f"127.0.0.1:{port}" in log.read_text().splitlines()[0]
    procs = _processes()
    voila = [pid for pid, (ppid, cmd) in procs.items() if ppid == proc.pid and f"--port={port}" in cmd]
    kernels = [pid for pid, (ppid, _) in procs.items() if ppid in voila]
    assert len(voila) == 1 and kernels, "expected Voila under explore and a kernel under Voila"
    proc.terminate()
    assert proc.wait(30) is not None
    end = time.monotonic() + 20
    while (alive := {pid: cmd for pid, (_, cmd) in _processes().items() if pid in voila + kernels}) \
            and time.monotonic() < end:
        time.sleep(0.2)
    assert not alive, f"still running after explore ended: {alive}"
    with socket.socket() as s:                          # the port is free again for a server (which, like Voila,
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)       # reuses it past TIME_WAIT; a listener still
        s.bind(("127.0.0.1", port))                     # holding it makes bind fail)


def test_a_redraw_equals_a_fresh_explorers_first_draw():
    """What the explorer keeps per problem (the reference sample, the figure with its density, laid out once) changes
    nothing: after other settings, a redraw gives the metrics `metrics.evaluate` computes without a reference and
    the pixels of a fresh explorer's first draw."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from toydiff import metrics

    def pixels(fig):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    ex = explore.Explorer(n=300, steps=6)
    ex.update("tree", "autoguidance", 3.0)
    ex.update("three_gaussians", "cfg", 2.0)
    for problem, method, w in (("tree", "cfg", 4.0), ("tree", "none", 1.0), ("three_gaussians", "cfg_interval", 5.0)):
        fig, m = ex.update(problem, method, w)
        p, x = ex.problem(problem), ex.sample(problem, method, w, (0.0, explore.SIGMA_MAX), "heun")
        assert m == {k: v for k, v in metrics.evaluate(x, p.data, p.cls, seed=0).items() if k in m}
        fresh, m_fresh = explore.Explorer(n=300, steps=6).update(problem, method, w)
        assert m_fresh == m and np.array_equal(pixels(fig), pixels(fresh))
