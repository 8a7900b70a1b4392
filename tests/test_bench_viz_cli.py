"""Command-line checks of `kernelzoo viz simnet-size`, `kernelzoo viz embedding` and the training-step benchmarks
(`kernelzoo bench sc`, `bench ckn`, `bench simnet`), their measurements stubbed: nothing here is timed or trained."""
import importlib
import json
import os

import pytest

from kernelzoo import cli
from kernelzoo.zoo.simnet import figures, models


def test_simnet_size_takes_n_from_the_builders_defaults(tmp_path):
    """A FAMILY:BUILDER run (`kernelzoo train simnet:convnet_baseline`) records no configuration: its n is the
    builder's default."""
    os.makedirs(tmp_path / "convnet")
    models.convnet_baseline(input_shape=(10, 10, 3)).save(tmp_path / "convnet" / "model.keras")
    (tmp_path / "convnet" / "config.json").write_text(json.dumps(
        {"builder": "kernelzoo.zoo.simnet.models.convnet_baseline", "config": {}, "overrides": {}}))
    (tmp_path / "convnet" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    kind, n, parameters, accuracy, label = figures.run_point(str(tmp_path / "convnet"))
    assert (kind, n, accuracy, label) == ("convnet", 400, 0.5, "convnet") and parameters > 0
    # an override p=2.0 (parse_overrides reads floats) is the weighted-l2 curve, not a kind of its own
    assert figures.model_kind("kernelzoo.zoo.simnet.models.simnet_patch_labeling", {"p": 2.0}) == "simnet_wl2"


_MS = {"float32": 100.0, "mixed_bfloat16": 50.0}


def _measure(*args, **kwargs):
    """A step benchmark's `measure`, untimed: 100 ms per float32 step, 50 ms per mixed_bfloat16 one."""
    ms = _MS[next(arg for arg in args if arg in _MS)]
    return {"ms": ms, "images_per_s": 1000 / ms, "steps": 1}


@pytest.mark.parametrize("module,argv,precision_column,ratio_column", [
    ("kernelzoo.zoo.sc.bench", ["--stages", "supervised"], 3, 6),
    ("kernelzoo.zoo.ckn.bench", [], 1, 4),
    ("kernelzoo.zoo.simnet.bench_train", ["--models", "simnet_wl2,convnet"], 2, 6)])
def test_step_benches_give_every_row_its_ratio_to_float32(monkeypatch, capsys, module, argv, precision_column,
                                                          ratio_column):
    """The float32 reference is measured first, whatever --precisions' order: no row before it lacks its ratio."""
    bench = importlib.import_module(module)
    monkeypatch.setattr(bench, "measure", _measure)
    assert bench.main([*argv, "--precisions", "mixed_bfloat16,float32"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    ratios = {row[precision_column]: row[ratio_column] for row in rows if row[0] != "simnet_wl2"}
    assert ratios == {"float32": "1.00x", "mixed_bfloat16": "2.00x"}


@pytest.mark.parametrize("argv,flag", [
    (["--epochs", "3"], "--epochs"), (["--run-dir", "runs/x"], "--run-dir"),
    (["--window", "1.5", "2.5", "-1", "-0.5"], "--window"), (["--window", "0.6", "0.4", "0.2", "0.8"], "--window"),
    (["--window", "0.2", "0.8", "0.5", "0.5"], "--window"), (["--out", "embedding"], "--out"),
    (["--walk", "walk.nope"], "--walk")])
def test_viz_embedding_refuses_an_ignored_or_bad_flag(monkeypatch, capsys, argv, flag):
    """--epochs and --run-dir only apply with --train; --window is a box in [0, 1]^2, x0 < x1 and y0 < y1: refused
    before anything loads."""
    from kernelzoo.zoo import registry
    monkeypatch.setattr(registry, "load", lambda name: pytest.fail("loaded the network before checking the flags"))
    assert cli.main(["viz", "embedding", "kernelnet_embedding_mnist", *argv]) == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("command", [["simnet-size", "--shipped"], ["runs", "RUN"], ["layerwise-samples"]])
@pytest.mark.parametrize("out,message", [
    ("{tmp}", "is a folder"), ("{tmp}/figure", "must end in an image format's extension"),
    ("{tmp}/a_file/figure.png", "cannot make the folder")])
def test_viz_commands_check_the_figure_path_before_any_work(tmp_path, capsys, command, out, message):
    """savefig wrote FIGURE.png for a bare FIGURE (the command said "wrote FIGURE") and into FOLDER.png for a
    folder; a folder that cannot be made was a traceback after the work."""
    (tmp_path / "a_file").write_text("not a folder")
    assert cli.main(["viz", *command, "--out", out.format(tmp=tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "`--out`" in error and message in error, error
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    assert not os.path.exists(f"{tmp_path}.png")


def test_layerwise_samples_refuses_a_bad_count_or_seed_naming_it(capsys):
    for flag, value in (("--count", "0"), ("--seed", "-1")):
        assert cli.main(["viz", "layerwise-samples", flag, value]) == 2
        assert f"`{flag}`" in capsys.readouterr().err
