"""Issue 23 (hardening 3): nothing silent, nothing deep, nothing lost. Each test failed on the code before its fix;
the signal and leftover cases are in test_signals.py, the one-line errors also in test_bad_input.py's table."""
import shutil

import pytest
import torch

from toydiff import cli, datasets, nets, training, zoo


def _model():
    return nets.MLPDenoiser(num_classes=3, width=8, depth=2)


def test_a_checkpoint_says_what_it_is_and_the_zoo_refuses_another_models_file(tmp_path, capsys):
    """Before: tree_guide.pt or thin_main.pt renamed tree_main.pt was sampled as the main model."""
    for name in zoo.TREE_MODELS:
        shutil.copy(zoo.CHECKPOINT_DIR / f"{name}.pt", tmp_path / f"{name}.pt")
    meta = training.load_checkpoint(tmp_path / "tree_main.pt")["meta"]
    assert meta["role"] == "tree_main" and meta["dataset"] == "tree" and meta["recipe"]["steps"] == 4096
    assert meta["architecture"]["class"] == "MLPDenoiser" and meta["architecture"]["width"] == 64
    for impostor in ("tree_guide", "thin_main"):
        shutil.copy(zoo.CHECKPOINT_DIR / f"{impostor}.pt", tmp_path / "tree_main.pt")
        with pytest.raises(SystemExit) as e:
            cli.main(["sample", "--models", str(tmp_path), "--n", "8", "--out", str(tmp_path / "s.pt"),
                      "--no-progress"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert f"{tmp_path / 'tree_main.pt'} holds role '{impostor}', not 'tree_main'" in err
    assert not (tmp_path / "s.pt").exists()


def test_model_files_are_weights_only_and_a_resume_needs_a_training_checkpoint(tmp_path):
    """A model file (what ships) has no optimizer or EMA to fake; a resume from one is refused by name, and the zoo
    refuses an interrupted training checkpoint where a finished model is expected."""
    ck = training.load_checkpoint(zoo.CHECKPOINT_DIR / "tree_guide.pt")
    assert ck["optimizer"] is None and ck["ema"] is None and ck["step"] == 512
    with pytest.raises(ValueError, match="is a model file .*cannot resume"):
        training.load_checkpoint(zoo.CHECKPOINT_DIR / "tree_guide.pt", resumable=True)
    path = tmp_path / "tree_main.pt"
    training.train(_model(), datasets.three_gaussians(), steps=3, batch_size=8, pool_size=64, progress=False,
                   checkpoint=path, meta={"role": "tree_main", "recipe": {"steps": 4096}})
    with pytest.raises(ValueError, match=r"tree_main.pt is the checkpoint of an interrupted training run \(step 3 of "
                                         r"4096\).*--resume"):
        zoo.load_named("tree_main", tmp_path)


def test_checkpoint_errors_are_one_line_of_ours(tmp_path):
    """A directory is named as one; torch's advice to load with weights_only=False (never for a file you do not
    trust) no longer follows our 'corrupt or truncated' line; map_location='cuda' without CUDA says so."""
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(ValueError, match="dir.pt is a directory, not a checkpoint file"):
        training.load_model(tmp_path / "dir.pt")
    torch.save({"format": "toydiff-checkpoint", "net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError) as info:
        training.load_checkpoint(tmp_path / "pickled.pt")
    message = str(info.value)
    assert "pickled.pt is corrupt or truncated" in message and "Unsupported global" in message
    assert "\n" not in message and "weights_only` set to `False`" not in message and "file an issue" not in message
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="map_location 'cuda': CUDA is not available on this machine"):
            training.load_checkpoint(zoo.CHECKPOINT_DIR / "tree_guide.pt", map_location="cuda")


def _full_disk(monkeypatch, module, attr):
    """Make `module.attr(...)` fail as a full disk does (ENOSPC without a path, as matplotlib and write_text do)."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(module, attr, full)


def test_a_full_disk_names_the_file_in_sample_and_bench(tmp_path, monkeypatch, capsys):
    """Before: `toydiff sample --out x.png` and `toydiff bench --out` said "No space left on device" only."""
    from matplotlib.figure import Figure

    from toydiff import bench, bench_report
    _full_disk(monkeypatch, Figure, "savefig")
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--n", "8", "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"no space left on device while writing {tmp_path / 'x.png'}" in err, err
    monkeypatch.undo()
    result = bench.run(bench.BenchConfig(n=60, grid=(1.0, 3.0), bins=6, seed=5, samplers=False), ["cfg"],
                       ["three_gaussians"])
    _full_disk(monkeypatch, type(tmp_path), "write_text")
    with pytest.raises(OSError, match=f"no space left on device while writing {tmp_path / 'leaderboard.md'}"):
        bench_report.write_outputs(result, tmp_path)


def test_outputs_keep_the_inputs_dtype():
    """Before: a float64 guide made a float32 model's guided output float64; float16/bfloat16 noise through an
    MLP came back float32."""
    from toydiff import guidance
    model, three = _model(), datasets.three_gaussians()
    x, c = torch.randn(5, 2), torch.tensor([0, 1, 2, -1, 0])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert model(x.to(dtype), 0.5, c).dtype == dtype
    guide64 = lambda x, s, c: three.denoise(x.double(), s, c)                    # noqa: E731
    out = guidance.guided(model, guidance.make("autoguidance", 2.0, guide=guide64))(x, 0.5, c)
    assert out.dtype == torch.float32


def test_edm_schedule_with_a_tiny_rho_is_the_formula_not_an_overflow():
    """rho = 1e-3: sigma_max^(1/rho) leaves float64 (a bare OverflowError before); the formula divided through by
    sigma_max^(1/rho) gives sigma_max (1 - i/(N-1))^rho before the last level (r = (sigma_min/sigma_max)^1000 ~ 0)."""
    from toydiff import samplers
    sig = samplers.edm_sigmas(8, rho=1e-3)
    ramp = torch.linspace(0, 1, 8, dtype=torch.float64)
    torch.testing.assert_close(sig[:-2], 80.0 * (1 - ramp[:-1]) ** 1e-3, rtol=1e-15, atol=0)
    assert sig[-2] == 0.002 and sig[-1] == 0
    assert torch.equal(samplers.edm_sigmas(8, rho=7.0), samplers.edm_sigmas(8))   # the usual path is untouched


def test_explore_refuses_a_busy_port_instead_of_printing_the_wrong_url(monkeypatch, capsys):
    """Before: with P taken it printed http://127.0.0.1:P/ while Voila moved to P+1."""
    import socket

    from toydiff import explore
    started = []
    monkeypatch.setattr(explore.subprocess, "Popen", lambda *a, **k: started.append(a) or pytest.fail("started"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["explore", "--port", str(port)]) == 2
    err = capsys.readouterr()
    assert f"port {port} on 127.0.0.1 is in use" in err.err and "http://" not in err.out and not started


def test_seed_range_is_in_the_help(capsys):
    """`--seed -1` is refused (torch would wrap it to 2**64 - 1); --help now says the range."""
    for command in ("sample", "train", "demo"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "[0, 2**63 - 1]" in " ".join(capsys.readouterr().out.split()), command
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--seed", "-1"])
    assert e.value.code == 2 and "[0, 2**63 - 1], got -1" in capsys.readouterr().err


def test_a_macos_archive_folder_is_no_class(tmp_path):
    """An unzipped macOS archive holds __MACOSX/<class>/._<name>.png resource forks beside the classes; before,
    __MACOSX became class 0 (every label shifted by one), silently."""
    import numpy as np
    from PIL import Image

    from imagenet_ext.data import load_folder
    for sub in ("cat", "dog"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / sub / "a.png")
        (tmp_path / "__MACOSX" / sub).mkdir(parents=True)
        (tmp_path / "__MACOSX" / sub / "._a.png").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")
    (tmp_path / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")
    found = load_folder(tmp_path, 4)
    assert found.num_classes == 2 and found.labels.tolist() == [0, 1]


def test_the_mixture_range_is_explained_as_floating_point(three):
    """The range |x|, sigma <= 1e15 stays (D = x + sigma^2 s carries |x| 2^-53 of rounding: at x = sigma = 1e15
    D is 0.125 against an exact ~5e-16); the refusal now says it is a floating-point limit, not the mixture's."""
    with pytest.raises(ValueError, match=r"x lies outside .* \(a limit of floating point"):
        three.denoise(torch.full((1, 2), 1e16, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"sigma lies outside .* \(a limit of floating point"):
        three.denoise(torch.zeros(1, 2), 1e16)
