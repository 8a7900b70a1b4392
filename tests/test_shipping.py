"""`kernelzoo ship`: a trained model written as deflated, checked shipped weights within the budget."""
import io
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest

from kernelzoo import cli as main_cli
from kernelzoo.zoo import create, registry, shipping, training

NAME = "kernelnet_mnist_prior"  # any preset: a small model of its builder stands for a trained one


@pytest.fixture()
def trained(tmp_path):
    path = str(tmp_path / "run" / "model.keras")
    os.makedirs(os.path.dirname(path))
    create(NAME, grids=(1, 1), grid_sides=(4, 3)).save(path)
    return path


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: (info.compress_type, archive.read(info)) for info in archive.infolist()}


def test_deflate_keeps_every_member_and_keras_reads_it(trained, tmp_path):
    packed = str(tmp_path / "packed.keras")
    shipping.deflate(trained, packed)
    before, after = _members(trained), _members(packed)
    assert list(before) == list(after) and all(after[name][1] == before[name][1] for name in before)
    assert {kind for kind, _ in after.values()} == {zipfile.ZIP_DEFLATED}
    assert os.path.getsize(packed) < os.path.getsize(trained)
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28)).astype("float32")
    np.testing.assert_array_equal(keras.models.load_model(packed).predict(x, verbose=0),
                                  keras.models.load_model(trained).predict(x, verbose=0))


def test_ship_writes_the_run_folders_model_deflated_with_its_sha256(trained, tmp_path):
    target = str(tmp_path / "shipped.keras")
    path, digest, size, total = shipping.ship(os.path.dirname(trained), NAME, target=target)
    assert path == target and digest == registry.sha256(target) and size == os.path.getsize(target)
    others = sum(nbytes for name, nbytes in shipping.shipped_sizes().items() if name != NAME)
    assert total == others + size                    # the shipped file counted in place of NAME's
    shipped, source = keras.models.load_model(target, compile=False), keras.models.load_model(trained)
    assert all(np.array_equal(a, b) for a, b in zip(shipped.get_weights(), source.get_weights()))
    assert {kind for kind, _ in _members(target).values()} == {zipfile.ZIP_DEFLATED}


def test_ship_refuses_a_model_over_the_budget_and_writes_nothing(trained, tmp_path, monkeypatch):
    target = str(tmp_path / "shipped.keras")
    others = sum(size for name, size in shipping.shipped_sizes().items() if name != NAME)
    monkeypatch.setattr(shipping, "MAX_TOTAL_BYTES", others + 1)   # the shipped file replaces NAME's
    with pytest.raises(ValueError, match="total .* MiB, the limit"):
        shipping.ship(trained, NAME, target=target)
    monkeypatch.setattr(shipping, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match="MiB a file"):
        shipping.ship(trained, NAME, target=target)
    assert os.listdir(tmp_path) == ["run"]          # no file and no staging folder left


def test_ship_names_a_bad_model_path_and_input_shape(trained, tmp_path):
    with pytest.raises(ValueError, match="model_path=.*neither a .keras file nor a run folder"):
        shipping.ship(str(tmp_path / "missing"), NAME, target=str(tmp_path / "x.keras"))
    other = str(tmp_path / "other.keras")
    create(NAME, grids=(1, 1), grid_sides=(4, 3), image_size=14).save(other)
    with pytest.raises(ValueError, match=r"model_path=.* takes inputs \(14, 14\), 'kernelnet_mnist_prior' takes"):
        shipping.ship(other, NAME, target=str(tmp_path / "x.keras"))
    with pytest.raises(ValueError, match="name"):
        shipping.ship(trained, "no_such_model", target=str(tmp_path / "x.keras"))


def test_cli_ship_reports_the_file_and_a_bad_argument_in_one_line(trained, tmp_path, monkeypatch, capsys):
    target = str(tmp_path / "shipped.keras")
    monkeypatch.setattr(shipping, "target_path", lambda name: target)
    assert main_cli.main(["ship", trained, NAME]) == 0
    out = capsys.readouterr().out
    assert f"wrote {target}" in out and f'sha256="{registry.sha256(target)}"' in out and "of 48 MiB" in out
    assert main_cli.main(["ship", str(tmp_path / "missing.keras"), NAME]) == 2
    assert "kernelzoo ship: error: model_path=" in capsys.readouterr().err


@pytest.mark.parametrize("error, ships", [(2e-9, True), (1e-3, False)])
def test_ship_allows_a_recomputed_ckn_factor_its_float32_rounding_only(tmp_path, monkeypatch, error, ships):
    """A CKN file saved with its Nystrom factor (as before 2026-12-06) ships anchors only; the reloaded factor,
    recomputed from them, may differ from the saved one by another machine's rounding (1.9e-9 measured), no more."""
    from kernelzoo.layers.ckn import CKNConv2D
    model = create("ckn_cifar10_unsup_64_256", filters=(4, 6))
    for layer in model.layers:
        if isinstance(layer, CKNConv2D):
            layer.factor.assign(layer.factor + error)   # the factor as another machine computed it
    source = str(tmp_path / "old.keras")
    with monkeypatch.context() as old_format:
        old_format.setattr(CKNConv2D, "save_own_variables", keras.layers.Layer.save_own_variables)
        model.save(source)
    target = str(tmp_path / "shipped.keras")
    if ships:
        shipping.ship(source, "ckn_cifar10_unsup_64_256", target=target)
        _, weights = _members(target)["model.weights.h5"]
        with h5py.File(io.BytesIO(weights)) as h5:
            arrays = []
            h5.visit(lambda key: arrays.append(key) if isinstance(h5[key], h5py.Dataset) else None)
        assert sorted(arrays) == ["layers/ckn_conv2d/vars/0", "layers/ckn_conv2d_1/vars/0",   # anchors only
                                  "layers/dense/vars/0", "layers/dense/vars/1"]
    else:
        with pytest.raises(RuntimeError, match="does not hold its weights"):
            shipping.ship(source, "ckn_cifar10_unsup_64_256", target=target)
        assert not os.path.exists(target)


def test_ship_refuses_another_presets_run_and_a_model_of_other_classes(trained, tmp_path):
    training.write_json(os.path.join(os.path.dirname(trained), training.CONFIG_FILE),
                        {"preset": "kernelnet_mnist_learned"})
    with pytest.raises(ValueError, match="a run of preset 'kernelnet_mnist_learned' .* not of 'kernelnet_mnist_prior'"):
        shipping.ship(os.path.dirname(trained), NAME, target=str(tmp_path / "x.keras"))
    three = str(tmp_path / "three.keras")
    create(NAME, grids=(1, 1), grid_sides=(4, 3), num_classes=3).save(three)
    with pytest.raises(ValueError, match="scores 3 classes, 'kernelnet_mnist_prior' has 10"):
        shipping.ship(three, NAME, target=str(tmp_path / "x.keras"))
    assert not os.path.exists(tmp_path / "x.keras")


def test_a_shipped_file_missing_weights_is_refused():
    """A written file that holds only some of the model's weights (each of them equal) is refused, not shipped."""
    def dense(*units):
        model = keras.Sequential([keras.Input((3,))] + [keras.layers.Dense(n, name=f"d{n}") for n in units], name="m")
        for variable in model.weights:
            variable.assign(np.ones(variable.shape))
        return model

    shipping._check_same_weights(dense(2, 4), dense(2, 4), "run")
    with pytest.raises(RuntimeError, match="the file written from run does not hold its weights"):
        shipping._check_same_weights(dense(2, 4), dense(2), "run")


def test_the_budget_allows_files_and_a_total_of_exactly_its_limits():
    """At most MAX_FILE_BYTES a file and MAX_TOTAL_BYTES in all (the module docstring): the limits pass, a byte more
    is refused, naming the file or the total."""
    limit, total = shipping.MAX_FILE_BYTES, shipping.MAX_TOTAL_BYTES
    full = {"a": limit, "b": limit, "c": total - 2 * limit}  # 16 + 16 + 16 MiB
    assert shipping.check_budget(full) == total
    with pytest.raises(ValueError, match="a: .* MiB a file"):
        shipping.check_budget({"a": limit + 1})
    with pytest.raises(ValueError, match="would total"):
        shipping.check_budget({**full, "d": 1})
