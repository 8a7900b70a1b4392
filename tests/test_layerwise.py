"""The layerwise family (paper 003; issue 16): the generative model, its synthetic digits, the k-means
seeding, the layers and builder, the two-level analysis (Sec. 4) and the algorithm (Sec. 5.1) on
generated data. The family contract (training, resume, save/load, ONNX) is tests/test_families.py."""
import json
import os
import shutil

import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.linear_classifier import accuracy, fit_logistic
from kernelzoo.zoo.ckn.kmeans import _seeds, spherical_kmeans
from kernelzoo.zoo.data.synthetic import stripes
from kernelzoo.zoo.layerwise import algorithm, theory
from kernelzoo.zoo.layerwise.generative import (DIGITS, GLYPHS, STROKES, HierarchicalModel, random_model,
                                                synthetic_digits, to_uint8)
from kernelzoo.zoo.layerwise.layers import CentroidConv2D, PerImageStandardization
from kernelzoo.zoo.layerwise.models import layerwise_cnn, tf_tutorial_cnn, with_cluster_dtype
from kernelzoo.zoo.recipe import Data, dataset_name


# ----------------------------------------------------------------------------- the generative model


def test_any_depth_patch_and_set_sizes_sample_with_the_right_shapes():
    model = random_model((3, 4, 5), patch_sizes=(2, 3, 2), set_sizes=(2, 3, 4), semantic_shape=(2, 3), channels=2)
    assert (model.depth, model.num_classes, model.patch_sizes, model.set_sizes) == (3, (3, 4, 5), (2, 3, 2), (2, 3, 4))
    assert model.image_shape == (24, 36, 2)
    drawn = model.sample(7, seed=1)
    assert drawn.images.shape == (7, 24, 36, 2) and drawn.images.dtype == np.float32
    assert [z.shape for z in drawn.latents] == [(7, 2, 3), (7, 4, 6), (7, 12, 18)]
    for level, (latent, choice) in enumerate(zip(drawn.latents, drawn.choices)):
        assert latent.min() >= 0 and latent.max() < model.num_classes[level]
        assert choice.min() >= 0 and choice.max() < model.set_sizes[level]
    # Each pixel of X(i) is its class's chosen patch in X(i + 1).
    rule = model.rules[0]
    expected = rule[drawn.latents[0], drawn.choices[0]].transpose(0, 1, 3, 2, 4).reshape(7, 4, 6)
    np.testing.assert_array_equal(drawn.latents[1], expected)


def test_patch_sets_are_disjoint_and_overlapping_sets_are_refused():
    model = random_model((4, 3), patch_sizes=2, set_sizes=3, seed=5)
    rows = model.rules[0].reshape(12, -1)
    assert len(np.unique(rows, axis=0)) == 12
    pixels = model.pixels.reshape(9, -1)
    assert len(np.unique(pixels, axis=0)) == 9
    overlapping = model.rules[0].copy()
    overlapping[1, 0] = overlapping[0, 0]
    with pytest.raises(ValueError, match="disjoint"):
        HierarchicalModel(model.semantic, (overlapping,), model.pixels)
    with pytest.raises(ValueError, match="orthonormal"):
        random_model((4, 5), patch_sizes=2, set_sizes=2, pixels="orthonormal")


def test_sampling_is_seeded_and_the_tf_data_source_draws_the_same_batches():
    model = synthetic_digits()
    a, b, c = model.sample(20, seed=3), model.sample(20, seed=3), model.sample(20, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    batches = list(model.dataset(batch_size=5, seed=9, batches=2).as_numpy_iterator())
    assert len(batches) == 2
    for index, (images, labels) in enumerate(batches):
        drawn = model.sample(5, seed=(9, index))
        assert images.dtype == np.uint8 and images.shape == (5, 60, 36, 1)
        np.testing.assert_array_equal(images, to_uint8(drawn.images))
        np.testing.assert_array_equal(labels, drawn.labels)


def test_the_label_enters_only_through_x0():
    model = random_model((3, 3), patch_sizes=2, set_sizes=4, semantic_shape=(2, 2), seed=2)
    drawn = model.sample(50, seed=11)
    images, latents, _ = model.refine(drawn.latents[0], seed=11)   # no label given
    np.testing.assert_array_equal(images, drawn.images)
    for given, again in zip(drawn.latents, latents):
        np.testing.assert_array_equal(given, again)
    # Given X(0), every pixel picks each of the k patches of its class with probability 1 / k: with 4,000
    # draws the frequencies are within 5 standard errors (sqrt(p (1 - p) / n) = 0.0068) of 1/4.
    _, _, choices = model.refine(np.repeat(model.semantic[0][:1], 4000, axis=0), seed=1)
    frequency = np.stack([(choices[0] == j).mean(axis=0) for j in range(4)])
    assert np.abs(frequency - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / 4000)


def test_the_label_and_the_refinement_draw_from_different_streams():
    """Sharing one stream made the i-th label the i-th level-0 patch choice // 2 (a label leak into X(1))."""
    drawn = synthetic_digits().sample(2000, seed=5)
    agreement = np.mean(drawn.labels == drawn.choices[0].ravel()[:2000] // 2)
    assert abs(agreement - 0.5) < 0.1


def test_labeled_frequency_is_the_mean_of_y_times_the_class_indicator():
    model = synthetic_digits()
    drawn = model.sample(8000, seed=0)
    signs = 2.0 * drawn.labels - 1.0
    for level in (0, 1):
        exact = model.labeled_frequency(level)
        indicator = np.eye(model.num_classes[level])[drawn.latents[level]]     # (n, h, w, C)
        estimate = np.moveaxis(np.tensordot(signs, indicator, axes=1) / len(signs), -1, 0)
        # |y I| <= 1: the standard error of each entry is at most 1 / sqrt(8,000) = 0.011.
        assert np.abs(exact - estimate).max() < 5 / np.sqrt(8000)


def test_synthetic_digits_reconstruction():
    model = synthetic_digits()
    assert model.num_classes == (len(GLYPHS), len(STROKES)) == (9, 6)   # the paper's 9 and 6 classes
    assert model.set_sizes == (4, 4) and model.image_shape == (60, 36, 1)
    assert model.label_names == ("even", "odd") and [len(s) for s in model.semantic] == [5, 5]
    assert len(DIGITS) == 10
    # Every stroke class's four textures average to the flat 0.5 patch: E[X | X(1)], hence E[X | y], is flat.
    np.testing.assert_array_equal(model.pixels.mean(axis=1), np.full((6, 4, 4, 1), 0.5))
    # G0 is linearly separable (Sec. 3.1): a (w, b) with y (<w, one-hot X(0)> + b) >= 1 for the ten digits
    # exists (a feasible linear program).
    from scipy.optimize import linprog
    onehot = np.eye(9)[np.concatenate(model.semantic)].reshape(10, -1)
    signs = np.repeat([-1.0, 1.0], 5)[:, None]
    program = linprog(np.zeros(onehot.shape[1] + 1), A_ub=-signs * np.hstack([onehot, np.ones((10, 1))]),
                      b_ub=-np.ones(10), bounds=(None, None))
    assert program.status == 0
    # The analysis's constants are positive at both levels: distinct, non-zero labeled frequency maps.
    for level in (0, 1):
        theta, xi = model.separation(level)
        assert theta > 0.5 and xi > 0.05


def test_separation_is_the_smallest_angle_and_the_smallest_norm_of_the_labeled_frequencies():
    model = random_model((5, 4), patch_sizes=2, set_sizes=2, semantic_shape=(3, 3), templates=3, seed=4)
    for level in (0, 1):
        flat = model.labeled_frequency(level).reshape(model.num_classes[level], -1)
        norms = np.linalg.norm(flat, axis=1)
        angles = [np.arccos(np.clip(flat[i] @ flat[j] / (norms[i] * norms[j]), -1, 1))
                  for i in range(len(flat)) for j in range(i + 1, len(flat))]
        assert len(set(np.round(norms, 6))) > 1 and len(set(np.round(angles, 6))) > 1
        assert model.separation(level) == pytest.approx((min(angles), norms.min()))


def test_level_shapes_and_the_last_semantic_level():
    model = random_model((3, 4, 5), patch_sizes=(2, 3, 2), set_sizes=2, semantic_shape=(2, 3))
    assert [model.level_shape(level) for level in range(4)] == [(2, 3), (4, 6), (12, 18), (24, 36)]
    assert model.labeled_frequency(2).shape == (5, 12, 18)
    with pytest.raises(ValueError, match="`level`"):
        model.labeled_frequency(3)                                      # X(3) is the image, not a semantic level


def test_to_uint8_rounds_and_clips():
    np.testing.assert_array_equal(to_uint8([-0.1, 0.0, 0.999, 1.0, 1.5, 0.2]), [0, 0, 255, 255, 255, 51])


def test_the_model_refuses_classes_out_of_range_repeated_pixel_patches_and_one_label():
    model = random_model((3, 2), patch_sizes=2, set_sizes=2, semantic_shape=(2, 2), seed=1)
    rules = model.rules[0].copy()
    rules[0, 0, 0, 0] = 2                                               # level 1 has classes 0..1
    with pytest.raises(ValueError, match=r"rules\[0\]"):
        HierarchicalModel(model.semantic, (rules,), model.pixels)
    semantic = (model.semantic[0].copy(), model.semantic[1])
    semantic[0][0, 0, 0] = 3                                            # level 0 has classes 0..2
    with pytest.raises(ValueError, match=r"semantic\[0\]"):
        HierarchicalModel(semantic, model.rules, model.pixels)
    pixels = model.pixels.copy()
    pixels[1, 0] = pixels[0, 1]
    with pytest.raises(ValueError, match="disjoint"):
        HierarchicalModel(model.semantic, model.rules, pixels)
    with pytest.raises(ValueError, match="num_labels"):
        random_model((3, 2), num_labels=1)


def test_samples_command_draws_the_digits_png(tmp_path, capsys):
    from PIL import Image
    from kernelzoo.cli import main

    out = tmp_path / "figures" / "digits.png"  # its folder is made
    assert main(["viz", "layerwise-samples", "--out", str(out), "--count", "4", "--seed", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:   # a real figure: the level-by-level row above the grid of examples
        assert image.format == "PNG" and image.width > 400 and image.height > 300
        assert len(set(image.convert("L").getdata())) > 10


# ----------------------------------------------------------------------------- k-means++


def test_kmeans_plus_plus_never_picks_a_row_or_a_copy_twice():
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(6, 5))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rows = np.repeat(directions, [50, 3, 80, 1, 20, 9], axis=0).astype("float32")   # copies, unequal counts
    for seed in range(10):
        for candidates in (1, 4):
            seeds = _seeds(rows, 6, "k-means++", np.random.default_rng(seed), False, candidates)
            assert len(np.unique(np.round(seeds, 5), axis=0)) == 6, (seed, candidates)
    # More seeds than distinct rows: rows (indices) are still never drawn twice.
    seeds = _seeds(rows[:5], 5, "k-means++", np.random.default_rng(1), False)
    assert len(np.unique(np.round(seeds, 5), axis=0)) == 1 and len(seeds) == 5


def test_spherical_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 20))
    truth = np.repeat(np.arange(12), rng.integers(5, 200, size=12))    # unequal sizes
    rows = centres[truth] + 0.05 * rng.normal(size=(len(truth), 20))
    centroids, report = spherical_kmeans(rows, 12, candidates=4, tol=0.0, seed=0)
    found = np.argmax((rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ centroids.T, axis=1)
    assert algorithm.cluster_purity(truth, found) == (1.0, 1.0)
    assert report["steps"] >= 1


def test_cluster_purity():
    assert algorithm.cluster_purity([0, 0, 1, 1], [5, 5, 7, 7]) == (1.0, 1.0)
    assert algorithm.cluster_purity([0, 0, 1, 1], [5, 5, 5, 5]) == (0.5, 1.0)   # one cluster mixes
    assert algorithm.cluster_purity([0, 0, 0, 0], [1, 1, 2, 2]) == (1.0, 0.5)   # one label is split
    with pytest.raises(ValueError):
        algorithm.cluster_purity([0, 1], [0])


# ----------------------------------------------------------------------------- layers and builder


def test_centroid_convolution_maps_a_patch_of_a_cluster_to_its_one_hot():
    """Sec. 5.1 step 2 on the synthetic digits' pixel level: centroids = the 24 textures, cosine
    responses, b = -0.9. Two different textures share at most 6 of their 8 lit pixels (cosine <= 0.75),
    so only a patch's own texture clears the bias: the output is 0.1 times its one-hot."""
    model = synthetic_digits()
    layer = CentroidConv2D(24, 4, strides=4, bias=-0.9, normalize_patches=True)
    layer.build((None, 60, 36, 1))
    layer.set_centroids(model.pixels.reshape(24, -1) / np.sqrt(8.0))
    drawn = model.sample(10, seed=2)
    out = keras.ops.convert_to_numpy(layer(drawn.images))
    ids = drawn.patch_ids(1, 4)
    np.testing.assert_allclose(out, 0.1 * np.eye(24)[ids], atol=1e-5)
    np.testing.assert_allclose(layer.centroids(), model.pixels.reshape(24, -1) / np.sqrt(8.0), rtol=1e-6)


def test_centroid_convolution_is_a_frozen_convolution_with_a_fixed_bias():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    layer = CentroidConv2D(5, 3, bias=-0.3)
    reference = keras.layers.Conv2D(5, 3, padding="same", activation="relu",
                                    bias_initializer=keras.initializers.Constant(-0.3))
    reference.build(x.shape)
    layer.build(x.shape)
    layer.set_centroids(reference.kernel.numpy())
    np.testing.assert_allclose(layer(x), reference(x), rtol=1e-5, atol=1e-5)
    assert not layer.trainable_weights
    layer.trainable = True
    assert not layer.trainable_weights                  # the centroids stay frozen (fine-tuning freeze="none")
    restored = CentroidConv2D.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="centroids"):
        layer.set_centroids(np.zeros((4, 27)))


def test_per_image_standardization_is_tensorflows():
    import tensorflow as tf
    x = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 3)).astype("float32")
    x[1] = 7.0                                          # a flat image: std below 1 / sqrt(N)
    np.testing.assert_allclose(PerImageStandardization()(x), tf.image.per_image_standardization(x), atol=1e-5)


def test_builder_and_presets():
    jl = registry.create("layerwise_cifar10_jl_fc")
    assert jl.output_shape == (None, 10) and jl.get_layer("features").output.shape[-1] == 8 * 8 * 184
    assert algorithm.trained_blocks(jl) == [] and not jl.get_layer("block1_projection").trainable_weights
    assert [layer.name for layer in jl.layers[-3:]] == ["fc1", "fc2", "logits"]
    linear = layerwise_cnn(clusters=(16, 24), embeddings=(4, 6), head="linear")
    assert algorithm.trained_blocks(linear) == [1, 2] and linear.layers[-1].name == "logits"
    assert type(linear.get_layer("preprocess")).__name__ == "PerImageStandardization"
    digits = registry.create("layerwise_synthetic_digits")
    assert [algorithm.block_layer(digits, 2, part) for part in ("pool", "embed")] == [None, None]
    assert digits.get_layer("features").output.shape[-1] == 5 * 3 * 36
    presets = {p.name: p for p in registry.family_presets("layerwise")}
    assert presets["layerwise_cifar10_fc"].config["clusters"] == (1377, 3534)
    assert presets["layerwise_cifar10_linear"].recipe["kmeans_patches"] == 32_124
    assert presets["layerwise_cifar10_jl_fc"].recipe["block_epochs"] == 0
    assert presets["layerwise_cifar10_jl_fc"].recipe["epochs"] == 26  # held out (the card)
    assert presets["layerwise_cifar10_fc"].recipe["epochs"] == 2 * 5 + 256
    assert jl.get_layer("feature_standardization") is not None
    with pytest.raises(ValueError, match="embeddings"):
        layerwise_cnn(clusters=(4, 5), embeddings=(3,))
    with pytest.raises(ValueError, match="head"):
        layerwise_cnn(clusters=(4,), embeddings=(3,), head="svm")


def test_centroid_convolution_config_holds_every_constructor_argument():
    """Each non-default argument survives get_config / from_config (a saved model keeps its cosine responses)."""
    layer = CentroidConv2D(3, (2, 3), strides=2, padding="valid", bias=0.25, normalize_patches=True)
    restored = CentroidConv2D.from_config(layer.get_config())
    assert ((restored.filters, restored.kernel_size, restored.strides, restored.padding, restored.bias,
             restored.normalize_patches) == (3, (2, 3), (2, 2), "valid", 0.25, True))


def test_per_image_standardization_floors_a_small_std_at_one_over_sqrt_n():
    """A near-flat image (std 0.036 < 1 / sqrt(192) = 0.072) is divided by the floor, as TensorFlow does."""
    import tensorflow as tf
    x = np.zeros((1, 8, 8, 3), "float32")
    x[0, 0, 0, 0] = 0.5
    np.testing.assert_allclose(PerImageStandardization()(x), tf.image.per_image_standardization(x), atol=1e-5)


def test_builder_hands_every_per_block_setting_to_its_layer():
    keras.utils.set_random_seed(0)
    model = layerwise_cnn(clusters=(40, 5), embeddings=(30, 2), patch_sizes=(2, 3), strides=(2, 1), pool_sizes=(1, 2),
                          bias=(-0.5, 0.25), normalize_patches=True, embedding_bias=False, embedding_init_std=1e-3,
                          preprocessing="rescale", head="linear", input_shape=(12, 12, 3), num_classes=3)
    clusters = [model.get_layer(f"block{i}_cluster") for i in (1, 2)]
    assert [(c.kernel_size, c.strides, c.bias, c.normalize_patches) for c in clusters] == [
        ((2, 2), (2, 2), -0.5, True), ((3, 3), (1, 1), 0.25, True)]
    assert algorithm.block_layer(model, 1, "pool") is None and model.get_layer("block2_pool").pool_size == (2, 2)
    assert model.get_layer("features").output.shape[-1] == 3 * 3 * 2
    embed = model.get_layer("block1_embed")
    assert not embed.use_bias and 0 < np.abs(embed.kernel.numpy()).max() < 1e-2
    assert model.get_layer("preprocess").scale == pytest.approx(1 / 255)
    jl = layerwise_cnn(clusters=(50,), embeddings=(64,), projection="random", head="linear", input_shape=(4, 4, 3))
    projection = jl.get_layer("block1_projection")
    assert projection.bias is None and not projection.trainable_weights
    assert np.std(projection.kernel.numpy()) == pytest.approx(64 ** -0.5, rel=0.1)


def test_fc_head_is_relu_between_its_dense_layers():
    from kernelzoo.zoo.layerwise.models import head_layers
    layers = head_layers("fc", 3, fc_units=(4, 2))
    assert [(layer.name, layer.activation.__name__) for layer in layers] == [("fc1", "relu"), ("fc2", "relu"),
                                                                            ("logits", "linear")]


def test_bfloat16_centroid_convolutions_and_their_float32_copy():
    """cluster_dtype="bfloat16" convolves in bfloat16 (features within its rounding of the float32 copy's, yet not
    equal: a policy named but not applied fails); with_cluster_dtype gives the float32 network ONNX export needs."""
    keras.utils.set_random_seed(0)
    model = layerwise_cnn(clusters=(6, 8), embeddings=(4, 5), fc_units=(8, 4), bias=0.5, input_shape=(12, 12, 3),
                          cluster_dtype="bfloat16")
    assert model.get_layer("block2_cluster").dtype_policy.name == "mixed_bfloat16"
    plain = with_cluster_dtype(model, "float32")
    assert plain.get_layer("block2_cluster").dtype_policy.name == "float32"
    x = np.random.default_rng(0).integers(0, 256, size=(4, 12, 12, 3)).astype("float32")
    # The features (what the bfloat16 convolutions feed), not the logits: a random head's ReLUs can all be off.
    low, high = (keras.Model(m.input, m.get_layer("features").output).predict(x, verbose=0) for m in (model, plain))
    error, scale = np.abs(low - high).max(), np.abs(high).max()
    assert scale > 0 and low.dtype == np.float32
    # bfloat16 (8-bit mantissa) does run: its rounding, ~0.4 % of the largest feature here, far above float32's
    assert 1e-4 * scale < error <= 0.05 * scale, (error, scale)


# ----------------------------------------------------------------------------- Sec. 4: the two-level analysis


def test_gradient_descent_on_the_two_layer_cnn_recovers_the_latent_classes():
    """Theorem 1 on a two-level model with orthonormal patches, with the theorem's width n and step count T:
    patches of one class embed within delta of each other, patches of different classes more than delta
    apart. With the population gradient the within-class distances keep their initial size (<= delta /
    sqrt(2): K_0's columns have norm delta / (2 sqrt(n)), Corollary 1); the failure probability of the
    between-class part is 5 % over W (fixed seed here)."""
    model = random_model((5,), patch_sizes=4, set_sizes=3, semantic_shape=(3, 3), pixels="orthonormal", seed=3)
    theta, xi = model.separation(0)
    delta, lr = 0.1, 0.5
    n, steps = theory.theorem1_schedule(theta, xi, 5, 3, delta, lr, fail=0.05)
    patches, classes = model.pixels.reshape(15, -1), np.repeat(np.arange(5), 3)
    kernel, _ = theory.two_layer_gd(theory.correlation(model), n, lr=lr, steps=steps, delta=delta, seed=0)
    within, between = theory.embedding_gaps(kernel, patches, classes)
    assert within < delta / np.sqrt(2) + 1e-9 and between > delta
    # The same on a sample of 20,000 images: the empirical E[y X] is within ~0.005 of the population's
    # (entries of y X are bounded by the patch norms, 1), so the within-class distances grow by
    # lr T |noise| ||W|| but stay an order of magnitude below the between-class ones.
    drawn = model.sample(20_000, seed=1)
    sampled = theory.correlation_of_sample(drawn.images, drawn.labels, 4)
    kernel, _ = theory.two_layer_gd(sampled, n, lr=lr, steps=steps, delta=delta, seed=0)
    within, between = theory.embedding_gaps(kernel, patches, classes)
    assert between > 5 * within


def test_embedding_gaps_need_a_pair_of_one_class_and_two_classes():
    kernel, patches = np.eye(3), np.eye(3)
    assert theory.embedding_gaps(kernel, patches, [0, 0, 1]) == pytest.approx((np.sqrt(2), np.sqrt(2)))
    for classes in ([0, 1, 2], [1, 1, 1], [0, 1]):  # no pair of one class, one class, not one per patch
        with pytest.raises(ValueError, match="`classes`"):
            theory.embedding_gaps(kernel, patches, classes)


def test_theorem1_schedule_names_a_bad_setting():
    """Each setting by its name: a zero lr or fail probability divided by zero, a probability of 1 or more, a
    negative delta or an empty set gave a meaningless schedule, no classes a math domain error."""
    good = {"theta": 0.5, "xi": 0.2, "num_classes": 5, "set_size": 3, "delta": 0.1, "lr": 0.5, "fail": 0.05}
    theory.theorem1_schedule(**good)
    for name, value in (("num_classes", 0), ("set_size", 0), ("set_size", 1.5), ("delta", -1.0), ("lr", 0.0),
                        ("fail", 0.0), ("fail", 1.0), ("fail", 2.0), ("theta", 0.0), ("xi", -1.0)):
        with pytest.raises(ValueError, match=f"`{name}`"):
            theory.theorem1_schedule(**dict(good, **{name: value}))


def test_correlation_is_the_expectation_of_y_times_the_patch_columns():
    """E[y X] exact (sum_c F_c mean(S_c)) against its estimate on 20,000 images (entries within 5 standard errors)."""
    model = random_model((4,), patch_sizes=2, set_sizes=3, semantic_shape=(2, 2), templates=2, seed=6)
    exact = theory.correlation(model)
    drawn = model.sample(20_000, seed=2)
    sampled = theory.correlation_of_sample(drawn.images, drawn.labels, 2)
    assert exact.shape == sampled.shape == (4, 4) and np.abs(exact).max() > 0.1
    assert np.abs(exact - sampled).max() < 5 / np.sqrt(20_000)
    with pytest.raises(ValueError, match="depth"):
        theory.correlation(random_model((3, 2)))


def test_patch_columns_orders_patches_row_major_and_their_values_row_column_channel():
    images = np.arange(32, dtype=np.float32).reshape(1, 4, 4, 2)
    columns = theory.patch_columns(images, 2)
    assert columns.shape == (1, 8, 4)
    np.testing.assert_array_equal(columns[0, :, 0], images[0, :2, :2].ravel())
    np.testing.assert_array_equal(columns[0, :, 1], images[0, :2, 2:].ravel())
    np.testing.assert_array_equal(columns[0, :, 2], images[0, 2:, :2].ravel())
    with pytest.raises(ValueError, match="do not split"):
        theory.patch_columns(np.zeros((1, 5, 4)), 2)


def test_two_layer_gd_starts_on_the_sphere_and_steps_along_the_correlation():
    corr = np.random.default_rng(0).normal(size=(6, 4))
    start, w = theory.two_layer_gd(corr, 5, steps=0, delta=0.4, seed=3)
    np.testing.assert_allclose(np.linalg.norm(start, axis=0), 0.4 / (2 * np.sqrt(5)))
    after, same_w = theory.two_layer_gd(corr, 5, lr=0.1, steps=3, delta=0.4, seed=3)
    np.testing.assert_array_equal(w, same_w)
    np.testing.assert_allclose(after - start, 0.1 * 3 * corr @ w)


def test_theorem1_schedule_values():
    """n = floor(pi / (0.23 theta) log(|C0|^2 / fail)) + 1 = floor(169.8) + 1,
    T = floor((delta + 2) k / (lr xi)) + 1 = 30 + 1."""
    assert theory.theorem1_schedule(0.5, 0.25, 5, 3, 0.5, 1.0, fail=0.05) == (170, 31)


# ----------------------------------------------------------------------------- Sec. 5.1: the algorithm


def test_generated_synthetic_digits_name_their_dataset():
    """Runs on them record it in config.json, as runs on read images do (a resume on other data is refused)."""
    preset = registry.info("layerwise_synthetic_digits")
    recipe = registry.recipe(preset)
    data = recipe.load_data(preset, options=recipe.options(limit_train=10), verbose=0)
    assert data.dataset == dataset_name(preset) == "synthetic_digits" and len(data.train[0]) == 10
    too_many = recipe.hyperparameters(preset)["train_size"] + 1  # refused, not capped
    with pytest.raises(ValueError, match="`--limit-train` must be an int in"):
        recipe.load_data(preset, options=recipe.options(limit_train=too_many), verbose=0)


def test_synthetic_digits_are_the_synthetic_presets_own_dataset():
    """--dataset synthetic_digits with another preset: a ValueError naming --dataset (it was a KeyError
    'train_size': the generated sizes are the synthetic preset's recipe's)."""
    preset = registry.info("layerwise_cifar10_jl_fc")
    with pytest.raises(ValueError, match="`--dataset` 'synthetic_digits'.*layerwise_synthetic_digits"):
        registry.recipe(preset).load_data(preset, dataset="synthetic_digits", verbose=0)


def test_sample_patches_are_the_aligned_patches_at_distinct_positions_and_count():
    """Block 1 of the synthetic preset (4 x 4 patches, stride 4) sees only the planted textures; asking for every
    position of one image gives each of its 135 patches once; `count` is met exactly (ceil per image, then cut)."""
    digits = synthetic_digits()
    model = registry.create("layerwise_synthetic_digits")
    drawn = digits.sample(3, seed=0)
    images = to_uint8(drawn.images)
    textures = digits.pixels.reshape(24, -1)
    rows = algorithm.sample_patches(model, 1, images[:1], 135, seed=0)
    truth = theory.patch_columns(drawn.images[:1], 4)[0].T                       # (135, 16) in (row, col) order
    assert sorted(map(tuple, np.round(rows, 4))) == sorted(map(tuple, np.round(truth, 4)))
    for count in (10, 11):
        rows = algorithm.sample_patches(model, 1, images, count, seed=1)
        assert rows.shape == (count, 16)
        assert (np.abs(rows[:, None] - textures[None]).max(axis=-1) < 1e-6).any(axis=1).all()
    np.testing.assert_array_equal(algorithm.sample_patches(model, 1, images, 11, seed=1), rows)


def test_cluster_block_reports_the_default_candidates():
    """The default k-means++ candidates are scikit-learn's 2 + log k (24 clusters: 5)."""
    digits = synthetic_digits()
    model = registry.create("layerwise_synthetic_digits")
    images = to_uint8(digits.sample(20, seed=0).images)
    report = algorithm.cluster_block(model, 1, images, patches=600, max_iter=3)
    assert report["candidates"] == 2 + int(np.log(24)) == 5 and report["clusters"] == 24
    assert report["patches"] == 600 and report["dims"] == 16


def _two_block_model():
    keras.utils.set_random_seed(0)
    return layerwise_cnn(clusters=(4, 5), embeddings=(3, 3), pool_sizes=1, fc_units=(4, 3), input_shape=(6, 6, 3),
                         num_classes=3)


def test_block_trainer_trains_only_its_block_and_release_undoes_it():
    model = _two_block_model()
    trainer = algorithm.block_trainer(model, 2, 3, seed=0)
    names = sorted(w.path for w in trainer.trainable_weights)
    assert names == sorted(w.path for w in model.get_layer("block2_embed").trainable_weights
                           + trainer.get_layer("block2_head").trainable_weights)
    assert not model.get_layer("block1_embed").trainable
    assert not any(model.get_layer(name).trainable for name in ("fc1", "fc2", "logits"))
    algorithm.release(model)
    assert all(model.get_layer(name).trainable for name in ("block1_embed", "block2_embed", "fc1", "fc2", "logits"))


def test_block_trainer_heads_are_seeded_by_seed_and_block():
    """A resumed run draws the same head (same seed and block); another block's head is drawn afresh."""
    model = _two_block_model()
    heads = [algorithm.block_trainer(model, block, 3, seed=seed).get_layer(f"block{block}_head").kernel.numpy()
             for block, seed in ((1, 0), (1, 0), (2, 0), (1, 1))]
    assert heads[0].shape == heads[2].shape
    np.testing.assert_array_equal(heads[0], heads[1])
    assert not np.array_equal(heads[0], heads[2]) and not np.array_equal(heads[0], heads[3])


def test_block_count_refuses_a_network_trainable_below_its_features():
    assert algorithm.block_count(tf_tutorial_cnn(filters=(2, 2), fc_units=(4, 3), train_conv=False,
                                                 input_shape=(8, 8, 3))) == 0
    with pytest.raises(ValueError, match="block1_cluster"):
        algorithm.block_count(tf_tutorial_cnn(filters=(2, 2), fc_units=(4, 3), input_shape=(8, 8, 3)))


def test_copy_weights_copies_every_layer_by_name():
    source, target = _two_block_model(), _two_block_model()
    source.get_layer("block1_cluster").set_centroids(np.ones((4, 27)))
    algorithm.copy_weights(source, target)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_stages_skip_a_block_without_epochs_and_leave_the_classifier_at_least_one():
    from kernelzoo.zoo.layerwise.recipe import LayerwiseRecipe, Stage
    recipe, model = LayerwiseRecipe(), _two_block_model()
    assert recipe.stages(model, {"epochs": 6, "block_epochs": [2, 0]}) == [Stage(1, 1, 0, 2), Stage(3, None, 2, 6)]
    assert recipe.stages(model, {"epochs": 5, "block_epochs": 2})[-1] == Stage(3, None, 4, 5)
    for hp, match in (({"epochs": 4, "block_epochs": 2}, "must exceed 4"),
                      ({"epochs": 9, "block_epochs": [2, 2, 2]}, "one per trained block")):
        with pytest.raises(ValueError, match=match):
            recipe.stages(model, hp)


def test_each_block_clusters_with_its_own_seed(tmp_path, monkeypatch):
    """The k-means of block b in a run of seed s draws with seed 1000 s + b (and is saved to kmeans/)."""
    from kernelzoo.zoo.layerwise.recipe import LayerwiseRecipe
    seeds = []
    monkeypatch.setattr(algorithm, "cluster_block", lambda *args, seed, **kwargs: seeds.append(seed) or {})
    model = _two_block_model()
    hp = {"kmeans_patches": 50, "kmeans_iterations": 2}
    for block in (1, 2):
        LayerwiseRecipe()._cluster(model, block, np.zeros((2, 6, 6, 3)), hp, str(tmp_path), 3, 0)
    assert seeds == [3001, 3002] and (tmp_path / "kmeans" / "block2.npy").exists()


def test_synthetic_test_digits_are_not_the_training_digits():
    preset = registry.info("layerwise_synthetic_digits")
    recipe = registry.recipe(preset)
    data = recipe.load_data(preset, options=recipe.options(limit_train=2000), verbose=0)
    assert len(data.train[0]) == len(data.test[0]) == 2000                 # drawn from different seeds
    assert not np.array_equal(data.train[0], data.test[0])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Algorithm 1 on 1,200 synthetic digits (the preset, at a smaller budget), measured on 500 more."""
    model = synthetic_digits()
    train, test = model.sample(1200, seed=(0, 0)), model.sample(500, seed=(0, 1))
    data = Data(train=(to_uint8(train.images), train.labels), test=(to_uint8(test.images), test.labels),
                source="synthetic digits", class_names=model.label_names)
    preset = registry.info("layerwise_synthetic_digits")
    recipe = registry.recipe(preset)
    hp = recipe.hyperparameters(preset, epochs=6, block_epochs=3, batch_size=32, block_lr=3e-3, kmeans_patches=6000)
    out = tmp_path_factory.mktemp("digits") / "run"
    return recipe.train(preset, data, str(out), hp=hp, verbose=0, tensorboard=False), out, test


def test_layerwise_algorithm_recovers_the_planted_patches_of_the_synthetic_digits(digits_run):
    """Cluster purity against the planted patch identities (generative.Sample.patch_ids).

    Block 1 clusters the 4 x 4 pixel patches: the 24 textures are distinct, the k-means++ seeds never
    repeat a texture (copies have D^2 = 0) and the 24 seeds are then the 24 textures: exact. Block 2
    clusters 3 x 3 patches of the trained Conv1x1's embeddings into the 36 glyph manifestations. Lemma 8
    recovers them exactly when manifestations of one stroke class embed within 1/s of each other;
    Adam on 1,200 images leaves some spread (on 4,000 images, the preset's, seed 0 gives 1.0 / 1.0,
    seeds 1-3 >= 0.98 / 0.95), so a few manifestations of one glyph may share a cluster (measured
    >= 0.978 / 0.929 over 4 seeds at this budget; bounds 0.95 / 0.9). What the classifier needs holds
    exactly: no cluster mixes two glyphs (purity against the C0 classes is 1)."""
    result, _, test = digits_run
    model = result["model"]
    x = to_uint8(test.images)
    assert algorithm.cluster_purity(test.patch_ids(1, 4), algorithm.assignments(model, 1, x)) == (1.0, 1.0)
    found = algorithm.assignments(model, 2, x)
    purity, inverse = algorithm.cluster_purity(test.patch_ids(0, 4), found)
    assert purity >= 0.95 and inverse >= 0.9
    assert algorithm.cluster_purity(test.latents[0], found)[0] == 1.0
    # The block's convolution + ReLU(b = -0.9) gives 0.1 x the one-hot of the patch's cluster.
    cluster = model.get_layer("block1_cluster")
    out = keras.Model(model.input, cluster.output).predict(x[:20], verbose=0)
    np.testing.assert_allclose(out, 0.1 * np.eye(24)[algorithm.assignments(model, 1, x[:20])], atol=1e-5)


def test_the_network_classifies_the_synthetic_digits_and_a_linear_classifier_on_pixels_does_not(digits_run):
    """The network: near-perfect (a linear classifier on the one-hot glyph manifestations, which
    are linearly separable by Lemma 1 since G0 is). A logistic regression on the raw pixels: at chance,
    as designed: every pixel has the same mean under both labels, so no linear function of the pixels
    has a mean that depends on the label; held-out accuracy measured 0.51 (1,200 or 10,000 training
    images, any L2), bound 0.65 (4.7 standard errors of a coin on 500 images above 0.55)."""
    result, _, test = digits_run
    assert result["metrics"]["test_accuracy"] >= 0.98
    train = synthetic_digits().sample(1200, seed=(0, 0))          # the run's training images
    kernel, bias, _ = fit_logistic(train.images.reshape(1200, -1), train.labels, 2, 1.0, max_iter=200)
    assert accuracy(test.images.reshape(len(test.images), -1), test.labels, kernel, bias) <= 0.65


def test_the_run_folder_records_the_stages(digits_run):
    result, out, _ = digits_run
    rows = result["history"]
    assert [int(row["stage"]) for row in rows] == [1, 1, 1, 3, 3, 3]    # block 1, then the classifier
    assert not (out / "features").exists()                               # the feature cache is removed
    report = json.loads((out / "kmeans" / "block2.json").read_text())
    assert report["clusters"] == 36 and report["patches"] == 6000 and report["candidates"] == 5
    state = training.read_state(str(out))
    assert state["epoch"] == 6 and state["clustered"] == [1, 2]
    assert [name for name in os.listdir(out / "checkpoints") if name.startswith("stage-")] == ["stage-006.keras"]


def test_validate_only_and_the_jl_variant(tmp_path):
    """Clustering+JL: no block is trained, every epoch is the classifier's; --validate-only reports the
    held-out figures of its last epoch and never measures the test split."""
    preset = registry.info("layerwise_cifar10_jl_fc")
    recipe = registry.recipe(preset)
    data = Data(train=stripes(96, size=12), test=stripes(30, size=12, seed=1), source="stripes",
                class_names=("h", "v", "flat"))
    hp = recipe.hyperparameters(preset, epochs=2, batch_size=16, lr=1e-2, kmeans_patches=500, kmeans_iterations=3)
    result = recipe.train(preset, data, str(tmp_path), overrides={"clusters": (6, 8), "embeddings": (4, 5),
                                                                  "fc_units": (8, 4)},
                          hp=hp, options=recipe.options(holdout=24, validate_only=True), verbose=0, tensorboard=False)
    assert set(result["metrics"]) == {"val_accuracy", "val_loss", "val_examples"}
    assert result["metrics"]["val_examples"] == 24
    assert not (tmp_path / training.METRICS_FILE).exists()
    assert [int(row["stage"]) for row in result["history"]] == [3, 3]
    assert all("val_accuracy" in row for row in result["history"])
    with pytest.raises(ValueError, match="epochs must exceed"):
        recipe.stages(registry.create("layerwise_cifar10_fc"), dict(hp, epochs=10, block_epochs=5))


def test_feature_standardization_is_fitted_to_the_training_features_and_survives_a_resume(tmp_path, monkeypatch):
    """standardize_features=true: the head sees the training features standardised (the statistics fitted once,
    at the classifier stage's start); a run killed inside the classifier stage resumes to the same weights, and
    the saved model standardises as the trained one (Normalization's statistics are restored, not re-fitted)."""
    preset = registry.info("layerwise_cifar10_jl_fc")
    recipe = registry.recipe(preset)
    data = Data(train=stripes(64, size=12), test=stripes(16, size=12, seed=1), source="stripes",
                class_names=("h", "v", "flat"))
    overrides = {"clusters": (6, 8), "embeddings": (4, 5), "fc_units": (8, 4), "bias": 0.5,
                 "standardize_features": True}
    hp = recipe.hyperparameters(preset, epochs=3, batch_size=16, lr=1e-2, kmeans_patches=400, kmeans_iterations=3)
    hp["keep_features"] = True

    def run(folder, epochs, resume=False):
        return recipe.train(preset, data, str(folder), overrides=overrides, hp=dict(hp, epochs=epochs),
                            options=recipe.options(), resume=resume, verbose=0, tensorboard=False)

    whole = run(tmp_path / "whole", 3)
    model = keras.models.load_model(whole["model_path"], compile=False)
    features = np.load(tmp_path / "whole" / "features" / "train-64.npy")
    standardized = keras.Model(model.input, model.get_layer("feature_standardization").output).predict(
        data.train[0], verbose=0)
    assert features.std() > 2  # the raw responses, far from unit scale
    np.testing.assert_allclose(standardized.mean(0), 0, atol=1e-4)
    live = features.std(0) > 1e-3
    np.testing.assert_allclose(standardized.std(0)[live], 1, atol=1e-3)
    run(tmp_path / "cut", 2)
    with monkeypatch.context() as patch:  # a re-fit to the same features would end the same: it must not run at all
        patch.setattr(algorithm, "adapt_feature_standardization",
                      lambda *args, **kwargs: pytest.fail("the resume re-fitted the feature standardisation"))
        resumed = run(tmp_path / "cut", 3, resume=True)
    again = keras.models.load_model(resumed["model_path"], compile=False)
    np.testing.assert_allclose(again.predict(data.test[0], verbose=0), model.predict(data.test[0], verbose=0),
                               rtol=1e-5, atol=1e-5)
    # measured in memory after the resume, on the statistics copied from the checkpoint
    assert resumed["metrics"]["test_loss"] == pytest.approx(whole["metrics"]["test_loss"], rel=1e-4)
    from kernelzoo.export import to_onnx, verify_artifact
    report = verify_artifact(model, to_onnx(model, str(tmp_path / "model.onnx")), images=data.test[0])
    assert report["ok_float32"], report
    with pytest.raises(ValueError, match="standardize_features"):
        layerwise_cnn(clusters=(4,), embeddings=(3,), standardize_features="sometimes")


def test_block_lr_reaches_the_blocks_from_the_command_line(monkeypatch, tmp_path):
    """`kernelzoo train ... --block-lr X` sets the blocks' lr (the classifier keeps --lr)."""
    from kernelzoo import cli
    from kernelzoo.zoo.layerwise import recipe as layerwise_recipe
    from kernelzoo.zoo.recipe import Data

    seen = {}
    monkeypatch.setattr(layerwise_recipe.LayerwiseRecipe, "load_data", lambda self, *a, **k: Data(None, None, "stub"))
    monkeypatch.setattr(layerwise_recipe.LayerwiseRecipe, "train",
                        lambda self, preset, data, out, hp=None, **k: seen.update(hp) or {"model_path": "-"})
    cli.main(["train", "layerwise_synthetic_digits", "--block-lr", "3e-4", "--out", str(tmp_path)])
    recipe = layerwise_recipe.LayerwiseRecipe()
    assert seen["block_lr"] == 3e-4 and seen["lr"] == 1e-2
    assert recipe.stage_hyperparameters(seen, layerwise_recipe.Stage(0, 1, 0, 3))["lr"] == 3e-4


def test_block_settings_are_checked_under_their_own_names_and_refused_without_a_trained_block(tmp_path):
    """block_lr 0 is refused (it was the classifier's lr then), as a bad block_optimizer or block_momentum, each by
    its name; a JL network (no trained Conv1x1) refuses block settings other than its preset's before it trains."""
    from kernelzoo.zoo.layerwise.recipe import Stage
    preset = registry.info("layerwise_cifar10_fc")
    recipe = registry.recipe(preset)
    for name, value in (("block_lr", 0.0), ("block_lr", -1e-3), ("block_optimizer", "rmsprop"),
                        ("block_momentum", 1.5)):
        with pytest.raises(ValueError, match=f"`{name}`"):
            recipe.hyperparameters(preset, **{name: value})
    hp = recipe.hyperparameters(preset, block_optimizer="sgd", block_momentum=0.0)
    assert recipe.stage_hyperparameters(dict(hp, block_lr=0.0), Stage(1, 1, 0, 5))["lr"] == 0.0  # not `lr`
    assert recipe.stage_hyperparameters(hp, Stage(1, 1, 0, 5))["momentum"] == 0.0
    jl = registry.info("layerwise_cifar10_jl_fc")
    data = Data(train=stripes(24, size=12), test=None, source="stripes", class_names=("h", "v", "flat"))
    for name, value in (("block_epochs", 5), ("block_lr", 1e-3)):
        hp = recipe.hyperparameters(jl, epochs=7, **{name: value})
        with pytest.raises(ValueError, match=f"`{name}`={value!r}: .* no trained Conv1x1 block"):
            recipe.train(jl, data, str(tmp_path / name), overrides={"clusters": (6, 8), "embeddings": (4, 5)}, hp=hp,
                         verbose=0, tensorboard=False)
        assert not os.path.exists(tmp_path / name)  # refused before the run folder


def _tiny_jl_run(folder, seed=0, kmeans_patches=300, **kwargs):
    """The JL network (its feature standardisation too) shrunk: 2 epochs on 48 stripes, the features kept."""
    preset = registry.info("layerwise_cifar10_jl_fc")
    recipe = registry.recipe(preset)
    data = Data(train=stripes(48, size=12), test=stripes(16, size=12, seed=1), source="stripes",
                class_names=("h", "v", "flat"))
    hp = recipe.hyperparameters(preset, epochs=2, batch_size=16, kmeans_patches=kmeans_patches, kmeans_iterations=3)
    return recipe.train(preset, data, str(folder), overrides={"clusters": (6, 8), "embeddings": (4, 5),
                                                               "fc_units": (8, 4), "bias": 0.5},
                        hp=dict(hp, keep_features=True), seed=seed, verbose=0, tensorboard=False, **kwargs)


def test_kmeans_settings_are_refused_by_name_before_the_run_folder(tmp_path, monkeypatch):
    """kmeans_patches and kmeans_iterations are checked by name with the other hyper-parameters (they were
    refused as `count` or `max_iter` after config.json was written), and kmeans_patches against the widest
    block's clusters before anything runs (too few for block 2 failed after block 1 had trained)."""
    preset = registry.info("layerwise_synthetic_digits")
    recipe = registry.recipe(preset)
    for name, value in (("kmeans_patches", -5), ("kmeans_patches", 2.5), ("kmeans_iterations", 0),
                        ("kmeans_candidates", 0)):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive int"):
            recipe.hyperparameters(preset, **{name: value})
    monkeypatch.setattr(algorithm, "cluster_block", lambda *args, **kwargs: pytest.fail("k-means before the refusal"))
    with pytest.raises(ValueError, match="`kmeans_patches` must be an int >= 8, got 7"):  # block 2's 8 clusters
        _tiny_jl_run(tmp_path / "run", kmeans_patches=7)
    assert not (tmp_path / "run").exists()


class _KillAtFirstEpoch(keras.callbacks.Callback):
    """Interrupts a run as its first epoch begins: after the JL network's k-means and feature pass."""

    def on_epoch_begin(self, epoch, logs=None):
        raise KeyboardInterrupt("killed")


def test_a_run_killed_before_its_first_epoch_leaves_its_kmeans_and_features_to_itself_alone(tmp_path, monkeypatch):
    """The run's state is saved (epoch 0) before its k-means: a new run in the folder is refused, a resume with
    another seed too, and the resume with the same settings reads the k-means and features back and ends as the
    unbroken run. A folder with k-means and features but no state (a run killed before this state was saved) is a
    new run's: they are recomputed, not read (they were: another network's centroids and features)."""
    straight = _tiny_jl_run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _tiny_jl_run(tmp_path / "killed", callbacks=[_KillAtFirstEpoch()])
    assert training.read_state(tmp_path / "killed")["epoch"] == 0
    assert (tmp_path / "killed" / "kmeans" / "block2.npy").is_file()
    assert (tmp_path / "killed" / "features" / "train-48.npy").is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        _tiny_jl_run(tmp_path / "killed", seed=1)
    with pytest.raises(ValueError, match="other settings .*seed 0 -> 1"):
        _tiny_jl_run(tmp_path / "killed", seed=1, resume=True)
    with monkeypatch.context() as patch:
        patch.setattr(algorithm, "cluster_block", lambda *args, **kwargs: pytest.fail("k-means again"))
        resumed = _tiny_jl_run(tmp_path / "killed", resume=True)
    with pytest.raises(KeyboardInterrupt):
        _tiny_jl_run(tmp_path / "left", seed=1, callbacks=[_KillAtFirstEpoch()])
    shutil.rmtree(tmp_path / "left" / training.CHECKPOINTS)
    fresh = _tiny_jl_run(tmp_path / "left")
    for result in (resumed, fresh):
        assert [int(row["epoch"]) for row in result["history"]] == [0, 1]
        for a, b in zip(straight["model"].weights, result["model"].weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
