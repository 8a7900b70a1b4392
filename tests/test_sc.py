"""The spatial contrasting family (paper 002; issue 15): sampling, loss, pre-training API, data protocol,
networks, STL-10 reader, precision. The end-to-end run, resume, reload and export of the family's tiny
run are the family contract's (tests/test_families.py -k sc).

The three bugs of the paper's public reimplementation each have a test: patches on the diagonal only
(`test_rows_and_columns_are_independent_and_uniform`), ~25 % of positive pairs the same patch
(`test_the_two_positives_are_never_the_same_patch`), validation images taken from the labelled training
images (`test_cifar10_4k_labels_are_400_per_class_and_disjoint_from_validation`).
"""
import argparse
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.augment import LUMA, distort_colors, jitter_colors
from kernelzoo.zoo.inputs import takes_raw_pixels
from kernelzoo.zoo.precision import float32_copy, precision_policy
from kernelzoo.zoo.sc import (RandomShiftFlip, pretrain, sample_patch_positions, sc_cifar10, sc_mnist, sc_stl10,
                              spatial_contrasting_from_images, spatial_contrasting_from_maps,
                              spatial_contrasting_loss)
from kernelzoo.zoo.sc import models
from kernelzoo.zoo.recipe import Data
from kernelzoo.zoo.sc.data import as_sc_data, carve_validation, labelled_subset, sc_images, semi_supervised
from kernelzoo.zoo.sc.loss import crop_patches, patch_features, pool_map, positions_grid
from kernelzoo.zoo.sc.pretraining import SC_STREAM, PlateauDrop, SpatialContrastingTrainer, feature_layer
from kernelzoo.zoo.sc.recipe import SCRecipe, tiny_runs


# ----------------------------------------------------------------------------- sampling


def _step_seed(seed, step):
    """The sampling seed of training step `step` of a trainer seeded `seed`: (seed, step) folded with SC_STREAM."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, step], tf.int64), SC_STREAM)


def _draws(grid, count=200_000, seed=(3, 4)):
    first, second = sample_patch_positions(count, grid, seed)
    return first.numpy(), second.numpy()


def test_rows_and_columns_are_independent_and_uniform():
    """Bug 1 of the public reimplementation: its column offset reused the row offset (diagonal patches)."""
    rows, cols = 5, 4
    for patch in _draws((rows, cols)):
        assert patch[:, 0].min() == 0 and patch[:, 0].max() == rows - 1
        assert patch[:, 1].min() == 0 and patch[:, 1].max() == cols - 1
        table = np.zeros((rows, cols))
        np.add.at(table, (patch[:, 0], patch[:, 1]), 1)
        assert stats.chisquare(table.ravel()).pvalue > 1e-3                 # uniform over the 20 positions
        assert stats.chi2_contingency(table).pvalue > 1e-3                  # row independent of column
        assert np.mean(patch[:, 0] == patch[:, 1]) == pytest.approx(0.2, abs=0.01)  # not on the diagonal


@pytest.mark.parametrize("grid", [(1, 2), (2, 2), (5, 5), (3, 7)])
def test_the_two_positives_are_never_the_same_patch(grid):
    """Bug 2: an off-by-one made ~25 % of the positive pairs the identical patch. Here none is, and the
    second patch is uniform over the other positions."""
    first, second = _draws(grid, 50_000)
    assert not np.any(np.all(first == second, axis=1))
    index = lambda p: p[:, 0] * grid[1] + p[:, 1]  # noqa: E731
    count = grid[0] * grid[1]
    pairs = np.zeros((count, count))
    np.add.at(pairs, (index(first), index(second)), 1)
    off_diagonal = pairs[~np.eye(count, dtype=bool)]
    assert stats.chisquare(off_diagonal).pvalue > 1e-3


def test_sampling_is_a_function_of_the_seed():
    a, b = _draws((4, 4), 100, seed=(1, 2)), _draws((4, 4), 100, seed=(1, 2))
    c = _draws((4, 4), 100, seed=(1, 3))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_patch_grid_errors_name_the_patch_size():
    assert positions_grid((8, 8), 4) == (5, 5) and positions_grid((7, 7), (6, 5)) == (2, 3)
    for bad in (9, (8, 8), 0):
        with pytest.raises(ValueError, match="patch_size"):
            positions_grid((8, 8), bad)


# ----------------------------------------------------------------------------- loss


def _reference_loss(first, second, distance, symmetric):
    """Eq. 4 written out with loops, in float64."""
    n = len(first)
    dist = np.array([[np.sum((first[i] - second[j]) ** 2) for j in range(n)] for i in range(n)], np.float64)
    if distance == "euclidean":
        dist = np.sqrt(dist)
    rows = -np.mean([np.log(np.exp(-dist[i, i]) / np.sum(np.exp(-dist[i, :]))) for i in range(n)])
    if not symmetric:
        return rows
    cols = -np.mean([np.log(np.exp(-dist[j, j]) / np.sum(np.exp(-dist[:, j]))) for j in range(n)])
    return 0.5 * (rows + cols)


@pytest.mark.parametrize("distance", ["squared", "euclidean"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_loss_matches_a_direct_numpy_reference(distance, symmetric, rng):
    first, second = rng.normal(size=(7, 5)) * 0.5, rng.normal(size=(7, 5)) * 0.5
    got = spatial_contrasting_loss(tf.constant(first, tf.float32), tf.constant(second, tf.float32), distance, symmetric)
    assert float(got) == pytest.approx(_reference_loss(first, second, distance, symmetric), rel=1e-5)


def test_pairwise_distances_take_no_pairs_by_features_tensor_and_exact_positives(rng):
    """(N, N) memory: no op of the traced function outputs (N, N, D); no cancellation of |a|^2 + |b|^2 - 2 a.b
    for features far from 0 and, on the diagonal (positive pairs), close to each other."""
    from kernelzoo.zoo.sc.loss import pairwise_distances

    graph = tf.function(pairwise_distances).get_concrete_function(
        tf.TensorSpec((8, 64), tf.float32), tf.TensorSpec((8, 64), tf.float32)).graph
    assert max(len(output.shape) for op in graph.get_operations() for output in op.outputs) == 2
    first = 1000.0 + rng.normal(size=(6, 64))
    second = first + 0.01 * rng.normal(size=(6, 64))
    want = np.sum(np.square(first[:, None, :] - second[None, :, :]), axis=-1)
    got = pairwise_distances(tf.constant(first, tf.float32), tf.constant(second, tf.float32)).numpy()
    np.testing.assert_allclose(np.diag(got), np.diag(want), rtol=1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-3)  # float32 inputs near 1000; uncentred: off by about 10


@pytest.mark.parametrize("distance", ["squared", "euclidean"])
def test_loss_gradient_matches_finite_differences(distance, rng):
    first, second = rng.normal(size=(4, 3)) * 0.5, rng.normal(size=(4, 3)) * 0.5
    a, b = tf.Variable(first, dtype=tf.float32), tf.Variable(second, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = spatial_contrasting_loss(a, b, distance)
    grads = [g.numpy() for g in tape.gradient(loss, [a, b])]
    step = 1e-5
    for which, grad in enumerate(grads):
        numeric = np.zeros_like(grad)
        for index in np.ndindex(grad.shape):
            plus, minus = [first.copy(), second.copy()], [first.copy(), second.copy()]
            plus[which][index] += step
            minus[which][index] -= step
            difference = _reference_loss(*plus, distance, True) - _reference_loss(*minus, distance, True)
            numeric[index] = difference / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_patch_features_are_the_patch_cells(rng):
    maps = rng.normal(size=(3, 6, 5, 4)).astype("float32")
    positions = np.array([[0, 0], [2, 1], [3, 2]])
    mean = patch_features(tf.constant(maps), positions, (3, 2)).numpy()
    flat = patch_features(tf.constant(maps), positions, (3, 2), "flatten").numpy()
    for i, (r, c) in enumerate(positions):
        cells = maps[i, r:r + 3, c:c + 2]
        np.testing.assert_allclose(mean[i], cells.mean(axis=(0, 1)), rtol=1e-6)
        np.testing.assert_allclose(flat[i], cells.ravel(), rtol=1e-6)


@pytest.mark.parametrize("pooling, symmetric", [("mean", True), ("flatten", False)])
def test_feature_map_loss_is_eq4_between_the_two_patches_the_seed_draws(pooling, symmetric, rng):
    """Algorithm 1 on a map: each image's first and second patch at the positions drawn from the seed, pooled as
    asked, Eq. 4 (one-sided or symmetrised) between them."""
    maps = tf.constant(rng.normal(size=(6, 5, 4, 3)) * 0.5, tf.float32)
    seed = (2, 9)
    first, second = sample_patch_positions(6, positions_grid((5, 4), 2), seed)
    features = [patch_features(maps, positions, 2, pooling).numpy() for positions in (first, second)]
    got = spatial_contrasting_from_maps(maps, 2, seed, "euclidean", pooling, symmetric)
    assert float(got) == pytest.approx(_reference_loss(*features, "euclidean", symmetric), rel=1e-5)


def test_euclidean_loss_has_a_finite_gradient_where_two_patches_coincide():
    """The square root is not differentiable at 0: patches with the same features (a flat map) give no NaN."""
    features = tf.Variable(np.linspace(0.0, 1.0, 12, dtype="float32").reshape(4, 3))
    with tf.GradientTape() as tape:
        loss = spatial_contrasting_loss(features, features + 0.0, "euclidean")    # every positive at distance 0
    assert np.isfinite(float(loss)) and np.all(np.isfinite(tape.gradient(loss, features).numpy()))


def test_image_crops_through_the_backbone_match_a_direct_reference(rng):
    """sampling="image": the crops of each image at the sampled positions, the backbone run on them,
    each crop's map averaged whole, Eq. 4 (checked against numpy and the reference loss)."""
    images = rng.normal(size=(5, 9, 8, 2)).astype("float32")
    inputs = keras.Input((None, None, 2))
    backbone = keras.Model(inputs, keras.layers.AveragePooling2D(2)(inputs))   # any-size input, halves the crop
    seed = (5, 6)
    loss = spatial_contrasting_from_images(backbone, images, (4, 6), seed, "euclidean")
    first, second = sample_patch_positions(5, positions_grid((9, 8), (4, 6)), seed)

    def feature(image, row, col):
        crop = image[row:row + 4, col:col + 6]
        return crop.reshape(2, 2, 3, 2, 2).mean(axis=(1, 3)).mean(axis=(0, 1))   # 2x2 average pool, then the mean

    f1 = np.stack([feature(images[i], *first.numpy()[i]) for i in range(5)])
    f2 = np.stack([feature(images[i], *second.numpy()[i]) for i in range(5)])
    assert float(loss) == pytest.approx(_reference_loss(f1, f2, "euclidean", True), rel=1e-5)
    one_sided = spatial_contrasting_from_images(backbone, images, (4, 6), seed, "euclidean", symmetric=False)
    assert float(one_sided) == pytest.approx(_reference_loss(f1, f2, "euclidean", False), rel=1e-5)  # first: anchors
    flat = spatial_contrasting_from_images(backbone, images, (4, 6), seed, "squared", "flatten")
    direct = spatial_contrasting_loss(*(pool_map(backbone(crop_patches(images, p, (4, 6))), "flatten")
                                        for p in (first, second)))
    assert float(flat) == pytest.approx(float(direct), rel=1e-6)
    with pytest.raises(ValueError, match="images"):
        spatial_contrasting_from_images(backbone, images[0], (4, 6), seed)
    with pytest.raises(ValueError, match="pooling"):
        spatial_contrasting_from_images(backbone, images, (4, 6), seed, pooling="max")
    with pytest.raises(ValueError, match="patch_size"):
        spatial_contrasting_from_images(backbone, images, (9, 8), seed)        # one position only


def _toy(count=128, size=6, channels=4, seed=0):
    """Images whose cells share one image-specific feature under per-cell noise of the same size."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(count, 1, 1, channels))
    return (identity + rng.normal(size=(count, size, size, channels))).astype("float32")


def _toy_model():
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(8, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.1), name="proj")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="head")(x))


def test_loss_falls_on_a_toy_problem_where_patches_of_an_image_share_a_feature():
    keras.utils.set_random_seed(0)
    model = _toy_model()
    result = pretrain(model, "proj", _toy(), patch_size=3, epochs=6, batch_size=32, lr=0.01, verbose=0)
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < np.log(32) / 2, losses                      # far below chance (log of the batch)


def test_distort_colors_matches_numpy(rng):
    images = rng.uniform(0, 255, size=(3, 5, 4, 3)).astype("float32")
    factors = rng.uniform(0.5, 1.5, size=(3, 3))
    got = distort_colors(images, *factors.T).numpy()
    luma = np.array(LUMA)
    for image, (b, c, s), out in zip(images, factors, got):
        x = image * b
        mean = (x @ luma).mean()
        x = (x - mean) * c + mean
        grey = (x @ luma)[..., None]
        np.testing.assert_allclose(out, grey + (x - grey) * s, rtol=1e-4, atol=1e-3)


def test_distort_colors_greys_with_the_bt601_weights():
    """Saturation 0 leaves each pixel's ITU-R BT.601 grey, 0.299 R + 0.587 G + 0.114 B, in all three channels."""
    pixels = np.array([[[[200.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]]]], "float32")
    grey = distort_colors(pixels, [1.0], [1.0], [0.0]).numpy()[0, 0]
    np.testing.assert_allclose(grey, np.repeat([[59.8], [58.7], [11.4]], 3, axis=1), rtol=1e-5)


def test_color_jitter_draws_per_image(rng):
    images = np.repeat(rng.uniform(0, 255, size=(1, 5, 4, 3)), 1000, axis=0).astype("float32")
    out = jitter_colors(images, 0.5, (1, 2)).numpy()
    np.testing.assert_array_equal(out, jitter_colors(images, 0.5, (1, 2)).numpy())      # stateless
    assert not np.array_equal(out, jitter_colors(images, 0.5, (1, 3)).numpy())
    assert out.min() >= 0 and out.max() <= 255
    unchanged = np.all(out == images, axis=(1, 2, 3))
    grey = np.all(np.ptp(out, axis=-1) < 1e-3, axis=(1, 2))
    assert 0.12 < unchanged.mean() < 0.20 and 0.15 < grey.mean() < 0.25      # 0.2 * 0.8 = 0.16 and 0.2
    distorted = out[~unchanged & ~grey]
    assert len(np.unique(distorted.round(2), axis=0)) == len(distorted)      # factors drawn per image
    np.testing.assert_array_equal(jitter_colors(images[:3], 0.0, (1, 2)).numpy(), images[:3])
    with pytest.raises(ValueError, match="strength"):
        jitter_colors(images, 2.0, (1, 2))
    with pytest.raises(ValueError, match="images"):
        jitter_colors(images[..., :1], 0.5, (1, 2))


def test_image_sampling_trains_a_fixed_size_backbone_on_crops(tmp_path):
    """The toy images' cells share an image-specific feature: crops of 3x3 pixels, each through a backbone
    built for 6x6 images, learn to match; the run folder records the sampling."""
    keras.utils.set_random_seed(0)
    model = _toy_model()
    result = pretrain(model, "proj", _toy(), patch_size=3, epochs=6, batch_size=32, lr=0.01, sampling="image",
                      out_dir=str(tmp_path / "run"), verbose=0)
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < np.log(32) / 2, losses
    with open(tmp_path / "run" / "config.json", encoding="utf-8") as handle:
        assert '"sampling": "image"' in handle.read()
    assert model.predict(_toy(2), verbose=0).shape == (2, 8)          # the model keeps its own input
    trainer = SpatialContrastingTrainer(feature_layer(model, "proj"), 3, sampling="image", seed=4)
    assert trainer.map_shape == (3, 3, 8)
    inputs = keras.Input((None, None, 4))
    crops_net = keras.Model(inputs, model.get_layer("proj")(inputs))
    images = _toy(16)
    seed = _step_seed(4, 7)
    expected = spatial_contrasting_from_images(crops_net, images, 3, seed, training=False)
    assert float(trainer.sc_loss(images, 7, training=False)) == pytest.approx(float(expected), rel=1e-6)


def test_the_trainers_evaluation_runs_the_backbone_in_inference_mode():
    """test_step (Keras's evaluate) calls the backbone with training=False, down to the crops: a dropout that
    would zero 90 % of the pixels in training is the identity."""
    inputs = keras.Input((6, 6, 4))
    trainer = SpatialContrastingTrainer(keras.Model(inputs, keras.layers.Dropout(0.9)(inputs)), 3, sampling="image",
                                        seed=4)
    images = _toy(16)
    seed = _step_seed(4, 0)
    first, second = sample_patch_positions(16, positions_grid((6, 6), 3), seed)
    expected = spatial_contrasting_loss(*(pool_map(crop_patches(images, p, 3)) for p in (first, second)))
    assert float(trainer.test_step(images)["loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_the_logged_training_loss_is_the_sc_criterion_without_weight_decay():
    """PlateauDrop watches the logged loss: the SC criterion of the step, not the regularisation added to the
    gradient (an L2 of 100 would dominate it)."""
    inputs = keras.Input((6, 6, 4))
    conv = keras.layers.Conv2D(8, 1, kernel_regularizer=keras.regularizers.L2(100.0))
    trainer = SpatialContrastingTrainer(keras.Model(inputs, conv(inputs)), 3, seed=4)
    trainer.compile(keras.optimizers.SGD(0.0))
    images = _toy(16)
    expected = float(trainer.sc_loss(images, 0))
    assert float(trainer.backbone.losses[0]) > 10 * expected
    assert float(trainer.train_step(images)["loss"]) == pytest.approx(expected, rel=1e-6)


def test_color_jitter_distorts_each_crop_before_the_network(rng):
    images = rng.uniform(0, 255, size=(6, 8, 8, 3)).astype("float32")
    inputs = keras.Input((None, None, 3))
    identity = keras.Model(inputs, inputs)
    seed = tf.constant([3, 9], tf.int64)
    jittered = spatial_contrasting_from_images(identity, images, 4, seed, "euclidean", color_jitter=0.5)
    first, second = sample_patch_positions(6, positions_grid((8, 8), 4), seed)
    crops = tf.concat([crop_patches(images, first, 4), crop_patches(images, second, 4)], 0)
    crops = jitter_colors(crops, 0.5, tf.random.experimental.stateless_fold_in(seed, 1))
    features = pool_map(crops)
    assert float(jittered) == pytest.approx(float(spatial_contrasting_loss(features[:6], features[6:], "euclidean")),
                                            rel=1e-6)
    plain = spatial_contrasting_from_images(identity, images, 4, seed, "euclidean")
    assert float(plain) != pytest.approx(float(jittered), rel=1e-3)
    model = sc_cifar10()
    with pytest.raises(ValueError, match="color_jitter"):
        pretrain(model, "sc_features", np.zeros((4, 32, 32, 3), "uint8"), patch_size=2, color_jitter=0.5)
    recipe = SCRecipe()
    with pytest.raises(ValueError, match="sc_color_jitter"):
        recipe.hyperparameters(registry.info("sc_cifar10_4k"), sc_color_jitter=0.5, sc_sampling="features")
    hp = recipe.hyperparameters(registry.info("sc_cifar10_4k"), sc_color_jitter=0.5, sc_sampling="image")
    assert (hp["sc_color_jitter"], hp["sc_sampling"]) == (0.5, "image")
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    assert vars(parser.parse_args(["--sc-color-jitter", "0.5"]))["sc_color_jitter"] == 0.5


class _KillAtEpoch2(keras.callbacks.Callback):
    """A run killed as its third epoch starts."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def _pretrain_toy(folder, images=None, **kwargs):
    """The toy model after `pretrain` on `images` (64 toy images) into run folder `folder`: (model, result)."""
    keras.utils.set_random_seed(0)
    model = _toy_model()
    images = _toy(64) if images is None else images
    arguments = {"patch_size": 3, "epochs": 3, "batch_size": 16, "lr": 0.05, "patience": 1, **kwargs}
    result = pretrain(model, "proj", images, out_dir=str(folder), verbose=0, **arguments)
    return model, result


def _assert_same_weights(model, other):
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_pretrain_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    straight, result = _pretrain_toy(tmp_path / "a")
    assert [int(r["epoch"]) for r in result["history"]] == [0, 1, 2]
    assert {"model.keras", "log.csv", "config.json", "checkpoints"} <= set(os.listdir(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        _pretrain_toy(tmp_path / "b", callbacks=[_KillAtEpoch2()])
    with pytest.raises(ValueError, match="resume"):
        _pretrain_toy(tmp_path / "b")
    with open(tmp_path / "b" / "log.csv", "a", encoding="utf-8") as handle:
        handle.write("2,9.9,0.05\n")  # as a run killed between its log row and its checkpoint
    for changed in ({"seed": 7}, {"distance": "euclidean"}, {"lr": 0.5}):  # another run: refused, not continued
        with pytest.raises(ValueError, match=f"`resume`: .*hyperparameters.{next(iter(changed))} "):
            _pretrain_toy(tmp_path / "b", resume=True, **changed)
    resumed, again = _pretrain_toy(tmp_path / "b", resume=True)
    assert [int(r["epoch"]) for r in again["history"]] == [0, 1, 2] and again["history"][-1]["loss"] != 9.9
    _assert_same_weights(straight, resumed)


def test_pretrain_resumed_after_a_plateau_drop_keeps_the_dropped_rate_and_the_plateau_count(tmp_path):
    """Killed after the rate has dropped: the resumed run goes on at the dropped rate (the optimizer's) and drops
    again when the uninterrupted run did (PlateauDrop's count replayed from log.csv). On noise the loss cannot
    fall: the rate drops after every epoch from the second."""
    noise = np.random.default_rng(0).normal(size=(64, 6, 6, 4)).astype("float32")
    arguments = {"images": noise, "epochs": 4, "lr": 1e-3, "min_lr": 1e-9}
    straight, _ = _pretrain_toy(tmp_path / "a", **arguments)
    with pytest.raises(KeyboardInterrupt):
        _pretrain_toy(tmp_path / "b", callbacks=[_KillAtEpoch2()], **arguments)
    resumed, _ = _pretrain_toy(tmp_path / "b", resume=True, **arguments)
    rates = [[row["learning_rate"] for row in training.read_log(os.path.join(folder, training.LOG_FILE))]
             for folder in (tmp_path / "a", tmp_path / "b")]
    np.testing.assert_allclose(rates[0], [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-6)   # before the kill and after
    np.testing.assert_allclose(rates[1], rates[0], rtol=1e-6)
    _assert_same_weights(straight, resumed)


def test_pretrain_keeps_the_two_newest_optimizer_files_past_epoch_999(tmp_path):
    """Compared as numbers: as names, "sc-optimizer-1000.npz" < "sc-optimizer-999.npz" deleted the newest."""
    from kernelzoo.zoo.sc.pretraining import OPTIMIZER_FILE, _RunFolder

    model = _toy_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.trainable_variables)
    folder = _RunFolder(model, str(tmp_path), [], {})
    folder.set_model(model)
    for epoch in (997, 998, 999):
        folder.on_epoch_end(epoch, {"loss": 1.0})
    names = {name for name in os.listdir(tmp_path / "checkpoints") if name.startswith("sc-optimizer-")}
    assert names == {OPTIMIZER_FILE.format(epoch=epoch) for epoch in (999, 1000)}


def test_patch_positions_and_the_models_augmentation_draw_apart(monkeypatch):
    """The SC stage's patch positions of (seed, step) do not come from the random bits that RandomShiftFlip draws
    its crops with for the same (seed, call count) pair (the two counts advance together in the SC stage)."""
    import kernelzoo.zoo.sc.loss as loss_module

    inputs = keras.Input((6, 6, 4))
    x = RandomShiftFlip(shift=2, flip=False, seed=0, name="augment")(inputs)
    trainer = SpatialContrastingTrainer(keras.Model(inputs, keras.layers.Conv2D(8, 1)(x)), 2, seed=0)
    seeds = []
    monkeypatch.setattr(loss_module, "sample_patch_positions",
                        lambda count, grid, seed: seeds.append(seed) or sample_patch_positions(count, grid, seed))
    trainer.sc_loss(_toy(8), 3)
    augment = tf.random.experimental.stateless_split(tf.constant([0, 3], tf.int64), 3)[:2]
    assert not np.array_equal(tf.random.experimental.stateless_split(seeds[0], 2).numpy(), augment.numpy())


@pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly`")
def test_pretrain_draws_each_steps_patches_from_its_seed_and_step(monkeypatch):
    """Step k of `pretrain(seed=s)` samples its patches with (s, k) folded with SC_STREAM: new patches every step."""
    import kernelzoo.zoo.sc.loss as loss_module

    seeds = []
    monkeypatch.setattr(loss_module, "sample_patch_positions", lambda count, grid, seed: seeds.append(
        seed.numpy()) or sample_patch_positions(count, grid, seed))
    eager = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)  # the seeds as values, not symbolic tensors of a traced step
    try:
        pretrain(_toy_model(), "proj", _toy(8), patch_size=3, epochs=1, batch_size=4, seed=5, verbose=0)  # 2 steps
    finally:
        tf.config.run_functions_eagerly(eager)
    want = [_step_seed(5, step).numpy() for step in (0, 1)]
    np.testing.assert_array_equal(seeds, want)


def test_pretrain_refuses_a_backbone_of_unknown_spatial_size():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="`backbone` .* needs a fixed input size"):
        pretrain(model, "conv", np.zeros((8, 16, 16, 3), "float32"), patch_size=2, epochs=1, verbose=0)


def test_pretrain_errors_name_the_argument():
    model = _toy_model()
    images = _toy(8)
    with pytest.raises(ValueError, match="layer_name"):
        pretrain(model, "nope", images, patch_size=2)
    with pytest.raises(ValueError, match="layer_name"):
        pretrain(model, "head", images, patch_size=2)          # not a feature map
    with pytest.raises(ValueError, match="patch_size"):
        pretrain(model, "proj", images, patch_size=6)          # one position only
    with pytest.raises(ValueError, match="images"):
        pretrain(model, "proj", images[0], patch_size=2)
    with pytest.raises(ValueError, match="model"):
        pretrain("model", "proj", images, patch_size=2)
    with pytest.raises(ValueError, match="distance"):
        pretrain(model, "proj", images, patch_size=2, distance="cosine")
    with pytest.raises(ValueError, match="sampling"):
        pretrain(model, "proj", images, patch_size=2, sampling="crops")
    with pytest.raises(ValueError, match="patch_size"):
        pretrain(sc_cifar10(), "sc_features", np.zeros((4, 32, 32, 3), "uint8"), patch_size=3, sampling="image")


def test_spatial_contrasting_needs_two_images_per_batch():
    """With one image the softmax over the batch has one term: loss 0, no gradient, nothing trained. A batch size
    or an image set that would give only such batches is refused, naming the argument."""
    one = tf.zeros((1, 5))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2 images"):
        spatial_contrasting_loss(one, one)
    images = _toy(8)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 2, got 1"):
        pretrain(_toy_model(), "proj", images, patch_size=3, batch_size=1, verbose=0)
    with pytest.raises(ValueError, match="`images`: .*at least 2"):
        pretrain(_toy_model(), "proj", images[:1], patch_size=3, verbose=0)
    with pytest.raises(ValueError, match="`sc_batch_size` must be an int >= 2, got 1"):
        SCRecipe().hyperparameters(registry.info("sc_mnist"), sc_batch_size=1)
    trainer = SpatialContrastingTrainer(feature_layer(_toy_model(), "proj"), 3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2 images"):
        trainer.fit(images[:3], batch_size=2, verbose=0)       # a trailing batch of one image


def test_a_trailing_batch_of_one_image_does_not_count():
    """33 images in batches of 32: the epoch is the batch of 32 (the 33rd image, a different one each epoch, waits
    for the next); its loss is not averaged with the 0 of a one-image batch."""
    losses = []
    for count in (32, 33):
        keras.utils.set_random_seed(0)
        result = pretrain(_toy_model(), "proj", _toy(count), patch_size=3, epochs=1, batch_size=32, lr=1e-4,
                          verbose=0)
        losses.append(result["history"][0]["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=0.1), losses


def test_min_lr_and_min_delta_errors_name_the_argument():
    for bad in (-1.0, "x", float("nan")):
        with pytest.raises(ValueError, match="`min_lr`"):
            pretrain(_toy_model(), "proj", _toy(8), patch_size=3, min_lr=bad, verbose=0)
        with pytest.raises(ValueError, match="`min_lr`"):
            PlateauDrop(min_lr=bad)
        with pytest.raises(ValueError, match="`min_delta`"):
            PlateauDrop(min_delta=bad)
        with pytest.raises(ValueError, match="`min_lr`"):
            SCRecipe().hyperparameters(registry.info("sc_mnist"), min_lr=bad)


def test_plateau_drop_divides_by_ten_and_replays_its_history():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    losses = [5.0, 4.0, 4.0, 3.999, 4.5, 3.0, 3.0, 3.0]
    callback = PlateauDrop(patience=2)
    callback.set_model(model)
    rates = []
    for epoch, loss in enumerate(losses):
        logs = {"loss": loss}
        callback.on_epoch_end(epoch, logs)
        rates.append(logs["learning_rate"])
    np.testing.assert_allclose(rates, [0.1] * 4 + [0.01] * 4, rtol=1e-6)        # the rate each epoch ran with
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.001)  # dropped after epochs 4 and 8
    replayed = PlateauDrop(patience=2, history=[{"epoch": e, "loss": v} for e, v in enumerate(losses[:6])])
    assert (replayed.best, replayed.wait) == (3.0, 0)
    assert (callback.best, callback.wait) == (3.0, 0)


def test_plateau_drop_stops_at_min_lr():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    callback = PlateauDrop(patience=1, min_lr=0.05)
    callback.set_model(model)
    for epoch in range(3):
        callback.on_epoch_end(epoch, {"loss": 1.0})                   # a plateau from the second epoch: 0.1 -> 0.05
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)


# ----------------------------------------------------------------------------- data protocol


def _pool(count=50_000, classes=10, seed=0):
    labels = np.random.default_rng(seed).integers(0, classes, count)
    return np.arange(count, dtype=np.int64).reshape(count, 1, 1, 1), labels


def test_cifar10_4k_labels_are_400_per_class_and_disjoint_from_validation():
    """Bug 3 of the public reimplementation: validation images taken from the labelled training images."""
    x, y = _pool()
    data = semi_supervised((x, y), None, "pool", labels_per_class=400, label_seed=2017)
    assert np.bincount(data.train[1]).tolist() == [400] * 10 and len(data.unlabelled) == 50_000
    recipe = SCRecipe()
    hp = recipe.hyperparameters(registry.info("sc_cifar10_4k"))
    held = recipe.validation_split(data, hp, recipe.options(holdout=5000, validate_only=True), seed=7)
    assert len(held.val[0]) == 5000 and held.test is None
    assert not set(held.validation) & set(held.labelled)
    np.testing.assert_array_equal(held.labelled, data.labelled)        # the final run's 4,000 labels
    np.testing.assert_array_equal(held.train[0].ravel(), data.train[0].ravel())
    assert not set(held.validation) & set(held.unlabelled) and len(held.unlabelled) == 45_000
    np.testing.assert_array_equal(held.val[0].ravel(), held.validation)
    assert len(sc_images(held)) == 45_000
    evaluated = recipe.held_out(data, 5000, seed=7)  # what `kernelzoo eval --holdout 5000 --seed 7` measures
    np.testing.assert_array_equal(evaluated.val[0], held.val[0])
    again = semi_supervised((x, y), None, "pool", labels_per_class=400, label_seed=2017)
    np.testing.assert_array_equal(again.labelled, data.labelled)       # the recorded seed fixes the subset
    other = semi_supervised((x, y), None, "pool", labels_per_class=400, label_seed=1)
    assert not np.array_equal(other.labelled, data.labelled)


def test_an_all_labelled_pool_holds_out_labelled_images():
    x, y = _pool(600)
    data = carve_validation(semi_supervised((x, y), None, "pool"), 100, seed=0)
    assert len(data.train[0]) == 500 and len(data.unlabelled) == 500
    assert not set(data.validation) & set(data.labelled) and not set(data.validation) & set(data.unlabelled)


def test_labelled_subset_errors_name_labels_per_class():
    with pytest.raises(ValueError, match="labels_per_class"):
        labelled_subset(np.array([0, 0, 1]), 2, 0)
    with pytest.raises(ValueError, match="holdout"):
        carve_validation(semi_supervised(_pool(10), None, "pool"), 10, 0)


def test_a_class_with_just_labels_per_class_images_is_all_labelled():
    np.testing.assert_array_equal(labelled_subset(np.repeat(np.arange(3), 5), 5, 0), np.arange(15))


def test_holding_out_leaves_at_least_one_labelled_image():
    """24 labelled images, 6 others: a holdout of 24 must come from the labelled ones and would take them all."""
    x, y = np.arange(30).reshape(30, 1, 1, 1), np.arange(30) % 3
    data = semi_supervised((x, y), None, "pool", labels_per_class=8)
    with pytest.raises(ValueError, match="`holdout`=24 leaves no labelled training image"):
        carve_validation(data, 24, 0)
    assert len(carve_validation(data, 23, 0).labelled) == 1


def test_the_validation_images_are_drawn_with_the_runs_seed():
    data = semi_supervised(_pool(600), None, "pool")
    first, again, other = (carve_validation(data, 100, seed).validation for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_plain_data_is_an_all_labelled_pool_that_keeps_its_validation_images():
    x, y = _pool(20)
    plain = Data(train=(x[:15], y[:15]), test=None, source="pool", val=(x[15:], y[15:]))
    data = as_sc_data(plain)
    assert data.val is plain.val and len(data.labelled) == 15 and data.label_seed is None  # no subset was drawn


def test_load_data_draws_the_presets_labelled_subset(monkeypatch):
    """sc_cifar10_4k: 400 labels per class drawn with its label_seed 2017 (the card's subset), SC on the whole
    pool; sc_mnist: every image labelled."""
    from types import SimpleNamespace

    import kernelzoo.zoo.data as data_module

    x, y = _pool(5000)
    monkeypatch.setattr(data_module, "load_images", lambda *args, **kwargs: SimpleNamespace(
        train=(x, y), test=(x[:10], y[:10]), source="pool", class_names=None))
    recipe = SCRecipe()
    data = recipe.load_data(registry.info("sc_cifar10_4k"), verbose=0)
    assert data.label_seed == 2017 and len(data.unlabelled) == 5000
    np.testing.assert_array_equal(data.labelled, labelled_subset(y, 400, 2017))
    everything = recipe.load_data(registry.info("sc_mnist"), verbose=0)
    assert len(everything.labelled) == 5000 and everything.label_seed is None


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("builder, shape, sc_map", [(sc_mnist, (28, 28, 1), (7, 7, 64)),
                                                    (sc_cifar10, (32, 32, 3), (8, 8, 192)),
                                                    (sc_stl10, (96, 96, 3), (24, 24, 192))])
def test_table4_networks(builder, shape, sc_map):
    model = builder()
    assert tuple(model.input_shape[1:]) == shape and model.output_shape == (None, 10)
    assert tuple(model.get_layer("sc_features").output.shape[1:]) == sc_map
    assert takes_raw_pixels(model) and model.get_layer("logits").dtype_policy.name == "float32"
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == {sc_mnist: 5, sc_cifar10: 9, sc_stl10: 11}[builder]


@pytest.mark.parametrize("builder, head_map, flip, fill", [(sc_mnist, 5, False, "constant"),
                                                           (sc_cifar10, 6, True, "reflect")])
def test_networks_keep_their_documented_choices(builder, head_map, flip, fill):
    """Module docstring: digits are shifted over their zero background and never mirrored; the first conv after
    the SC layer is "valid"; no conv bias before a BN; Torch7's BN momentum; LeakyReLU slope 0.1."""
    model = builder()
    augment = model.get_layer("augment")
    assert (augment.shift, augment.flip, augment.fill) == (2, flip, fill)
    assert tuple(model.get_layer("conv3_1").output.shape[1:3]) == (head_map, head_map)
    names = {layer.name for layer in model.layers}
    assert all(not layer.use_bias for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D) and f"{layer.name}_bn" in names)
    assert {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    assert {layer.negative_slope for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)} <= {0.1}


def test_cifar10_network_is_about_0_4_gmac():
    model = sc_cifar10()
    macs = sum(int(np.prod(layer.output.shape[1:])) * int(np.prod(layer.kernel.shape[:-1]))
               for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert 0.38e9 < macs < 0.42e9, macs


@pytest.mark.parametrize("builder", [sc_mnist, sc_cifar10, sc_stl10])
def test_weight_decay_is_torch_sgd_decay_on_every_kernel(builder):
    """The gradient of the model's L2 terms is weight_decay * w for each conv / dense kernel, none elsewhere."""
    assert builder().losses == []
    model = builder(weight_decay=1e-3)
    kernels = [layer.kernel for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    grads = tape.gradient(penalty, model.trainable_variables)
    assert len(model.losses) == len(kernels)
    for variable, grad in zip(model.trainable_variables, grads):
        if any(variable is kernel for kernel in kernels):
            np.testing.assert_allclose(grad, 1e-3 * variable.numpy(), rtol=1e-5, atol=1e-12, err_msg=variable.path)
        else:
            assert grad is None, variable.path


def test_weight_decay_acts_in_the_sc_stage():
    """One SC step with plain SGD: decay moves each kernel by exactly -lr * weight_decay * w more."""
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    after = {}
    for decay in (0.0, 0.5):
        keras.utils.set_random_seed(0)
        model = sc_cifar10(widths=(4, 8), head_width=8, block_depth=1, weight_decay=decay)
        before = {layer.name: layer.kernel.numpy() for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
        pretrain(model, "sc_features", images, patch_size=4, epochs=1, batch_size=8, lr=0.1, momentum=0.0, verbose=0)
        after[decay] = {name: model.get_layer(name).kernel.numpy() for name in before}
    for name in ("conv1_1", "conv2_1"):  # below the SC layer: trained by the SC stage
        np.testing.assert_allclose(after[0.5][name] - after[0.0][name], -0.1 * 0.5 * before[name], rtol=1e-3,
                                   atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(after[0.5]["conv3_1"], before["conv3_1"])  # above it: untouched


def _glorot_uniform_norm(kernel):
    """The expected norm of a Glorot-uniform kernel of this shape (variance 2 / (fan_in + fan_out))."""
    fans = np.prod(kernel.shape[:-2]) * (kernel.shape[-2] + kernel.shape[-1])
    return np.sqrt(kernel.size * 2.0 / fans)


def test_rescaling_the_batch_normalized_kernels_changes_no_output():
    keras.utils.set_random_seed(0)
    model = sc_cifar10(widths=(4, 8), head_width=8, block_depth=1, shift=0, flip=False)  # no random augmentation
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype("float32")
    model(images, training=True)  # moving statistics away from their initial values
    names = [layer.name for layer in model.layers]
    for layer in model.layers:  # as SGD leaves them: kernels far above their initial scale
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(layer.kernel * 30.0)
            if f"{layer.name}_bn" in names:
                norm = model.get_layer(f"{layer.name}_bn")
                norm.moving_mean.assign(norm.moving_mean * 30.0)
                norm.moving_variance.assign(norm.moving_variance * 900.0)
    kernels = {layer.name: layer.kernel.numpy() for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    before = [model(images, training=True).numpy(), model(images, training=False).numpy()]  # (training updates
    factors = models.rescale_batch_normalized_kernels(model)                                  # the statistics)
    assert sorted(factors) == ["conv1_1", "conv2_1"]              # below the SC layer, each feeding a BN
    for name, factor in factors.items():
        kernel = model.get_layer(name).kernel.numpy()
        np.testing.assert_allclose(np.linalg.norm(kernel), _glorot_uniform_norm(kernel), rtol=1e-5)
        np.testing.assert_allclose(kernel, kernels[name] * factor, rtol=1e-6)
    np.testing.assert_array_equal(model.get_layer("conv3_1").kernel.numpy(), kernels["conv3_1"])
    after_inference = model(images, training=False).numpy()
    after = [model(images, training=True).numpy(), after_inference]
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(a).max())
    with pytest.raises(ValueError, match="up_to"):
        models.rescale_batch_normalized_kernels(model, "nope")


def test_sc_rescale_option_rescales_after_the_sc_stage():
    run = tiny_runs()[0]
    recipe = SCRecipe()
    preset = registry.info(run.preset)
    hp = recipe.hyperparameters(preset, **{**run.hp, "sc_epochs": 1, "sc_rescale": True})
    keras.utils.set_random_seed(0)
    model = recipe.build(preset, run.data, run.overrides, hp)
    report = recipe.initialise(model, run.data, hp, recipe.options())
    assert sorted(report["spatial_contrasting"]["rescaled"]) == ["conv1_1", "conv2_1"]
    kernel = model.get_layer("conv2_1").kernel.numpy()
    np.testing.assert_allclose(np.linalg.norm(kernel), _glorot_uniform_norm(kernel), rtol=1e-5)
    assert "rescaled" not in recipe.initialise(model, run.data, dict(hp, sc_rescale=False),
                                               recipe.options())["spatial_contrasting"]


def test_the_sc_stage_runs_the_recipes_criterion_and_schedule_on_the_sc_images(monkeypatch):
    """`initialise` hands `pretrain` the recipe's SC settings (not the fine-tuning's lr) and the SC images (the
    pool less the validation images, not the labelled subset); sc_epochs 0 (the *_noinit presets) runs no SC."""
    import kernelzoo.zoo.sc.recipe as recipe_module

    calls = []
    monkeypatch.setattr(recipe_module, "pretrain", lambda model, layer, images, **kwargs: calls.append(
        (layer, images, kwargs)) or {"history": [{"loss": 1.0}]})
    recipe = SCRecipe()
    hp = recipe.hyperparameters(registry.info("sc_cifar10_4k"), sc_rescale=False, momentum=0.5, plateau_patience=5)
    data = carve_validation(tiny_runs()[0].data, 6, 0)
    report = recipe.initialise(None, data, hp, recipe.options(), seed=3)
    (layer, images, kwargs), = calls
    assert layer == "sc_features" and report["spatial_contrasting"]["images"] == 90
    np.testing.assert_array_equal(images, sc_images(data))
    assert {key: kwargs[key] for key in ("patch_size", "distance", "pooling", "symmetric", "sampling", "color_jitter",
                                         "epochs", "batch_size", "lr", "momentum", "patience", "min_lr", "seed")} == {
        "patch_size": 18, "distance": "euclidean", "pooling": "mean", "symmetric": True, "sampling": "image",
        "color_jitter": 0.5, "epochs": 20, "batch_size": 128, "lr": 0.1, "momentum": 0.5, "patience": 5,
        "min_lr": 1e-5, "seed": 3}
    assert recipe.initialise(None, data, dict(hp, sc_epochs=0), recipe.options())["spatial_contrasting"] is None
    assert len(calls) == 1


def test_a_resumed_sc_stage_refuses_other_settings(tmp_path, monkeypatch):
    """Killed after its SC stage, before fine-tuning: `--resume` continues the SC run folder only with the
    run's own settings (its config.json holds them, not only the SC arguments)."""
    run = tiny_runs()[0]
    recipe = SCRecipe()
    preset = registry.info(run.preset)
    hp = recipe.hyperparameters(preset, **{**run.hp, "sc_epochs": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(SCRecipe, "compile", killed)  # the fine-tuning's start
        with pytest.raises(KeyboardInterrupt):
            recipe.train(preset, run.data, tmp_path, overrides=run.overrides, hp=hp, verbose=0)
    with pytest.raises(ValueError, match="`resume`: .*seed 0 -> 1"):
        recipe.train(preset, run.data, tmp_path, overrides=run.overrides, hp=hp, seed=1, resume=True, verbose=0,
                     max_steps_per_epoch=1)
    with pytest.raises(ValueError, match="`resume`: .*hyperparameters.sc_lr"):
        recipe.train(preset, run.data, tmp_path, overrides=run.overrides, hp=dict(hp, sc_lr=0.5), resume=True,
                     verbose=0, max_steps_per_epoch=1)


def test_builder_errors_name_the_argument():
    with pytest.raises(ValueError, match="widths"):
        sc_cifar10(widths=(96,))
    with pytest.raises(ValueError, match="activation"):
        sc_mnist(activation="tanh")
    with pytest.raises(ValueError, match="mean"):
        sc_cifar10(mean=(1.0,))
    with pytest.raises(ValueError, match="weight_decay"):
        sc_mnist(weight_decay=-1e-4)
    with pytest.raises(ValueError, match="dropout"):
        sc_stl10(dropout=1.0)                                            # Keras's Dropout takes 1: all zeros


def test_augmentation_shifts_and_flips_in_training_only():
    images = np.random.default_rng(0).integers(0, 256, (16, 10, 10, 1)).astype("float32")
    layer = RandomShiftFlip(shift=2, flip=True, fill="constant", seed=3)
    np.testing.assert_array_equal(layer(images, training=False), images)
    out = layer(images, training=True).numpy()
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for image, result in zip(padded, out):
        candidates = [image[r:r + 10, c:c + 10] for r in range(5) for c in range(5)]
        candidates += [np.flip(candidate, axis=1) for candidate in candidates]
        assert any(np.array_equal(result, candidate) for candidate in candidates)
    assert int(layer.calls.numpy()) == 1
    assert not np.array_equal(out, layer(images, training=True).numpy())   # the next call draws anew
    again = RandomShiftFlip(shift=2, flip=True, fill="constant", seed=3)
    np.testing.assert_array_equal(again(images, training=True), out)       # a function of (seed, calls)


# ----------------------------------------------------------------------------- precision


def test_mixed_precision_model_is_saved_as_float32():
    """The float32 copy of a mixed_bfloat16 SC network has its very weights, so its logits are the bfloat16 one's
    up to bfloat16 rounding (0.8 % of their range here)."""
    keras.utils.set_random_seed(1)
    with precision_policy("mixed_bfloat16"):
        model = sc_mnist(widths=(4, 4, 4), input_shape=(12, 12, 1))
    assert model.get_layer("conv2_1").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    copy = float32_copy(model)
    assert all(layer.dtype_policy.name == "float32" for layer in copy.layers)
    for copied, weight in zip(copy.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, weight)
    images = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 1)).astype("float32")
    logits = np.asarray(copy(images))
    assert np.ptp(logits) > 0.1
    np.testing.assert_allclose(logits, np.asarray(model(images), "float32"), rtol=0, atol=0.03 * np.ptp(logits))
    with pytest.raises(ValueError, match="precision"):
        SCRecipe().hyperparameters(registry.info("sc_mnist"), precision="float16")


# ----------------------------------------------------------------------------- STL-10


def _write_stl10(folder, counts=(20, 10, 30)):
    """A small STL-10 copy in the standard binary form: 3x96x96 channels stored column-major, labels 1..10."""
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    images = {}
    for split, count in zip(("train", "test", "unlabeled"), counts):
        x = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        x.transpose(0, 3, 2, 1).tofile(os.path.join(folder, f"{split}_X.bin"))
        images[split] = x
        if split != "unlabeled":
            (np.arange(count) % 10 + 1).astype(np.uint8).tofile(os.path.join(folder, f"{split}_y.bin"))
    with open(os.path.join(folder, "class_names.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(registry.info("sc_stl10").class_names) + "\n")
    return images


def test_stl10_binary_copy_loads_through_the_recipe(tmp_path):
    images = _write_stl10(tmp_path / "stl10" / "stl10_binary")
    recipe = SCRecipe()
    data = recipe.load_data(registry.info("sc_stl10"), str(tmp_path), options=recipe.options())
    np.testing.assert_array_equal(data.train[0], images["train"])
    np.testing.assert_array_equal(data.train[1], np.arange(20) % 10)
    np.testing.assert_array_equal(data.test[0], images["test"])
    assert data.class_names[2] == "car" and "stl10 binary" in data.source
    unlabelled = sc_images(data)
    assert unlabelled.shape == (50, 96, 96, 3)
    np.testing.assert_array_equal(unlabelled[20:], images["unlabeled"])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="data_dir"):
        recipe.load_data(registry.info("sc_stl10"), str(tmp_path / "empty"))


def test_stl10_tfds_path_on_generated_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from kernelzoo.zoo.data import stl10
    monkeypatch.delenv("KERNELZOO_DATA_DIR", raising=False)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        copy = stl10.load_stl10()
        unlabelled = copy.unlabelled()
    assert copy.train[0].shape == (6, 96, 96, 3) and copy.train[0].dtype == np.uint8
    assert copy.test[1].shape == (6,) and len(copy.class_names) == 10 and copy.source == "tfds:stl10"
    assert unlabelled.shape == (6, 96, 96, 3)


def test_family_options_reach_the_hyperparameters():
    recipe = SCRecipe()
    preset = registry.info("sc_cifar10_4k")
    hp = recipe.hyperparameters(preset)
    assert (hp["schedule"], hp["sc_patch_size"], hp["sc_distance"], hp["sc_rescale"], hp["sc_sampling"],
            hp["sc_color_jitter"]) == ("plateau", 18, "euclidean", True, "image", 0.5)
    # the labelled subset is data (load_data), not a hyper-parameter a grid could change without effect
    assert "labels_per_class" not in hp and "label_seed" not in hp
    for key in ("labels_per_class", "label_seed"):
        with pytest.raises(ValueError, match=f"`{key}` draws the labelled subset"):
            recipe.hyperparameters(preset, **{key: 20})
    assert recipe.hyperparameters(registry.info("sc_mnist"))["sc_distance"] == "squared"
    assert recipe.hyperparameters(registry.info("sc_cifar10_4k_noinit"))["sc_epochs"] == 0
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    parsed = lambda *flags: {k: v for k, v in vars(parser.parse_args(flags)).items() if k in hp}  # noqa: E731
    hp = recipe.hyperparameters(preset, **parsed("--sc-epochs", "2", "--sc-distance", "squared", "--precision",
                                                 "float32", "--sc-sampling", "features", "--sc-patch-size", "4",
                                                 "--sc-color-jitter", "0"))
    assert (hp["sc_epochs"], hp["sc_distance"], hp["precision"], hp["sc_sampling"], hp["sc_patch_size"]) == \
        (2, "squared", "float32", "features", 4)
    with pytest.raises(ValueError, match="sc_sampling"):
        recipe.hyperparameters(preset, sc_sampling="crops")
    for flags, rescale in (((), True), (("--no-sc-rescale",), False), (("--sc-rescale",), True)):
        assert recipe.hyperparameters(preset, **parsed(*flags))["sc_rescale"] is rescale
    mnist = registry.info("sc_mnist")
    assert recipe.hyperparameters(mnist, **parsed("--sc-rescale"))["sc_rescale"] is True
    assert recipe.hyperparameters(mnist)["sc_rescale"] is False


def test_presets_train_with_the_papers_learning_rates_and_mnist_patches():
    """Paper 002 Sec. 5: SC at lr 0.1, fine-tuning at lr 0.01; MNIST: 6x6 patches of the 7x7 map."""
    recipe = SCRecipe()
    for name in ("sc_mnist", "sc_cifar10_4k", "sc_stl10"):
        hp = recipe.hyperparameters(registry.info(name))
        assert (hp["sc_lr"], hp["lr"]) == (0.1, 0.01), name
    assert recipe.hyperparameters(registry.info("sc_mnist"))["sc_patch_size"] == 6


def test_loss_reads_bfloat16_maps_in_float32(rng):
    maps = tf.cast(rng.normal(size=(6, 5, 5, 3)), tf.bfloat16)
    loss = spatial_contrasting_from_maps(maps, 2, (0, 1), "euclidean")
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))


@pytest.mark.parametrize("batch_norm,op", [("fused", "FusedBatchNormGradV3"), ("keras", "Conv2D")])
def test_bench_sc_times_a_mixed_precision_sc_step(batch_norm, op):
    from kernelzoo.zoo.sc.bench import measure
    result = measure("mnist", "mixed_bfloat16", "sc", batch_size=8, steps=1, warmup=1, overrides={"widths": (4, 4, 4)},
                     profile=True, batch_norm=batch_norm)
    assert result["ms"] > 0 and result["images_per_s"] > 0 and result["steps"] == 1
    names = [name for name, _ in result["profile"]]
    assert result["profile"][0][1] > 0 and any(op in name for name in names)
    assert any("FusedBatchNorm" in name for name in names) == (batch_norm == "fused")


def test_bench_sc_times_the_presets_sampling():
    """sc_cifar10_4k samples 18-pixel image crops: read as map cells they would not fit its 8x8 map."""
    from kernelzoo.zoo.sc.bench import measure
    result = measure("cifar10", "float32", "sc", batch_size=4, steps=1, warmup=1,
                     overrides={"widths": (4, 8), "head_width": 4, "block_depth": 1})
    assert result["ms"] > 0 and result["steps"] == 1


@pytest.mark.parametrize("builder", ["sc_cifar10", "sc_mnist", "sc_stl10"])
def test_networks_use_fused_batch_norm(builder):
    from kernelzoo.layers import FusedBatchNormalization
    from kernelzoo.zoo.sc import models
    from kernelzoo.zoo.sc.bench import with_keras_batch_norm
    model = getattr(models, builder)()
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is FusedBatchNormalization for layer in norms)
    baseline = with_keras_batch_norm(model)
    assert [layer.name for layer in baseline.layers] == [layer.name for layer in model.layers]
    assert [type(layer) for layer in baseline.layers if layer.name in {n.name for n in norms}] == (
        [keras.layers.BatchNormalization] * len(norms))


@pytest.mark.parametrize("option", ["--batch-norm", "--stages", "--networks"])
def test_bench_sc_names_a_bad_option(option):
    from kernelzoo.zoo.sc.bench import main
    with pytest.raises(ValueError, match=option):
        main([option, "fast"])
