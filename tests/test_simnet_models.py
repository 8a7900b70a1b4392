"""The SimNet patch-labeling network, its two baselines, their layers and presets."""
import contextlib
import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import kernelzoo  # noqa: F401
from kernelzoo.zoo import registry
from kernelzoo.zoo.simnet import init, models, presets


def _images(count=6, size=10, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def test_paper_sizes_of_the_cifar_networks():
    # Weighted SimNet, n = 400: templates + weights 2 * 108 * 400, offsets 2 * 2 * 10 * 400.
    assert models.parameter_count(models.simnet_patch_labeling(n=400, p=1)) == 2 * 108 * 400 + 40 * 400
    assert models.parameter_count(models.simnet_patch_labeling(n=400, p=2, weighted=False)) == 108 * 400 + 40 * 400
    convnet = models.convnet_baseline(n=64)
    assert models.parameter_count(convnet) == 64 * 109 + (4 * 64 + 1) * 10
    coates = models.coates_baseline(n=32)
    assert models.parameter_count(coates) == (4 * 32 + 1) * 10  # centroids fixed
    assert coates.get_layer("patch_whitening").output.shape == (None, 27, 27, 108)


def test_the_run_seed_draws_the_random_templates_and_the_dropout_masks():
    """`--no-init` templates and the ConvNet's dropout follow `keras.utils.set_random_seed` (the run's --seed)."""
    def draws(seed):
        keras.utils.set_random_seed(seed)
        simnet = models.simnet_patch_labeling(n=4, input_shape=(10, 10, 3))
        convnet = models.convnet_baseline(n=4, input_shape=(10, 10, 3))
        return (simnet.get_layer("similarity").templates.numpy(),
                np.asarray(convnet.get_layer("dropout").seed_generator.state.value))

    first, again, other = draws(1), draws(1), draws(2)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("augment_flip", [False, True])
def test_simnet_without_whitening_takes_raw_pixels(augment_flip):
    """Its similarity reads the 0-255 pixels, as with whitening: export and fine-tuning feed uint8 either way."""
    from kernelzoo.zoo.inputs import input_spec
    for whitening in (True, False):
        model = models.simnet_patch_labeling(n=4, input_shape=(16, 16, 3), whitening=whitening,
                                             augment_flip=augment_flip)
        assert input_spec(model).dtype == "uint8"


def test_simnet_computes_the_patch_labeling_rule():
    """logits[r] = mean_ij log mean_l exp(s_ijl + b[r, l, q(i, j)]) (xi1 = 1, xi2 = 0), minus their mean over r."""
    model = models.simnet_patch_labeling(n=3, p=2, input_shape=(9, 9, 3), num_classes=4, patch_size=4,
                                         whitening=False)
    offsets = model.get_layer("mex_templates").offsets_variable
    offsets.assign(np.random.default_rng(0).normal(size=offsets.shape).astype("float32"))
    x = _images(2, 9) / 255.0
    similarity = keras.Model(model.inputs[0], model.get_layer("similarity").output)
    s = keras.ops.convert_to_numpy(similarity(x))  # (2, 6, 6, 3)
    b = offsets.numpy()[:, :, :, 0, 0, :]  # (2, 2, 4, 3)
    region = (np.arange(6) * 2) // 6
    values = s[:, :, :, None, :] + b[region][:, region][None]  # (2, 6, 6, 4, 3)
    top = values.max(axis=-1)
    expected = (top + np.log(np.mean(np.exp(values - top[..., None]), axis=-1))).mean(axis=(1, 2))
    expected -= expected.mean(axis=1, keepdims=True)  # the model centres its logits (ClassCentering)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("p", [1, 2])
def test_simnet_p_is_the_order_of_its_similarity(p):
    """Unweighted and without whitening, channel l of the similarity map is -sum |x - z_l|^p over the patch
    (paper 000 Eq. 3: the lp similarity of the p asked for)."""
    model = models.simnet_patch_labeling(n=2, p=p, weighted=False, input_shape=(4, 4, 3), patch_size=4,
                                         whitening=False, offset_regions=1)
    x = _images(1, 4) / 255.0
    similarity = keras.Model(model.inputs[0], model.get_layer("similarity").output)
    s = keras.ops.convert_to_numpy(similarity(x))[0, 0, 0]
    templates = model.get_layer("similarity").templates.numpy()  # (4, 4, 3, 2)
    expected = -(np.abs(x[0, ..., None] - templates) ** p).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(s, expected, rtol=1e-4)


def test_unsupervised_init_gives_equal_logits_per_class():
    model = models.simnet_patch_labeling(n=4, p=1, input_shape=(10, 10, 3), patch_size=3)
    init.unsupervised_init(model, _images(20), num_patches=600, iterations=3)
    logits = keras.ops.convert_to_numpy(model(_images(3, seed=1)))
    np.testing.assert_allclose(logits, logits[:, :1] * np.ones((1, 10)), rtol=1e-5)
    assert model.get_layer("patch_whitening").fitted


def test_unsupervised_init_sets_the_coates_centroids_to_kmeans_centres():
    """Coates et al.'s centroids are k-means centres of the whitened patches (here all 768 of them): each is the
    mean of the patches nearest to it, a fixed point of Lloyd's iteration, not the random initialisation."""
    model = models.coates_baseline(n=3, input_shape=(10, 10, 3), patch_size=3)
    images = _images(12)
    init.unsupervised_init(model, images, kmeans_iterations=50)
    white = keras.Model(model.inputs[0], model.get_layer("patch_whitening").output)
    rows = keras.ops.convert_to_numpy(white(images)).reshape(-1, 27)
    centroids = model.get_layer("triangle_coding").centroids.numpy().T  # (3, 27)
    nearest = np.argmin(((rows[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(centroids, [rows[nearest == k].mean(0) for k in range(3)], atol=1e-3)


@pytest.mark.parametrize("builder", [models.simnet_patch_labeling, models.convnet_baseline, models.coates_baseline])
def test_models_save_and_load(builder, tmp_path):
    model = builder(n=4, input_shape=(10, 10, 3), patch_size=3)
    init.unsupervised_init(model, _images(12), num_patches=300, iterations=2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images(2, seed=2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-5, atol=1e-5)


def test_simnet_options():
    model = models.simnet_patch_labeling(n=3, p=1.5, learn_p=True, learn_xi=True, weighted=False,
                                         input_shape=(8, 8, 3), patch_size=2)
    names = sorted(v.path for v in model.trainable_variables)
    assert any(path.endswith("similarity/p") for path in names)
    assert sum(path.endswith("/xi") for path in names) == 2
    assert not any(path.endswith("similarity/weights") for path in names)
    for build in (models.simnet_patch_labeling, models.coates_baseline):  # the whitening's eps reaches the layer
        assert build(n=3, input_shape=(8, 8, 3), patch_size=2, zca_eps=1.5).get_layer("patch_whitening").zca_eps == 1.5
    x = _images(2, 8)
    mean = models.simnet_patch_labeling(n=3, input_shape=(8, 8, 3), patch_size=2)
    summed = models.simnet_patch_labeling(n=3, input_shape=(8, 8, 3), patch_size=2, position_pooling="sum")
    summed.set_weights(mean.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(summed(x)), 49 * keras.ops.convert_to_numpy(mean(x)),
                               rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_logit_centring_changes_no_prediction_and_no_softmax(pooling):
    """Centring shifts every class's logit by one amount per image: same softmax, same argmax, and
    logits whose mean over classes is 0 (the uncentred ones are large and negative)."""
    x = _images(4, 8)
    plain = models.simnet_patch_labeling(n=5, input_shape=(8, 8, 3), patch_size=2, position_pooling=pooling,
                                         center_logits=False)
    centred = models.simnet_patch_labeling(n=5, input_shape=(8, 8, 3), patch_size=2, position_pooling=pooling)
    assert "class_centering" in [layer.name for layer in centred.layers]
    assert "class_centering" not in [layer.name for layer in plain.layers]
    offsets = centred.get_layer("mex_templates").offsets_variable
    offsets.assign(np.random.default_rng(3).normal(size=offsets.shape).astype("float32"))
    plain.set_weights(centred.get_weights())
    a, b = (keras.ops.convert_to_numpy(m(x)) for m in (plain, centred))
    assert np.abs(a.mean(axis=1)).min() > 1.0 and np.abs(b.mean(axis=1)).max() < 1e-3
    np.testing.assert_allclose(b, a - a.mean(axis=1, keepdims=True), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(b)),
                               keras.ops.convert_to_numpy(keras.ops.softmax(a)), atol=1e-4)
    with pytest.raises(ValueError, match="center_logits"):
        models.simnet_patch_labeling(n=5, input_shape=(8, 8, 3), patch_size=2, xi2=1.0, center_logits=True)
    assert "class_centering" not in [layer.name for layer in
                                     models.simnet_patch_labeling(n=5, input_shape=(8, 8, 3), patch_size=2,
                                                                  learn_xi=True).layers]


def test_quadrant_pooling_takes_one_pooling_op_where_same_windows_are_the_regions():
    def window(size, regions):
        return models.QuadrantPooling._same_window(size, models.QuadrantPooling._bounds(size, regions))

    assert [window(27, 2), window(28, 2), window(9, 3), window(6, 1)] == [14, 14, 3, 6]
    assert window(10, 4) is None  # regions of 3, 2, 3, 2 rows: no "same" pooling has them
    with pytest.raises(ValueError, match="implementation"):
        models.QuadrantPooling(implementation="fused")


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("size,grid", [((27, 27), (2, 2)), ((28, 9), (2, 3)), ((10, 27), (4, 2))])
def test_quadrant_pooling_by_window_equals_the_slices(mode, size, grid):
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.permutation(2 * size[0] * size[1] * 3).reshape(2, *size, 3).astype("float32") / 100)
    seed = tf.constant(rng.normal(size=(2, *grid, 3)).astype("float32"))
    results = []
    for implementation in ("auto", "slices"):
        layer = models.QuadrantPooling(grid, mode, implementation=implementation)
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * seed)
        results.append((y.numpy(), tape.gradient(loss, x).numpy()))
    (y, grad), (y_ref, grad_ref) = results
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-7)
    assert models.QuadrantPooling.from_config(layer.get_config()).implementation == "slices"


def test_quadrant_pooling_refuses_a_map_smaller_than_its_grid():
    """A 1-row map has no second row of regions (both would be row 0): an error naming the grid."""
    with pytest.raises(ValueError, match="grid"):
        models.QuadrantPooling((2, 2))(np.zeros((1, 1, 5, 3), "float32"))


def test_convnet_takes_the_max_of_each_quadrant_of_its_feature_maps():
    """Fig. 3b: max pooling of the ReLU convolution maps over their four quadrants (8x8 maps: 4x4 each)."""
    model = models.convnet_baseline(n=3, input_shape=(10, 10, 3), patch_size=3, dropout=0.0)
    feed = keras.Model(model.inputs[0], [model.get_layer("conv").output, model.get_layer("pool").output])
    conv, pooled = (keras.ops.convert_to_numpy(t) for t in feed(_images(2)))
    np.testing.assert_allclose(pooled, conv.reshape(2, 2, 4, 2, 4, 3).max(axis=(2, 4)), rtol=1e-6)


def test_quadrant_pooling_and_triangle_coding():
    assert models.QuadrantPooling._bounds(27, 2) == [(0, 14), (14, 27)]
    x = np.arange(2 * 5 * 5 * 1, dtype="float32").reshape(2, 5, 5, 1)
    out = keras.ops.convert_to_numpy(models.QuadrantPooling((2, 2), "sum")(x))
    np.testing.assert_allclose(out[0, 0, 1, 0], x[0, :3, 3:, 0].sum())
    layer = models.TriangleCoding(3)
    feats = np.random.default_rng(0).normal(size=(1, 2, 2, 4)).astype("float32")
    coded = keras.ops.convert_to_numpy(layer(feats))
    z = np.linalg.norm(feats[..., None] - layer.centroids.numpy()[None, None, None], axis=3)
    np.testing.assert_allclose(coded, np.maximum(z.mean(-1, keepdims=True) - z, 0), rtol=1e-4, atol=1e-4)


def test_presets_build_ten_class_cifar_models():
    for preset in presets.PRESETS:
        assert preset.family == "simnet" and preset.inputs.shape == (32, 32, 3) and preset.inputs.raw_pixels
        model = registry.create(preset.name, n=2)
        assert model.output.shape == (None, 10) and len(preset.class_names) == 10


@pytest.mark.parametrize("builder, first", [(models.simnet_patch_labeling, "patch_whitening"),
                                             (models.convnet_baseline, "normalization")])
def test_augmentation_mirrors_raw_images_in_training_only(tmp_path, builder, first):
    """augment_flip puts RandomShiftFlip before the SimNet's whitening (the ConvNet's normalisation): it mirrors
    some images of a training batch, none at inference; the plain model has no such layer, and the option
    survives save / load."""
    assert "augment" not in [layer.name for layer in builder(n=3, input_shape=(8, 8, 3), patch_size=2).layers]
    model = builder(n=3, input_shape=(8, 8, 3), patch_size=2, augment_flip=True)
    assert [layer.name for layer in model.layers][1:3] == ["augment", first]
    x = _images(16, 8)
    augment = model.get_layer("augment")
    seen = keras.ops.convert_to_numpy(augment(x, training=True))
    mirrored = [np.array_equal(seen[i], x[i, :, ::-1]) for i in range(16)]
    assert 0 < sum(mirrored) < 16
    assert all(mirrored[i] or np.array_equal(seen[i], x[i]) for i in range(16))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), x)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("augment").flip and loaded.get_layer("augment").shift == 0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-6)


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "`n`"), ({"p": 3}, "`p`"), ({"xi1": float("nan")}, "`xi1`"), ({"input_shape": (32, 32)}, "input_shape"),
    ({"weight_decay": -1}, "weight_decay"), ({"offset_regions": (30, 2)}, "offset_regions"),
    ({"offset_regions": (2, 30)}, "offset_regions"),
    ({"patch_size": 40}, "patch_size"), ({"num_classes": 1.5}, "num_classes"),
    ({"position_pooling": "max"}, "position_pooling"), ({"zca_eps": -0.1}, "zca_eps"),
    ({"augment_flip": "yes"}, "augment_flip"), ({"augment_shift": -1}, "augment_shift"),
    ({"augment_shift": 32}, "`augment_shift`=32 must be smaller"), ({"whitening": "no"}, "`whitening`")])
def test_simnet_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        models.simnet_patch_labeling(**kwargs)


def test_baseline_bad_arguments():
    with pytest.raises(ValueError, match="`dropout`"):
        models.convnet_baseline(n=4, dropout=1.5)
    with pytest.raises(ValueError, match="`augment_flip`"):
        models.convnet_baseline(n=4, augment_flip="yes")
    with pytest.raises(ValueError, match="`n`"):
        models.coates_baseline(n=-1)
    with pytest.raises(ValueError, match="`train_templates`"):
        models.coates_baseline(n=4, train_templates="no")
    with pytest.raises(ValueError, match="`zca_eps`"):
        models.coates_baseline(n=4, zca_eps=-1)
    with pytest.raises(ValueError, match="`mode`"):
        models.QuadrantPooling(mode="median")
    with pytest.raises(ValueError, match="`filters`"):
        models.TriangleCoding(0)


def test_coates_recipe_fits_an_svm_on_frozen_standardised_features(tiny_runs):
    """The Coates tiny run (conftest.TinyRuns): k-means centroids, feature statistics and the L2-SVM,
    never an SGD step through the coding; beats chance on the three stripe classes."""
    from kernelzoo.zoo.simnet.recipe import CoatesRecipe, tiny_runs as simnet_tiny_runs
    from kernelzoo.zoo.frozen_features import cached_features

    assert isinstance(registry.recipe(registry.info("coates_cifar10_n1600")), CoatesRecipe)
    run = next(r for r in simnet_tiny_runs() if r.preset == "coates_cifar10_n1600")
    _, result, folder = tiny_runs.trained(f"simnet-{run.preset}")
    model = result["model"]
    assert result["metrics"]["test_accuracy"] > 0.6  # chance: 1/3
    assert [w.path for w in model.trainable_weights] == ["logits/kernel", "logits/bias"]
    config = json.loads((folder / "config.json").read_text())
    assert config["init"] == {"patch_whitening": "zca", "triangle_coding": "kmeans", "features": "standardize"}
    images = run.data.train[0]
    features = cached_features(model, images, str(folder / "features" / f"train-{len(images)}.npy"))
    assert abs(float(np.mean(features))) < 0.5 and 0.2 < float(np.std(features)) < 2  # standardised on a sample
    assert [row["l2"] for row in result["history"][:-1]] == [1.0, 0.1, 0.01][:len(result["history"]) - 1]


def _wl2_recipe_on_stripes():
    """(preset, recipe, data) of the recipe tests: the weighted l2 SimNet's preset and recipe, 20 synthetic
    stripe images of 3 classes."""
    from kernelzoo.zoo.data.synthetic import stripes
    from kernelzoo.zoo.recipe import Data

    preset = registry.info("simnet_cifar10_wl2_n400")
    data = Data(train=stripes(20), test=None, source="stripes", class_names=("h", "v", "flat"))
    return preset, registry.recipe(preset), data


def test_tune_weight_decay_checks_its_values_and_gives_each_its_own_folder(tmp_path):
    """--tune-weight-decay: numbers >= 0, each once (errors name the option); one held-out run per value in
    tune/wd=VALUE, named by :g where that reads back as the same float, else by repr (1e-7 and 1.0000001e-7 apart)."""
    preset, recipe, data = _wl2_recipe_on_stripes()
    folders = []

    def train_run(preset, data, folder, hp=None, **kwargs):  # the held-out runs score their weight decay
        folders.append(folder)
        return {"history": [{"val_accuracy": hp["weight_decay"] * 1e7}]}

    recipe.train_run = train_run
    hp = recipe.hyperparameters(preset, holdout=5)
    chosen = recipe.train(preset, data, str(tmp_path), hp=hp, options=recipe.options(
        tune_weight_decay="0, 1e-7,1.0000001e-7"), verbose=0)
    tune = tmp_path / "tune"
    assert folders == [str(tune / "wd=0"), str(tune / "wd=1e-07"), str(tune / "wd=1.0000001e-07"), str(tmp_path)]
    assert chosen["history"][0]["val_accuracy"] == pytest.approx(1.0000001)  # the final run, with the chosen value
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert list(tuning["scores"]) == ["0", "1e-07", "1.0000001e-07"] and tuning["chosen"] == 1.0000001e-7
    for text in ("1e-7,,1e-6", "1e-7,-1e-6", "1e-7,1e-07", "1e-7,x", "inf"):
        with pytest.raises(ValueError, match="`--tune-weight-decay`"):
            recipe.train(preset, data, str(tmp_path / "bad"), hp=hp, options=recipe.options(tune_weight_decay=text))


def test_init_images_must_be_positive():
    from kernelzoo.zoo.simnet.recipe import initialise_from_images
    data = types.SimpleNamespace(train=(_images(4), np.arange(4) % 2))
    with pytest.raises(ValueError, match="init_images"):
        initialise_from_images(models.coates_baseline(n=2, input_shape=(10, 10, 3)), data, 0)


def test_initialise_from_images_takes_at_most_the_training_set():
    """--init-images above the number of training images (the recipe's 5000 on a small set) uses them all."""
    from kernelzoo.zoo.simnet.recipe import initialise_from_images
    data = types.SimpleNamespace(train=(_images(4), np.arange(4) % 2))
    report = initialise_from_images(models.coates_baseline(n=2, input_shape=(10, 10, 3), patch_size=3), data, 5000)
    assert report == {"patch_whitening": "zca", "triangle_coding": "kmeans", "features": "standardize"}


@pytest.mark.parametrize("argument", ["kmeans_patches", "kmeans_iterations"])
def test_unsupervised_init_rejects_bad_kmeans_sizes(argument):
    model = models.coates_baseline(n=2, input_shape=(10, 10, 3))
    with pytest.raises(ValueError, match=argument):
        init.unsupervised_init(model, _images(4), **{argument: -1 if argument == "kmeans_iterations" else 0})


@pytest.mark.parametrize("preset", ["convnet_cifar10", "simnet_cifar10_wl2_n400"])
def test_a_mixed_bfloat16_run_saves_a_float32_model(preset, tmp_path, monkeypatch):
    """--precision mixed_bfloat16 (the ConvNet's 1.3x faster step, docs/benchmarks.md): the run computes in
    bfloat16, model.keras is its float32 copy: the trained weights (the checkpoint's float32 variables, exactly;
    a copy that re-initialises fails); on a CPU without native bfloat16 (here pretended) the run says that it is
    emulated."""
    from kernelzoo.zoo import precision, training
    from kernelzoo.zoo.simnet.recipe import tiny_runs

    run = next(r for r in tiny_runs() if r.preset == preset)
    info = registry.info(preset)
    recipe = registry.recipe(info)
    hp = recipe.hyperparameters(info, **dict(run.hp, epochs=1, precision="mixed_bfloat16"))
    monkeypatch.setattr(precision, "cpu_flags", set)
    gpu = bool(tf.config.list_physical_devices("GPU"))  # a GPU computes bfloat16: nothing to say
    with contextlib.nullcontext() if gpu else pytest.warns(RuntimeWarning, match="emulated"):
        result = recipe.train(info, run.data, str(tmp_path), overrides=run.overrides, hp=hp, verbose=0,
                              tensorboard=False)
    trained = keras.models.load_model(tmp_path / "checkpoints" / "last.keras")
    # [0]: the input; "augment" (training-time flips of the 0-255 images) stays float32 by design
    computing = [layer for layer in trained.layers[1:] if layer.name != "augment"]
    assert {layer.dtype_policy.name for layer in computing} == {"mixed_bfloat16"}
    saved = keras.models.load_model(tmp_path / training.MODEL_FILE)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    for weight, checkpointed in zip(saved.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(weight, checkpointed)  # exact (the bf16 SimNet's centred logits are coarse)
    x = run.data.test[0].astype("float32")  # and the run returns the model it saved
    np.testing.assert_allclose(saved.predict(x, verbose=0), result["model"].predict(x, verbose=0), rtol=1e-5,
                               atol=1e-4)
    with pytest.raises(ValueError, match="precision"):
        recipe.hyperparameters(info, precision="float16")


def test_weight_decay_is_the_recipes_never_a_builder_override():
    """A `weight_decay=` override beat --weight-decay, every --tune-weight-decay value and adamw's decoupled decay
    (the model got the override's L2 term on top)."""
    preset, recipe, data = _wl2_recipe_on_stripes()
    for optimizer in ("sgd", "adamw"):
        hp = recipe.hyperparameters(preset, weight_decay=1e-6, optimizer=optimizer)
        with pytest.raises(ValueError, match="`weight_decay`.*--weight-decay"):
            recipe.build(preset, data, {"n": 2, "patch_size": 3, "weight_decay": 1e-3}, hp)


def test_adamw_decays_only_the_similarity_weights_and_offsets():
    """--optimizer adamw: its decoupled decay is all the decay (the model gets no L2 term) and shrinks what the
    paper decays, similarity weights and offsets, never the templates: with zero gradients a step scales exactly
    those by 1 - lr * weight_decay."""
    preset, recipe, data = _wl2_recipe_on_stripes()
    hp = recipe.hyperparameters(preset, weight_decay=0.5, optimizer="adamw")
    model = recipe.build(preset, data, {"n": 2, "patch_size": 3}, hp)
    assert not model.losses
    variables = model.trainable_variables
    assert sorted(v.name for v in variables) == ["offsets", "templates", "weights"]
    before = [v.numpy().copy() for v in variables]
    recipe.optimizer("adamw", 0.1, hp, model).apply([keras.ops.zeros_like(v) for v in variables], variables)
    for variable, value in zip(variables, before):
        np.testing.assert_allclose(variable.numpy(), (1.0 if variable.name == "templates" else 0.95) * value, rtol=1e-6)


def test_no_init_fits_the_whitening_but_keeps_the_random_templates():
    """--no-init (paper Sec. 6.3 ablation): the whitening is fitted, the similarity keeps its random templates."""
    preset, recipe, data = _wl2_recipe_on_stripes()
    model = recipe.build(preset, data, {"n": 2, "patch_size": 3})
    templates = model.get_layer("similarity").templates.numpy().copy()
    report = recipe.initialise(model, data, recipe.hyperparameters(preset), recipe.options(no_init=True))
    assert report == {"patch_whitening": "zca"} and model.get_layer("patch_whitening").fitted
    np.testing.assert_array_equal(model.get_layer("similarity").templates.numpy(), templates)


def test_validate_only_refuses_tune_weight_decay():
    """--validate-only ran one held-out run at the recipe's decay whatever --tune-weight-decay listed."""
    preset, recipe, data = _wl2_recipe_on_stripes()
    recipe.train_run = lambda *args, **kwargs: {"history": [{"val_accuracy": 0.5}], "metrics": {}}
    options = recipe.options(validate_only=True, tune_weight_decay="1e-7,1e-6")
    with pytest.raises(ValueError, match="--tune-weight-decay.*--validate-only"):
        recipe.train(preset, data, "unused", hp=recipe.hyperparameters(preset, holdout=5), options=options, verbose=0)


def test_the_card_formula_has_the_presets_xi1():
    """simnet_cifar10.md wrote MEX_1 where both presets compute with xi1 = 0.1."""
    for name in ("simnet_cifar10_l1", "simnet_cifar10_l2"):
        xi1 = registry.create(name, n=2).get_layer("mex_templates").xi
        assert f"logit(r) = sum_{{i,j}} MEX_{xi1:g}_l {{" in registry.card(name)
