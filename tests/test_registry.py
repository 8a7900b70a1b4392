"""Registry API, shipped weights (SHA-256, size, loading) and their cards' figures."""
import argparse
import os

import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo.zoo import card, cli, create, list_models, load, registry
from kernelzoo.zoo.kernelnet import presets, viz
from kernelzoo.zoo.kernelnet.evaluate import evaluate as evaluate_kernelnet
from kernelzoo.zoo.simnet import presets as simnet_presets
from kernelzoo.zoo.simnet.evaluate import evaluate as evaluate_simnet

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
EVALUATE = {name: evaluate for module, evaluate in ((presets, evaluate_kernelnet), (simnet_presets, evaluate_simnet))
            for name, entry in module.PRESETS.items() if entry.get("weights")}
SHIPPED = sorted(EVALUATE)


def test_list_models_and_pattern():
    names = list_models()
    assert names == sorted(names) and "kernelnet_movielens_100k" in names
    assert list_models("kernelnet_mnist_*") == ["kernelnet_mnist_learned", "kernelnet_mnist_prior"]
    assert list_models("nothing*") == []


def test_create_builds_fresh_models_with_overrides():
    model = create("kernelnet_movielens_100k", hidden=(8,))
    assert model.output_shape == (None, 943) and len(model.layers) == 3
    assert create("kernelnet_mnist_prior", grids=(1, 1), grid_sides=(4, 3)).output_shape == (None, 10)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_sha256_and_load(name):
    entry = registry.info(name)
    path = registry.weights_path(name)
    assert os.path.getsize(path) < 6 * 2 ** 20
    assert registry.sha256(path) == entry["sha256"]
    model = load(name)
    assert model.optimizer is not None            # compiled
    plain = keras.models.load_model(path, compile=False)
    x = np.zeros((1,) + tuple(plain.input_shape[1:]), np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0))
    assert f"{entry['metrics']['value']:.4f}" in card(name)


@pytest.mark.parametrize("evaluate", [evaluate_kernelnet, evaluate_simnet])
def test_evaluate_rejects_unknown_names(evaluate):
    with pytest.raises(ValueError, match="name"):
        evaluate("no_such_model")


def test_sha256_mismatch_is_refused(monkeypatch):
    name = next(name for name in SHIPPED if name in presets.PRESETS)
    broken = dict(presets.PRESETS[name], sha256="0" * 64)
    monkeypatch.setitem(presets.PRESETS, name, broken)
    with pytest.raises(RuntimeError, match="SHA-256"):
        load(name)


@pytest.mark.data
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reproduce_their_card(name):
    """Within 0.02 points (the issue allows 0.2): the figure is re-measured, not re-trained."""
    if not os.path.isdir(SHARED):
        pytest.skip("../shared/data absent")
    metrics = registry.info(name)["metrics"]
    measured = EVALUATE[name](name, SHARED)[metrics["key"]]
    assert measured == pytest.approx(metrics["value"], abs=2e-4)


@pytest.mark.parametrize("call", [lambda: create("resnet50"), lambda: load("nope"),
                                  lambda: card(3), lambda: list_models(pattern=5)])
def test_bad_names_raise_value_error(call):
    with pytest.raises(ValueError, match="name|pattern"):
        call()


def test_cli_list_and_info(capsys):
    for command, argv in (("list", ["kernelnet_*"]), ("info", ["kernelnet_mnist_prior"])):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser, command)
        assert cli.run(parser.parse_args(argv), command) == 0
    out = capsys.readouterr().out
    assert "kernelnet_movielens_100k" in out and "sha256" in out
    with pytest.raises(ValueError, match="command"):
        cli.add_arguments(argparse.ArgumentParser(), "remove")


def test_viz_rejects_non_embedding_models(tmp_path):
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser, "viz")
    args = parser.parse_args(["embedding", "kernelnet_mnist_prior", "--out",
                              str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match="name"):
        viz.run(args, "viz")
    with pytest.raises(ValueError, match="samples"):
        viz.run(parser.parse_args(["embedding", "kernelnet_embedding_mnist", "--samples", "0"]),
                "viz")


@pytest.mark.data
def test_viz_writes_embedding_png(tmp_path):
    if not os.path.isdir(os.path.join(SHARED, "mnist")):
        pytest.skip("../shared/data absent")
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser, "viz")
    out = tmp_path / "emb.png"
    args = parser.parse_args(["embedding", "kernelnet_embedding_mnist", "--data-dir", SHARED,
                              "--samples", "300", "--out", str(out)])
    assert viz.run(args, "viz") == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="autoencoder"):
        viz.run(parser.parse_args(["embedding", "kernelnet_embedding_mnist", "--data-dir",
                                   SHARED, "--samples", "10", "--out", str(out),
                                   "--walk", str(tmp_path / "w.png")]), "viz")
