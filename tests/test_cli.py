"""`toydiff demo --fast` end to end: the PNGs, metrics.json's shape, and the story's orderings."""
import json
import re

import pytest

from toydiff import cli, zoo


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--fast", "--no-progress", "--out", str(out)]) == 0
    return out


def test_demo_writes_pngs_and_metrics(demo_out):
    for name in ("tree", "cfg", "sweep", "degradation"):
        assert (demo_out / f"{name}.png").stat().st_size > 5000
    report = json.loads((demo_out / "metrics.json").read_text())
    assert set(report["methods"]) == {"none", "cfg", "cfg_dropout", "score_scaling", "autoguidance"}
    for m in report["methods"].values():
        assert {"outlier_fraction", "precision", "recall", "class_accuracy"} <= set(m)
        assert all(0 <= m[k] <= 1 for k in ("outlier_fraction", "precision", "recall", "class_accuracy"))
    assert set(report["sweep"]) == {"cfg", "autoguidance", "cfg_interval"}


def test_demo_tells_the_story(demo_out):
    m = json.loads((demo_out / "metrics.json").read_text())["methods"]
    true = json.loads((demo_out / "metrics.json").read_text())["true_samples"]
    assert true["outlier_fraction"] < 0.03
    assert m["none"]["outlier_fraction"] > 2 * true["outlier_fraction"]            # unguided leaves outliers
    assert m["autoguidance"]["outlier_fraction"] < m["none"]["outlier_fraction"]    # autoguidance cuts them
    assert m["cfg"]["recall"] < m["autoguidance"]["recall"]                         # CFG drops branches
    # CFG limited to small sigma (guidance interval) leaves fewer outliers than no guidance
    sweep = json.loads((demo_out / "metrics.json").read_text())["sweep"]
    assert sweep["cfg_interval"]["3"]["outlier_fraction"] < m["none"]["outlier_fraction"]


def test_shipped_checkpoints_load_and_are_small():
    models = zoo.load_models()
    assert models.main.config["width"] == 64 and models.guide.config["width"] == 32
    assert models.main.num_classes == 1 and models.guide.num_classes == 1            # class A alone
    assert models.uncond.num_classes == 0 and models.uncond.config["width"] == 32
    assert models.dropout.num_classes == 2 and models.dropout.config["width"] == 64
    for path in zoo.CHECKPOINT_DIR.glob("*.pt"):
        assert path.stat().st_size < 300_000


def test_guide_checkpoint_regenerates_bit_identically(tmp_path):
    # the guide is cheap to train (512 steps); scripts/make_checkpoints.py --check covers both
    path = zoo.save_model("tree_guide", zoo.train_model("tree_guide", 0, progress=False), tmp_path)
    assert path.read_bytes() == (zoo.CHECKPOINT_DIR / "tree_guide.pt").read_bytes()


def test_training_in_two_processes_gives_the_same_bits(monkeypatch):
    import dataclasses

    import torch
    for name in zoo.TREE_MODELS:            # the edited specs travel to the worker processes
        monkeypatch.setitem(zoo.MODEL_SPECS, name, dataclasses.replace(zoo.MODEL_SPECS[name], steps=8, batch_size=64))
    one, two = zoo.train_models(1, progress=False, workers=1), zoo.train_models(1, progress=False, workers=2)
    for name in ("main", "guide", "uncond", "dropout"):
        a, b = getattr(one, name).state_dict(), getattr(two, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not torch.equal(one.main.out.weight, zoo.train_model("tree_main", 2, progress=False).out.weight)
    with pytest.raises(ValueError, match="workers"):
        zoo.train_models(workers=0)


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    """A user error: one line on stderr naming the flag, exit status 2, no traceback, nothing written."""
    (tmp_path / "file").write_text("x")
    for argv, flag in ((["figure", "nonexistent"], "name"), (["sample", "--guidance", "magic"], "--guidance"),
                       (["sample", "--n", "0"], "--n"), (["sample", "--w", "-2"], "--w"),
                       (["sample", "--out", str(tmp_path / "x.jpg")], "--out"),
                       (["train", "--out", str(tmp_path / "file")], "--out"),
                       (["sample", "--guidance", "none", "--w", "3", "--out", str(tmp_path / "s.pt")], r"\bw\b")):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--no-progress"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and re.search(flag, err), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_sample_and_figure_commands(tmp_path):
    assert cli.main(["sample", "--guidance", "autoguidance", "--sampler", "euler", "--n", "200",
                     "--out", str(tmp_path / "x.pt"), "--no-progress"]) == 0
    assert cli.main(["figure", "cfg", "--fast", "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "x.pt").is_file() and (tmp_path / "cfg.png").is_file()


def test_cli_lists_the_figures_and_the_guidance_registry(tmp_path, monkeypatch, capsys):
    """The CLI's figure names are figures.FIGURES'; a recipe registered in toydiff.guidance is a --guidance
    choice with no other edit (here: CFG under a new name gives CFG's samples)."""
    import torch

    from toydiff import figures, guidance
    assert cli.FIGURES == tuple(figures.FIGURES)
    monkeypatch.setitem(guidance.RECIPES, "cfg_two", guidance.Recipe("cfg_two", guidance.CFG, default_w=2.0))
    for name in ("cfg_two", "cfg"):
        assert cli.main(["sample", "--guidance", name, "--w", "2", "--n", "100", "--out",
                         str(tmp_path / f"{name}.pt"), "--no-progress"]) == 0
    torch.testing.assert_close(torch.load(tmp_path / "cfg_two.pt"), torch.load(tmp_path / "cfg.pt"), rtol=0, atol=0)
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--guidance", "classifier"])          # needs a classifier: not offered by this CLI
    assert e.value.code == 2 and "invalid choice 'classifier'" in capsys.readouterr().err


def test_train_out_dir_is_loadable_by_sample_figure_and_demo(tmp_path, monkeypatch, capsys):
    """`toydiff train --out DIR` then `--models DIR` everywhere: the commands use the models written there (here
    trained for a few steps, so their samples differ from the shipped models')."""
    import dataclasses

    import torch
    for name, spec in zoo.MODEL_SPECS.items():
        monkeypatch.setitem(zoo.MODEL_SPECS, name, dataclasses.replace(spec, steps=16, batch_size=64))
    d = tmp_path / "models"
    assert cli.main(["train", "--out", str(d), "--no-progress"]) == 0
    args = ["--guidance", "cfg", "--w", "2", "--n", "64", "--no-progress"]
    assert cli.main(["sample", *args, "--models", str(d), "--out", str(tmp_path / "mine.pt")]) == 0
    assert cli.main(["sample", *args, "--out", str(tmp_path / "shipped.pt")]) == 0
    mine = torch.load(tmp_path / "mine.pt")
    expected = zoo.draw(zoo.guided_denoiser(zoo.load_models(d), "cfg", 2.0), 64, 0, 0)
    torch.testing.assert_close(mine, expected, rtol=0, atol=0)
    assert not torch.allclose(mine, torch.load(tmp_path / "shipped.pt"))
    assert cli.main(["figure", "cfg", "--fast", "--models", str(d), "--out", str(tmp_path), "--no-progress"]) == 0
    assert cli.main(["demo", "--fast", "--models", str(d), "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    assert (tmp_path / "cfg.png").is_file() and (tmp_path / "demo" / "metrics.json").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--models", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "toydiff train --out" in capsys.readouterr().err
    (d / "tree_dropout.pt").unlink()                                 # any one of the four missing is named
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--models", str(d)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "lacks tree_dropout.pt" in err and "toydiff train --out" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--retrain", "--models", str(d)])
    assert e.value.code == 2


def test_every_cli_option_says_its_default():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest in ("help", "name") or action.required:
                continue
            assert action.help and "default" in action.help, (name, action.option_strings)
