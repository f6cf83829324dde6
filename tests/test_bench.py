"""toydiff.bench at tiny size: every method runs, the outputs have their structure, the same seed gives the same
table, bad names are refused; and the shipped bench checkpoints load."""
import json

import matplotlib.image as mpimg
import pytest
import torch

from toydiff import bench, bench_models, bench_report, guidance, nets, zoo
from toydiff.bench import sampler_table

TINY = bench.BenchConfig(n=60, grid=(1.0, 3.0), bins=6, seed=5)


@pytest.fixture(scope="module")
def tiny():
    return bench.run(TINY, datasets=["three_gaussians"])


def test_every_method_runs_and_is_scored(tiny):
    data = tiny["datasets"]["three_gaussians"]
    assert list(data["methods"]) == bench.method_names() == ["exact", *guidance.names()]
    for name, entry in data["methods"].items():
        assert [r["w"] for r in entry["sweep"]] == list(bench.grid(name, TINY))
        assert entry["best"] in entry["sweep"]
        assert entry["best"]["tv"] == min(r["tv"] for r in entry["sweep"])
        for r in entry["sweep"]:
            assert set(r) == {"w", *bench.METRICS}
            assert 0 <= r["outlier_fraction"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["tv"] <= 1 \
                and r["energy_distance"] >= 0
    # all weight-1 rows of the plain network share the start noise, so they are the same samples
    plain = data["methods"]["none"]["sweep"][0]
    for name in ("cfg", "cfg_separate", "cfg_interval", "autoguidance", "score_scaling", "linear_cfg"):
        assert data["methods"][name]["sweep"][0] == plain
    # guidance moves the samples: the w = 3 rows differ from no guidance
    assert data["methods"]["cfg"]["sweep"][1]["tv"] != plain["tv"]


def test_sampler_table_starts_from_the_sweeps_noise(tiny):
    """The samplers at equal cost (toydiff.bench.sampler_table) start from the sweep's noise: Heun at 63 evaluations
    (the bench's 32 steps) on the exact denoiser IS the sweep's exact row; every denoiser, budget and row is there."""
    data = tiny["datasets"]["three_gaussians"]
    table = data["samplers"]["results"]
    assert table["exact"]["63"]["heun"] == {k: v for k, v in data["methods"]["exact"]["best"].items() if k != "w"}
    assert list(table) == ["exact", "cfg"] and all(list(d) == ["15", "63"] for d in table.values())
    for per_budget in table.values():
        for rows in per_budget.values():
            assert list(rows) == list(sampler_table.SAMPLER_ROWS)
    assert sampler_table.steps_for("heun", 63) == 32 and sampler_table.steps_for("dpmpp_2m", 63) == 63


def test_same_seed_same_table(tiny):
    again = bench.run(TINY, methods=["none", "cfg", "autoguidance", "cfgpp"], datasets=["three_gaussians"])
    for name, entry in again["datasets"]["three_gaussians"]["methods"].items():
        assert entry["sweep"] == tiny["datasets"]["three_gaussians"]["methods"][name]["sweep"]
    other = bench.run(bench.BenchConfig(n=60, grid=(1.0, 3.0), bins=6, seed=6), methods=["cfg"],
                      datasets=["three_gaussians"])
    assert other["datasets"]["three_gaussians"]["methods"]["cfg"]["sweep"] != \
        tiny["datasets"]["three_gaussians"]["methods"]["cfg"]["sweep"]


def test_outputs(tiny, tmp_path):
    paths = bench_report.write_outputs(tiny, tmp_path)
    assert [p.name for p in paths] == ["leaderboard.md", "bench.json", "pareto_three_gaussians.png"]
    assert json.loads(paths[1].read_text()) == json.loads(json.dumps(tiny))
    md = paths[0].read_text()
    assert "## three_gaussians" in md and "smallest **TV**" in md and "noise floor" in md
    assert "Samplers at equal cost" in md and "| dpmpp_2m | " in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(bench.method_names())
    tvs = [float(r.split("|")[4]) for r in rows]
    assert tvs == sorted(tvs)                                            # best first
    image = mpimg.imread(paths[2])
    assert image.shape[0] > 500 and image.shape[1] > 1000                # 150 dpi of an 8.4 x 4.8 in figure


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        bench.run(TINY, methods=["cfg", "nope"])
    with pytest.raises(ValueError, match="unknown dataset"):
        bench.run(TINY, datasets=["mnist"])


def test_shipped_checkpoints_load_and_fail_clearly(tmp_path):
    from toydiff.training import denoiser_error
    models = bench_models.load_bench_models("three_gaussians")
    data = models.data
    for sigma in (0.1, 0.3, 1.0):        # the trained main model's error: measured 24x, 1200x, 2000x lower
        untrained = nets.MLPDenoiser(num_classes=3, width=64, depth=4)
        assert denoiser_error(models.main, data, sigma, cond=0) < 0.25 * denoiser_error(untrained, data, sigma, cond=0)
    x, _ = data.sample(1024, sigma=0.3, generator=torch.Generator().manual_seed(0))
    s = torch.full((1024,), 0.3)
    agree = models.classifier.log_prob(x.float(), s).argmax(1) == data.class_posterior(x, s.double()).argmax(1)
    assert agree.float().mean() > 0.95                          # measured 0.98-0.99 on three sample seeds
    with pytest.raises(FileNotFoundError, match="make_checkpoints"):
        bench_models.load_bench_models("three_gaussians", tmp_path)
    (tmp_path / "three_gaussians").mkdir()
    for role in bench_models.ROLES:
        (tmp_path / "three_gaussians" / f"{role}.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        bench_models.load_bench_models("three_gaussians", tmp_path)


def test_tree_flow_models_are_velocity_models_saved_as_such(tmp_path):
    """The tree_flow row's denoisers wrap VelocityMLPs, and writing them back gives the shipped bytes (the velocity
    model's weights, not the wrapper's)."""
    models = bench_models.load_bench_models("tree_flow")
    assert all(isinstance(getattr(models, role).velocity, nets.VelocityMLP) for role in ("main", "uncond", "guide"))
    for path in bench_models.save_bench_models("tree_flow", models, tmp_path):
        assert path.read_bytes() == (bench_models.CHECKPOINT_DIR / path.relative_to(tmp_path)).read_bytes()


def test_bench_models_are_the_zoo_recipe():
    """One recipe table: the bench's tree models are the zoo's specs on tree(), so its main model and separate D_0
    are the shipped tree_dropout and tree_uncond, weight for weight (seed 0 both); its guide knows every class."""
    bench_tree, shipped = bench_models.load_bench_models("tree"), zoo.load_models()
    for ours, theirs in ((bench_tree.main, shipped.dropout), (bench_tree.uncond, shipped.uncond)):
        assert ours.config == theirs.config
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert bench_tree.guide.config == {**shipped.guide.config, "num_classes": 2}


def test_a_registered_recipe_appears_in_the_bench(monkeypatch):
    """A recipe registered once in toydiff.guidance is a bench method with no other edit; one that wants a number
    (float(w) refuses a schedule) is sampled one call per weight and gives CFG's numbers."""
    class NumberCFG(guidance.CFG):
        def __init__(self, w, **m):
            super().__init__(float(w), **m)

    monkeypatch.setitem(guidance.RECIPES, "cfg_number", guidance.Recipe("cfg_number", NumberCFG))
    assert "cfg_number" in bench.method_names()
    got = bench.run(TINY, methods=["cfg", "cfg_number"], datasets=["three_gaussians"])["datasets"]["three_gaussians"]
    for a, b in zip(got["methods"]["cfg"]["sweep"], got["methods"]["cfg_number"]["sweep"]):
        assert a == pytest.approx(b, abs=1e-6)


def test_cli_bench(tmp_path, capsys):
    from toydiff import cli
    assert cli.main(["bench", "--fast", "--methods", "none", "cfg", "--datasets", "three_gaussians", "--out",
                     str(tmp_path), "--no-progress"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"leaderboard.md", "bench.json", "pareto_three_gaussians.png"}
    for argv, word in ((["bench", "--methods", "cfg", "nope"], "unknown method(s) ['nope']"),
                       (["bench", "--datasets", "mnist"], "unknown dataset(s) ['mnist']")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and word in capsys.readouterr().err


def test_readme_example_registers_and_benchmarks_a_new_method(monkeypatch, capsys):
    """The README's user-defined guidance, run as written: registered once, it is ranked in the leaderboard."""
    from pathlib import Path
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Benchmark a guidance method")[1]
    code = section.split("```python\n")[1].split("```")[0]
    monkeypatch.setattr(guidance, "RECIPES", dict(guidance.RECIPES))           # the registration is undone after
    monkeypatch.setattr("toydiff.guidance.registry.RECIPES", guidance.RECIPES)
    exec(compile(code, "README.md", "exec"), {})
    table = capsys.readouterr().out
    assert "| fading_cfg |" in table and "| cfg |" in table and "## three_gaussians" in table


def test_datasets_are_looked_up_in_one_place():
    """The bench rows and the zoo's model specs name toydiff.datasets entries; datasets.get builds them all."""
    from toydiff import bench_models, datasets, zoo
    assert set(bench_models.BENCH_DATASETS.values()) <= set(datasets.DATASETS)
    assert {spec.dataset for spec in zoo.MODEL_SPECS.values()} <= set(datasets.DATASETS)
