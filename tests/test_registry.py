"""Registry API, typed presets, shipped weights (SHA-256, size, loading) and `kernelzoo list/info/eval`."""
import argparse
import dataclasses
import json
import os
import re
import shutil
import zipfile

import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo.zoo import card, cli, create, info, list_models, load, registry, shipping
from kernelzoo.zoo.kernelnet import viz
from kernelzoo.zoo.preset import CIFAR10_CLASSES, DatasetSpec, Figure, InputSpec, Preset, PresetError

from conftest import SHARED_DATA

SHIPPED = list_models(pretrained=True)


def test_list_models_pattern_and_pretrained():
    names = list_models()
    assert names == sorted(names) and "kernelnet_movielens_100k" in names
    assert list_models("kernelnet_mnist_*") == ["kernelnet_mnist_learned", "kernelnet_mnist_prior"]
    assert list_models("nothing*") == []
    assert set(SHIPPED) == {n for n in names if info(n).weights} and "simnet_cifar10_l1" in SHIPPED
    assert "simnet_cifar10_wl1_n200" in list_models(pretrained=False)


def test_cifar10_classes_are_defined_once():
    assert info("simnet_cifar10_l1").class_names == CIFAR10_CLASSES
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[-1] == "truck"


def test_create_builds_fresh_models_with_overrides():
    model = create("kernelnet_movielens_100k", hidden=(8,))
    assert model.output_shape == (None, 943) and len(model.layers) == 3
    assert create("kernelnet_mnist_prior", grids=(1, 1), grid_sides=(4, 3)).output_shape == (None, 10)


def test_create_overrides_win_over_the_presets_own_config():
    """An override of a key the preset's config sets is the one the builder gets (943 users -> 20)."""
    assert create("kernelnet_movielens_100k", n_users=20, hidden=(8,)).output_shape == (None, 20)


def test_load_of_a_preset_without_weights_names_it():
    """A known name with no shipped weights is a ValueError saying so, not a TypeError from a None path."""
    name = list_models(pretrained=False)[0]
    with pytest.raises(ValueError, match=f"name='{name}' has no pretrained weights"):
        load(name)


def test_a_preset_name_defined_twice_is_refused(monkeypatch):
    """Two presets of one name (here a family listed twice) fail when the registry is built, not shadow each other."""
    monkeypatch.setattr(registry, "FAMILIES", ("sc", "sc"))
    with pytest.raises(RuntimeError, match="is defined twice"):
        registry._presets.__wrapped__()


def test_shipped_weights_stay_within_the_size_budget_and_are_deflated():
    sizes = shipping.shipped_sizes()
    assert sorted(sizes) == sorted(SHIPPED)
    shipping.check_budget(sizes)
    for name in SHIPPED:                          # written by `kernelzoo ship`, which deflates
        with zipfile.ZipFile(registry.weights_path(name)) as archive:
            assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}, name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_sha256_and_load(name):
    preset = info(name)
    path = registry.weights_path(name)
    assert registry.sha256(path) == preset.sha256
    model = load(name)
    assert model.optimizer is not None            # compiled by the family recipe
    plain = keras.models.load_model(path, compile=False)
    assert tuple(plain.input_shape[1:]) == preset.inputs.shape
    x = np.zeros((1,) + preset.inputs.shape, np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0))
    assert _states_the_figure(card(name), preset)


def _states_the_figure(text, preset):
    """Whether `text` gives the preset's measured figure, as `Figure.format` writes it or to four decimals."""
    return preset.measured.format(preset.metric) in text.replace("**", "") or f"{preset.measured.value:.4f}" in text


with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
          encoding="utf-8") as _readme:
    _README_ZOO_ROWS = [line for line in _readme if line.startswith("| `")]


@pytest.mark.parametrize("name", SHIPPED)
def test_readme_states_each_shipped_figure(name):
    """README's zoo table has a row naming each shipped model with the figure its preset registers (as its card):
    a re-measured model updated in one place only fails here."""
    rows = [row for row in _README_ZOO_ROWS if f"`{name}`" in row]
    assert rows and any(_states_the_figure(row, info(name)) for row in rows), (name, rows)


# Keys of a layer config that change neither the architecture nor a prediction (what the weights are
# initialised with, how they were regularised in training, names).
_TRAINING_ONLY = ("initializer", "regularizer", "seed", "name", "build_config", "compile_config")


def _architecture(config):
    if isinstance(config, dict):
        return {key: _architecture(value) for key, value in config.items() if not key.endswith(_TRAINING_ONLY)}
    return [_architecture(value) for value in config] if isinstance(config, list) else config


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_have_the_architecture_their_preset_builds(name):
    """The preset's config describes the shipped file: every layer, with every argument that shapes a
    prediction (e.g. a MEX's xi), is what `create(name)` builds."""
    fresh = create(name)
    shipped = keras.models.load_model(registry.weights_path(name), compile=False)
    assert [(type(layer).__name__, _architecture(layer.get_config())) for layer in shipped.layers] == \
        [(type(layer).__name__, _architecture(layer.get_config())) for layer in fresh.layers]


def test_image_models_take_raw_pixels():
    """Every image preset documents uint8 input and its model starts with preprocessing."""
    from kernelzoo.zoo import input_spec
    for name in list_models():
        preset = info(name)
        if len(preset.inputs.shape) >= 2:
            assert preset.inputs.dtype == "uint8", name
    for name in SHIPPED:
        spec = input_spec(load(name, compile=False))
        assert spec.shape == info(name).inputs.shape and spec.dtype == info(name).inputs.dtype, name


def test_input_spec_looks_past_keras_augmentation_to_the_preprocessing():
    """RandomFlip and MixUp pass on the range they get: a model starting with one, then Rescaling, takes uint8 pixels
    (a (28, 28) grey one too); with no preprocessing after them, float32."""
    from kernelzoo.zoo import input_spec

    def spec(*layers, shape=(8, 8, 3)):
        return input_spec(keras.Sequential([keras.Input(shape), *layers, keras.layers.Flatten()]))

    assert spec(keras.layers.RandomFlip(), keras.layers.Rescaling(1 / 255)).dtype == "uint8"
    assert spec(keras.layers.Rescaling(1 / 255), shape=(28, 28)).dtype == "uint8"
    assert spec(keras.layers.RandomFlip()).dtype == spec(keras.layers.MixUp()).dtype == "float32"


def test_input_spec_refuses_a_model_of_unknown_size_or_of_two_inputs():
    """Neither an input of unknown size nor two inputs make one InputSpec: a ValueError naming `model`."""
    from kernelzoo.zoo import input_spec
    with pytest.raises(ValueError, match=r"`model` 'any_size' has an input of unknown size \(None, None, 3\)"):
        input_spec(keras.Sequential([keras.Input((None, None, 3)), keras.layers.Rescaling(1 / 255)], name="any_size"))
    a, b = keras.Input((2,)), keras.Input((2,))
    with pytest.raises(ValueError, match="`model` must be a built single-input keras.Model"):
        input_spec(keras.Model([a, b], keras.layers.Add()([a, b])))


def test_as_model_input_reshapes_only_a_unit_channel_axis():
    """(N, 28, 28, 1) MNIST arrays feed a (28, 28) model; flat (N, 784) rows, as many pixels, are refused."""
    from kernelzoo.zoo.inputs import as_model_input
    grey = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten()])
    images = np.zeros((2, 28, 28, 1), np.uint8)
    assert as_model_input(images, grey).shape == (2, 28, 28)
    with pytest.raises(ValueError, match=r"`images` of shape \(784,\) do not fit the input \(28, 28\)"):
        as_model_input(images.reshape(2, 784), grey)


def test_sha256_mismatch_is_refused_in_one_line(monkeypatch, capsys):
    """A ValueError (ChecksumError): the CLI reports it in one line, not a traceback."""
    from kernelzoo import cli as main_cli
    real = info("kernelnet_mnist_prior")
    monkeypatch.setattr(registry, "info", lambda name: dataclasses.replace(real, sha256="0" * 64))
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load("kernelnet_mnist_prior")
    assert main_cli.main(["info", "kernelnet_mnist_prior", "--cost", "1"]) == 2
    assert "kernelzoo info: error: SHA-256 mismatch" in capsys.readouterr().err


def test_every_loader_names_a_damaged_keras_file(tmp_path, capsys):
    """A truncated .keras file (Keras says "File not found") and one with a damaged member (zipfile.BadZipFile)
    are ValueErrors naming the file, in eval, finetune and export alike."""
    from kernelzoo import cli as main_cli
    from kernelzoo.export.cli import load_model
    from kernelzoo.zoo.evaluation import measure
    from kernelzoo.zoo.finetune import resolve_model
    path = str(tmp_path / "tiny.keras")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    data = open(path, "rb").read()
    with zipfile.ZipFile(path) as archive:
        weights = archive.read("model.weights.h5")
    at = data.find(weights) + len(weights) // 2  # a stored member: its bytes as they are; its CRC-32 now wrong
    truncated, corrupted = str(tmp_path / "truncated.keras"), str(tmp_path / "corrupted.keras")
    open(truncated, "wb").write(data[:len(data) // 2])
    open(corrupted, "wb").write(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    for damaged, message in ((truncated, "is not a whole .keras (zip) file"), (corrupted, "is damaged: Bad CRC-32")):
        for call in (lambda: measure(damaged, preset="kernelnet_mnist_prior"), lambda: resolve_model(damaged),
                     lambda: load_model(damaged)):
            with pytest.raises(ValueError, match=re.escape(f"{damaged!r} {message}")):
                call()
    assert main_cli.main(["eval", truncated, "--preset", "kernelnet_mnist_prior"]) == 2
    assert "truncated or damaged" in capsys.readouterr().err


@pytest.mark.parametrize("call", [lambda: create("resnet50"), lambda: load("nope"), lambda: card(3),
                                  lambda: list_models(pattern=5), lambda: list_models(pretrained="yes")])
def test_bad_names_raise_value_error(call):
    with pytest.raises(ValueError, match="name|pattern|pretrained"):
        call()


def _preset(**changes):
    fields = dict(name="toy", family="simnet", builder="kernelzoo.zoo.simnet.models.convnet_baseline", config={},
                  description="a toy", inputs=InputSpec((8, 8, 3)), task="classification",
                  dataset=DatasetSpec("cifar10", "DATA/cifar10"), recipe={}, card="toy.md",
                  class_names=("a", "b"))
    return Preset(**dict(fields, **changes))


@pytest.mark.parametrize("changes, field", [
    ({"name": "Bad Name"}, "name"), ({"builder": "somewhere.else.fn"}, "builder"), ({"config": [1]}, "config"),
    ({"task": "detection"}, "task"), ({"class_names": ("one",)}, "class_names"), ({"card": "toy.txt"}, "card"),
    ({"weights": "toy.keras"}, "sha256"), ({"weights": "toy.keras", "sha256": "xyz"}, "sha256"),
    ({"measured": Figure(0.5)}, "measured"), ({"inputs": (8, 8, 3)}, "inputs"),
    ({"task": "rating_prediction"}, "class_names"), ({"weights": "toy.keras", "sha256": "A" * 64}, "sha256")])
def test_presets_validate_and_name_the_bad_field(changes, field):
    with pytest.raises(PresetError, match=f"`{field}`"):
        _preset(**changes)
    with pytest.raises(PresetError, match="`dtype`"):
        InputSpec((8, 8), "int8")
    assert _preset().config == {} and _preset().metric == "accuracy"


def test_input_and_dataset_specs_refuse_empty_fields():
    """A shape axis of 0 (or no axis) is no input a model can take, and an empty dataset name or split names no data:
    refused when the preset is written."""
    for shape in ((8, 0, 3), (), (8, True)):
        with pytest.raises(PresetError, match="`shape`"):
            InputSpec(shape)
    for field in ("name", "local", "split"):
        with pytest.raises(PresetError, match=f"`{field}`"):
            DatasetSpec(**{"name": "cifar10", "local": "DATA/cifar10", field: ""})


def _run(command, argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, command)
    return cli.run(parser.parse_args(argv), command)


def test_cli_list_and_info(capsys):
    assert _run("list", ["kernelnet_*"]) == 0
    assert _run("list", ["--pretrained"]) == 0
    assert _run("info", ["kernelnet_mnist_prior"]) == 0
    out = capsys.readouterr().out
    assert "kernelnet_movielens_100k" in out and "sha256" in out and "98.66 %" in out
    assert "simnet_cifar10_wl1_n200" not in out.split("kernelnet_mnist_prior (kernelnet family)")[0].split(
        "kernelnet_movielens_100k")[-1]
    assert _run("info", ["kernelnet_mnist_prior", "--cost", "1"]) == 0
    assert capsys.readouterr().out.strip() == "kernelnet_mnist_prior params 249322 macs 14315488"
    with pytest.raises(ValueError, match="command"):
        cli.add_arguments(argparse.ArgumentParser(), "remove")


@pytest.mark.parametrize("density", ["1/0", "2", "-0.1", "half"])
def test_cli_info_cost_names_the_flag_and_its_range(density, capsys):
    with pytest.raises(SystemExit):
        _run("info", ["kernelnet_mnist_prior", "--cost", density])
    assert f"argument --cost: must be a number or a fraction in [0, 1] (e.g. 10/943), got {density!r}" in \
        capsys.readouterr().err


def test_cli_info_cost_zero_is_a_density_not_the_card(capsys):
    """--cost 0 (no input pixel or rating set) counts the MACs of the layers after the first; it is not "no --cost"."""
    assert _run("info", ["kernelnet_mnist_prior", "--cost", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kernelnet_mnist_prior params 249322 macs ") and "sha256" not in out


def test_cost_counts_conv2d_macs_and_refuses_layers_it_cannot_count():
    """Conv2D: its non-zero kernel entries at each output position; the first counted layer scaled by the input
    density. A layer with weights it cannot count (a SimNet's Similarity) is refused, not counted as 0; a batch
    normalisation counts none (the shipped kernelnet_embedding_mnist_ae's card shows its count)."""
    from kernelzoo.layers.cost import cost_report
    from kernelzoo.zoo.augment import RandomShiftFlip
    inputs = keras.Input((6, 7, 2))
    x = RandomShiftFlip()(inputs)  # its only weight is an integer call counter: no MACs
    conv = keras.layers.Conv2D(3, (3, 2), strides=(1, 2), name="conv")
    x = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(conv(x)))
    model = keras.Model(inputs, x)
    kernel = conv.get_weights()[0]
    kernel[0, 0, 0, 0] = 0.0  # a pruned weight counts no MAC
    conv.set_weights([kernel, conv.get_weights()[1]])
    positions, conv_macs = 4 * 3, 3 * 2 * 2 * 3 - 1  # output 4x3; (3x2 kernel x 2 channels x 3 filters) - 1
    assert cost_report(model, 0.5) == {"params": 13 * 3 + 37 * 4, "macs": 0.5 * positions * conv_macs + 36 * 4}
    with pytest.raises(ValueError, match="--cost: .* cannot count the MACs of its Mex, PatchWhitening, Similarity "
                                         "layers"):
        _run("info", ["simnet_cifar10_l1", "--cost", "1"])
    folded = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                               keras.layers.Dense(2)])  # batch normalisation folds into the Dense before it
    assert cost_report(folded)["macs"] == 3 * 4 + 4 * 2


def _mnist_folder(root):
    """root/mnist: a class folder copy of MNIST, one 28x28 image per digit and split."""
    from PIL import Image
    for split in ("train", "test"):
        for digit in range(10):
            os.makedirs(root / "mnist" / split / str(digit))
            Image.fromarray(np.full((28, 28), 25 * digit, np.uint8)).save(root / "mnist" / split / str(digit) / "0.png")
    return str(root)


def test_eval_shows_the_card_only_for_the_shipped_weights(tmp_path, capsys):
    """The card figure is that of the shipped file: a zoo name or a file with its SHA-256 gets it, other weights
    measured with the preset's protocol get the paper's figure only; a zoo name measured as another preset is
    refused (so `eval A B --preset X` cannot average two presets' models as one)."""
    from kernelzoo.zoo.evaluation import measure
    data_dir, name = _mnist_folder(tmp_path), "kernelnet_mnist_prior"
    copy, other = str(tmp_path / "copy.keras"), str(tmp_path / "other.keras")
    shutil.copyfile(registry.weights_path(name), copy)
    load(name, compile=False).save(other)  # the same weights in another file
    assert measure(copy, data_dir)["card"] == info(name).measured
    out = tmp_path / "other.json"
    assert _run("eval", [other, "--preset", name, "--data-dir", data_dir, "--quiet", "--json", str(out)]) == 0
    assert "no card figure: not the shipped weights | paper 99.03 %" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["card"] is None and result["paper"]["value"] == info(name).paper.value and not result["shipped"]
    with pytest.raises(ValueError, match="`preset` \\(--preset\\) 'kernelnet_mnist_learned' is not the preset of the "
                                         "zoo model 'kernelnet_mnist_prior'"):
        _run("eval", [name, "kernelnet_mnist_learned", "--preset", "kernelnet_mnist_learned", "--data-dir", data_dir])


@pytest.mark.data
def test_cli_eval_prints_measured_card_and_paper_figures(capsys, tmp_path, monkeypatch, card_measurements):
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data absent")
    from kernelzoo.zoo import evaluation
    real_measure = evaluation.measure

    def measure(model, data_dir=None, *, preset=None, dataset=None, split="test", holdout=None, seed=0, verbose=0):
        """The card protocol's measurement of a shipped model is shared with test_families's card test
        (conftest.card_measurements): one 10k-image evaluation per model and session."""
        card_protocol = (preset, dataset, split, holdout) == (None, None, "test", None)
        if model == "kernelnet_mnist_prior" and data_dir == SHARED_DATA and card_protocol:
            if model not in card_measurements:
                card_measurements[model] = real_measure(model, SHARED_DATA)
            return dict(card_measurements[model])
        return real_measure(model, data_dir, preset=preset, dataset=dataset, split=split, holdout=holdout, seed=seed,
                            verbose=verbose)

    monkeypatch.setattr(evaluation, "measure", measure)
    out = tmp_path / "eval.json"
    assert _run("eval", ["kernelnet_mnist_prior", "--data-dir", SHARED_DATA, "--json", str(out)]) == 0
    line = capsys.readouterr().out
    assert "measured 98.66 % | card 98.66 % | paper 99.03 % (Table 1)" in line and "10,000 examples" in line
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(0.9866, abs=1e-4)


def test_viz_rejects_non_embedding_models(tmp_path):
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser, "viz")
    args = parser.parse_args(["embedding", "kernelnet_mnist_prior", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match="name"):
        viz.run(args, "viz")
    with pytest.raises(ValueError, match="samples"):
        viz.run(parser.parse_args(["embedding", "kernelnet_embedding_mnist", "--samples", "0"]), "viz")


@pytest.mark.data
def test_viz_writes_embedding_png(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("../shared/data absent")
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser, "viz")
    out = tmp_path / "emb.png"
    args = parser.parse_args(["embedding", "kernelnet_embedding_mnist", "--data-dir", SHARED_DATA,
                              "--samples", "300", "--out", str(out)])
    assert viz.run(args, "viz") == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="autoencoder"):
        viz.run(parser.parse_args(["embedding", "kernelnet_embedding_mnist", "--data-dir", SHARED_DATA,
                                   "--samples", "10", "--out", str(out), "--walk", str(tmp_path / "w.png")]), "viz")


@pytest.mark.data
def test_viz_writes_the_autoencoder_embedding_and_walk(tmp_path, capsys):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("../shared/data absent")
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser, "viz")
    out, walk = tmp_path / "emb.png", tmp_path / "walk.png"
    args = parser.parse_args(["embedding", "kernelnet_embedding_mnist_ae", "--data-dir", SHARED_DATA,
                              "--samples", "300", "--out", str(out), "--walk", str(walk), "--steps", "3",
                              "--window", "0.3", "0.7", "0.3", "0.7"])
    assert viz.run(args, "viz") == 0
    assert out.read_bytes()[:8] == walk.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    between = float(capsys.readouterr().out.split("between ")[1].split(",")[0])
    assert between > 1 / 19  # above one grid spacing: not collapsed
