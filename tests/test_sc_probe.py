"""`kernelzoo probe` (kernelzoo.zoo.sc.probe): the linear probe, the SC task's accuracy and the colour baseline."""
import numpy as np
import pytest
import tensorflow as tf

from kernelzoo import cli
from kernelzoo.zoo.data.synthetic import stripes
from kernelzoo.zoo.sc import probe, sc_cifar10
from kernelzoo.zoo.sc.data import semi_supervised
from kernelzoo.zoo.sc.loss import patch_features
from kernelzoo.zoo.sc.recipe import SCRecipe


def test_region_features_are_the_regions_means(rng):
    maps = rng.normal(size=(7, 5, 5, 3)).astype("float32")
    identity = lambda images: images  # noqa: E731
    whole, quads = probe.region_features(identity, maps, (1, 2), batch_size=3)
    np.testing.assert_allclose(whole, maps.mean(axis=(1, 2)), rtol=1e-6)
    quads = quads.reshape(7, 4, 3)
    for index, (rows, cols) in enumerate([(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(3, 5)),
                                          (slice(3, 5), slice(0, 3)), (slice(3, 5), slice(3, 5))]):
        np.testing.assert_allclose(quads[:, index], maps[:, rows, cols].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        probe.region_features(identity, maps, (6,))


def test_probe_separates_what_is_separable_and_not_noise(rng):
    labels = np.arange(600) % 4
    centres = rng.normal(size=(4, 8)) * 3
    features = centres[labels] + rng.normal(size=(600, 8))
    accuracy, l2 = probe.probe_accuracy((features[:400], labels[:400]), (features[400:], labels[400:]), 4)
    assert accuracy > 0.95 and l2 in probe.L2_GRID
    noise = rng.normal(size=(600, 8))
    chance, _ = probe.probe_accuracy((noise[:400], labels[:400]), (noise[400:], labels[400:]), 4)
    assert chance < 0.4  # chance 0.25; 200 held-out draws: 0.4 is > 4 standard deviations above it


def test_probe_does_not_depend_on_the_features_scale(rng):
    labels = np.arange(600) % 4
    features = rng.normal(size=(4, 16))[labels] + rng.normal(size=(600, 16)) * 2
    scales = np.logspace(-4, 2, 16)  # per feature, as a network's unnormalised channels
    split = lambda f: ((f[:400], labels[:400]), (f[400:], labels[400:]))  # noqa: E731
    assert probe.probe_accuracy(*split(features), 4) == probe.probe_accuracy(*split(features * scales), 4)


def test_sc_task_accuracy_is_one_when_patches_identify_their_image_and_chance_when_not(rng):
    colours = rng.uniform(size=(64, 1, 1, 3)).astype("float32")
    per_image = lambda images: np.broadcast_to(images, (len(images), 6, 6, 3))  # noqa: E731
    assert probe.contrast_accuracy(per_image, colours, 2, batch_size=32, batches=3) == 1.0
    same = lambda images: np.zeros((len(images), 6, 6, 3), "float32")  # noqa: E731
    assert probe.contrast_accuracy(same, colours, 2, batch_size=32, batches=3) == pytest.approx(1 / 32)
    with pytest.raises(ValueError, match="batch_size"):
        probe.contrast_accuracy(same, colours, 2, batch_size=65)


def test_colour_statistics_are_the_patch_pixels_mean_and_std(rng):
    images = rng.integers(0, 256, (5, 12, 12, 3)).astype("uint8")
    positions = tf.constant([[0, 0], [3, 5], [7, 7], [2, 1], [6, 0]], tf.int32)
    got = probe.colour_statistics(patch_features(probe.colour_maps(images), positions, 5)).numpy()
    for i, (r, c) in enumerate(positions.numpy()):
        pixels = images[i, r:r + 5, c:c + 5].reshape(-1, 3) / 255.0
        np.testing.assert_allclose(got[i], np.concatenate([pixels.mean(0), pixels.std(0)]), atol=2e-4)


def test_probe_command_prints_every_model_and_the_colour_row(tmp_path, monkeypatch, capsys):
    pool, test = stripes(120, size=32), stripes(10, size=32, seed=1)
    monkeypatch.setattr(SCRecipe, "load_data", lambda self, *args, **kwargs: semi_supervised(
        pool, test, "stripes", ("h", "v", "flat"), labels_per_class=20, label_seed=0))
    small = sc_cifar10(widths=(4, 8), head_width=4, num_classes=3, block_depth=1)
    path = str(tmp_path / "small.keras")
    small.save(path)
    code = cli.main(["probe", "sc_cifar10_4k", path, "--untrained", "--holdout", "40", "--batches", "2",
                     "--batch-size", "16", "--grids", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "60 labelled images, 40 held out" in out and "chance 0.0625" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"untrained", path, "colour"}
    assert all(0.0 <= float(value) <= 1.0 for row in rows.values() for value in row if value[0].isdigit())
    assert "(16x16 pixels)" in out and "4x4-cell patches" in out
    cli.main(["probe", "sc_cifar10_4k", path, "--holdout", "40", "--batches", "1", "--batch-size", "8", "--grids", "2",
              "--patch-size", "1"])
    out = capsys.readouterr().out
    assert "1x1-cell patches" in out and "(4x4 pixels)" in out and "probe 2x2" in out


def test_the_task_patch_of_an_image_crop_recipe_is_the_cells_one_crop_covers():
    assert probe.recipe_patch_cells({"sc_sampling": "features", "sc_patch_size": 4}, 8, 32) == 4
    assert probe.recipe_patch_cells({"sc_sampling": "image", "sc_patch_size": 18}, 8, 32) == 4   # sc_cifar10_4k
    assert probe.recipe_patch_cells({"sc_sampling": "image", "sc_patch_size": 3}, 8, 32) == 1


@pytest.mark.parametrize("argv, match", [
    (["sc_cifar10_4k"], "--untrained"), (["sc_cifar10_4k", "missing.keras"], "no such file"),
    (["convnet_cifar10", "--untrained"], "not a spatial contrasting preset"),
    (["sc_cifar10_4k", "--untrained", "--grids", "1,x"], "--grids"),
    (["sc_cifar10_4k", "--untrained", "--patch-size", "-1"], "--patch-size")])
def test_probe_command_errors_name_the_argument(argv, match, capsys):
    assert cli.main(["probe", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kernelzoo probe: error: ") and match in error
