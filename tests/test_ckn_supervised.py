"""Supervised CKN-5 (issue 14): the ckn_cifar10_sup5 preset and builder, SupervisedCKNRecipe (k-means anchors and an
L-BFGS classifier, then SGD with lr milestones into a float32 model with frozen CKN layers), the CKN layer under
mixed_bfloat16, the squared hinge as a Keras loss and `kernelzoo bench ckn`."""
import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo.layers import CKNConv2D
from kernelzoo.zoo import registry
from kernelzoo.zoo.ckn import ImageWhitening, ckn
from kernelzoo.zoo.ckn.recipe import (ClassifierRefit, SupervisedCKNRecipe, UnsupervisedCKNRecipe, recipe_for,
                                     tiny_runs)
from kernelzoo.zoo.linear_classifier import one_vs_rest_squared_hinge
from kernelzoo.zoo.precision import precision_policy
from kernelzoo.zoo.augment import RandomShiftFlip

SUP5 = "ckn_cifar10_sup5"
TINY_KEY = f"ckn-{SUP5}"


def _tiny_run():
    (run,) = [run for run in tiny_runs() if run.preset == SUP5]
    return run


def _ckn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, CKNConv2D)]


# ----------------------------------------------------------------------------- the preset and its builder


def test_sup5_is_the_reference_ckn5():
    model = registry.create(SUP5)
    layers = _ckn_layers(model)
    assert [layer.name for layer in layers] == [f"ckn{i}" for i in range(1, 6)]
    assert [layer.filters for layer in layers] == [128] * 5
    assert [layer.kernel_size for layer in layers] == [(3, 3), (1, 1), (3, 3), (1, 1), (3, 3)]
    assert [layer.subsampling for layer in layers] == [2, 1, 2, 1, 3]
    assert [layer.kernel_function for layer in layers] == ["exp", "poly2", "exp", "poly2", "exp"]
    assert all(layer.sigma == 0.5 and layer.nystrom_shift == 0.01 for layer in layers)
    assert all(layer.trainable and layer.anchors.trainable and not layer.factor.trainable for layer in layers)
    assert isinstance(model.get_layer("whitening"), ImageWhitening) and model.get_layer("whitening").patch_size == 3
    assert tuple(layers[-1].output.shape) == (None, 3, 3, 128)
    features = model.get_layer("features")  # the flattened map itself, as the reference's supervised CKNs
    assert isinstance(features, keras.layers.Flatten) and tuple(features.output.shape) == (None, 1152)
    anchors = 3 * 3 * 3 * 128 + 128 * 128 + 3 * 3 * 128 * 128 + 128 * 128 + 3 * 3 * 128 * 128
    classifier = 1152 * 10 + 10
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert (trainable, model.count_params()) == (anchors + classifier, anchors + classifier + 5 * 128 * 128)
    assert trainable == 342_666


def test_recipe_for_picks_the_supervised_recipe_for_learned_anchors():
    assert isinstance(recipe_for(registry.info(SUP5)), SupervisedCKNRecipe)
    for name in ("ckn_cifar10_unsup_64_256", "ckn_cifar10_unsup_512_8192"):
        assert isinstance(recipe_for(registry.info(name)), UnsupervisedCKNRecipe)
    builder_default = dataclasses.replace(registry.info("ckn_cifar10_unsup_64_256"), config={})
    assert isinstance(recipe_for(builder_default), SupervisedCKNRecipe)  # the builder's anchors are trainable
    assert SUP5 in [run.preset for run in tiny_runs()]


def test_a_trainable_anchors_override_must_agree_with_the_recipe_the_preset_chose():
    """Else initialise would overturn it (k-means freezes the layers, the supervised recipe unfreezes them)."""
    for run in tiny_runs():
        preset = registry.info(run.preset)
        recipe = registry.recipe(preset)
        hp = recipe.hyperparameters(preset, **run.hp)
        learned = isinstance(recipe, SupervisedCKNRecipe)
        model = recipe.build(preset, run.data, dict(run.overrides, trainable_anchors=learned), hp)
        assert all(layer.trainable == learned for layer in _ckn_layers(model))
        with pytest.raises(ValueError, match="`trainable_anchors`"):
            recipe.build(preset, run.data, dict(run.overrides, trainable_anchors=not learned), hp)
        with pytest.raises(ValueError, match="`trainable_anchors`"):
            recipe.build(preset, run.data, dict(run.overrides, trainable_anchors="no"), hp)


def test_sup5_hyperparameters_are_the_reference_and_bad_values_are_named():
    preset = registry.info(SUP5)
    recipe = SupervisedCKNRecipe()
    hp = recipe.hyperparameters(preset)
    assert {key: hp[key] for key in ("epochs", "batch_size", "optimizer", "lr", "momentum", "schedule",
                                     "lr_milestones")} == {"epochs": 105, "batch_size": 128, "optimizer": "sgd",
                                                           "lr": 0.1, "momentum": 0.9, "schedule": "milestones",
                                                           "lr_milestones": (60, 85, 100)}
    assert (hp["precision"], hp["augment"], hp["classifier_alpha"], hp["kmeans_patches"]) == ("float32", False, 1e-3,
                                                                                              150_000)
    assert hp["alternating"] is True  # cifar10_sup.sh's --alternating
    assert (hp["kmeans_init"], hp["kmeans_iterations"], hp["lbfgs_iterations"], hp["holdout"]) == ("k-means++", 100,
                                                                                                   1000, 5000)
    assert recipe.hyperparameters(preset, precision="mixed_bfloat16", augment=True)["precision"] == "mixed_bfloat16"
    for key, value in (("precision", "float16"), ("kmeans_init", "kmeans"), ("classifier_alpha", -1.0),
                       ("augment", "yes"), ("alternating", "no"), ("kmeans_patches", 0), ("lbfgs_iterations", 0)):
        with pytest.raises(ValueError, match=key):
            recipe.hyperparameters(preset, **{key: value})
    with pytest.raises(ValueError, match="augment"):
        ckn(augment=1.5)
    with pytest.raises(ValueError, match="normalize_features"):
        ckn(normalize_features="no")


def test_cli_options_of_the_supervised_recipe():
    options = SupervisedCKNRecipe().options()
    assert (options.precision, options.augment, options.kmeans_patches, options.alternating,
            options.classifier_alpha) == (None,) * 5
    assert SupervisedCKNRecipe().options(alternating=False).alternating is False
    assert SupervisedCKNRecipe().options(classifier_alpha=0.1).classifier_alpha == 0.1


# ----------------------------------------------------------------------------- the recipe's stages


def test_initialise_sets_kmeans_anchors_fits_the_classifier_and_unfreezes_every_layer():
    run = _tiny_run()
    preset, recipe = registry.info(SUP5), SupervisedCKNRecipe()
    hp = recipe.hyperparameters(preset, **run.hp)
    model = recipe.build(preset, run.data, run.overrides, hp)
    report = recipe.initialise(model, run.data, hp, recipe.options(), seed=0)
    assert list(report["kmeans"]) == ["ckn1", "ckn2"]
    x, y = run.data.train
    features = model.get_layer("features").output.shape[-1]
    scale = report["classifier"]["feature_scale"]
    assert report["classifier"]["l2"] == pytest.approx(hp["classifier_alpha"] * features / len(x) * scale ** 2)
    layers = _ckn_layers(model)
    assert all(layer.trainable for layer in layers)
    for layer in layers:  # k-means centroids: unit columns
        np.testing.assert_allclose(np.linalg.norm(np.asarray(layer.anchors).reshape(-1, layer.filters), axis=0), 1,
                                   atol=1e-5)
    assert np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y) > 0.9  # the L-BFGS classifier
    before = [np.asarray(layer.anchors).copy() for layer in layers]
    recipe.compile(model, hp)
    model.train_on_batch(x[:16].astype("float32"), y[:16])
    for layer, anchors in zip(layers, before):  # the gradient reaches every layer's anchors
        assert not np.allclose(np.asarray(layer.anchors), anchors), layer.name


def test_training_steps_keep_the_anchors_unit_norm(rng):
    """The reference renormalises the anchors after every step; without it the parameterisation's tangent steps
    lengthen the stored columns (here by far more than the tolerance) and shrink the later steps on the sphere."""
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(CKNConv2D(4, 3, sigma=0.5)(inputs))))
    model.compile(optimizer=keras.optimizers.SGD(1.0, momentum=0.9), loss="mse")
    x, y = rng.normal(size=(32, 6, 6, 3)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")
    layer = model.layers[1]
    before = np.asarray(layer.anchors).copy()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    anchors = np.asarray(layer.anchors)
    assert np.abs(anchors - before).max() > 0.1  # the anchors moved
    np.testing.assert_allclose(np.linalg.norm(anchors.reshape(-1, 4), axis=0), 1, atol=1e-5)


def test_classifier_refit_lowers_the_loss_from_the_current_weights_after_the_first_epoch():
    run = _tiny_run()
    preset, recipe = registry.info(SUP5), SupervisedCKNRecipe()
    hp = recipe.hyperparameters(preset, **dict(run.hp, classifier_alpha=1e-4))
    model = recipe.build(preset, run.data, run.overrides, hp)
    recipe.initialise(model, run.data, hp, recipe.options(), seed=0)
    x, y = run.data.train
    head = model.get_layer("logits")
    head.set_weights([w * 0.1 for w in head.get_weights()])  # as if SGD had moved it off its fit
    refit = ClassifierRefit(x, y, hp["classifier_alpha"], hp["lbfgs_iterations"], hp["batch_size"])
    refit.set_model(model)

    def loss():
        return float(np.mean(one_vs_rest_squared_hinge(y, model.predict(x, verbose=0))))

    moved = [w.copy() for w in head.get_weights()]
    refit.on_epoch_begin(0)  # the first epoch keeps the initial fit
    assert all(np.array_equal(a, b) for a, b in zip(moved, head.get_weights()))
    before = loss()
    refit.on_epoch_begin(1)
    assert loss() < 0.5 * before


def test_fit_classifier_scales_l2_by_the_per_image_rms_and_warm_starts_from_the_current_weights(rng):
    """s is the mean over images of each image's feature RMS; a warm start continues from the layer's weights (one
    L-BFGS step from its optimum stays there; from zeros it would not)."""
    from kernelzoo.zoo.ckn.recipe import fit_classifier
    from kernelzoo.zoo.frozen_features import feature_extractor
    inputs = keras.Input((6,))  # any model with "features" and "logits" layers: a Dense one is quick
    features = keras.layers.Dense(5, name="features")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="zeros", name="logits")(features))
    images, labels = rng.normal(size=(30, 6)).astype("float32"), np.arange(30) % 3
    report = fit_classifier(model, images, labels, 1e-3, 500)
    features = np.asarray(feature_extractor(model)(images), "float64")
    assert report["feature_scale"] == pytest.approx(np.mean(np.sqrt(np.mean(features ** 2, axis=1))), rel=1e-6)
    fitted = model.get_layer("logits").get_weights()
    fit_classifier(model, images, labels, 1e-3, 1, warm_start=True)
    for before, after in zip(fitted, model.get_layer("logits").get_weights()):
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-3 * np.abs(fitted[0]).max())


def test_alternating_run_refits_before_every_epoch_but_the_first(monkeypatch, tmp_path):
    from kernelzoo.zoo.ckn import recipe as ckn_recipe

    run = _tiny_run()
    preset, recipe = registry.info(SUP5), SupervisedCKNRecipe()
    epochs = []
    monkeypatch.setattr(ckn_recipe, "fit_classifier",
                        lambda *args, warm_start=False, **kwargs: epochs.append(warm_start) or {"loss": 0.0,
                                                                                              "iterations": 0})
    for alternating, refits in ((True, [True, True, True]), (False, [])):
        epochs.clear()
        hp = recipe.hyperparameters(preset, **dict(run.hp, alternating=alternating))
        model = recipe.build(preset, run.data, run.overrides, hp)
        recipe.compile(model, hp)
        recipe.fit(model, run.data, str(tmp_path / str(alternating)), hp, verbose=0, tensorboard=False)
        assert epochs == refits  # 4 epochs: a warm-started refit before epochs 2, 3 and 4


def test_alternating_run_killed_and_resumed_equals_the_unbroken_one(tmp_path):
    """The refit before epoch 2 runs again on resume, from the same checkpoint: the same weights."""
    from conftest import TinyRuns, _Kill

    run = dataclasses.replace(_tiny_run(), hp=dict(_tiny_run().hp, alternating=True, classifier_alpha=1e-3))
    straight = TinyRuns.train(run, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        TinyRuns.train(run, tmp_path / "resumed", callbacks=[_Kill()])
    resumed = TinyRuns.train(run, tmp_path / "resumed", resume=True)
    assert [int(row["epoch"]) for row in resumed["history"]] == [0, 1, 2, 3]
    for a, b in zip(straight["model"].weights, resumed["model"].weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_tiny_supervised_run_follows_the_milestones_and_saves_a_frozen_model(tiny_runs):
    run, result, folder = tiny_runs.trained(TINY_KEY)
    assert result["metrics"]["test_accuracy"] > 0.9  # chance: 1/3
    rates = [row["learning_rate"] for row in result["history"]]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.001])  # lr_milestones (2, 3)
    model = keras.models.load_model(folder / "model.keras")
    for layer in _ckn_layers(model):
        assert not layer.trainable and layer.dtype_policy.name == "float32"
        np.testing.assert_allclose(np.asarray(layer.factor), np.asarray(layer.nystrom_factor()), atol=1e-5)
    checkpoint = keras.models.load_model(folder / "checkpoints" / "last.keras")
    assert all(layer.trainable for layer in _ckn_layers(checkpoint))  # what --resume continues from
    with open(folder / "config.json", encoding="utf-8") as handle:
        init = json.load(handle)["init"]
    assert set(init) == {"kmeans", "classifier"} and init["classifier"]["loss_function"] == "squared_hinge"


def test_mixed_precision_run_saves_a_float32_model(tmp_path):
    run = _tiny_run()
    preset, recipe = registry.info(SUP5), SupervisedCKNRecipe()
    hp = recipe.hyperparameters(preset, **dict(run.hp, epochs=1, precision="mixed_bfloat16"))
    result = recipe.train(preset, run.data, str(tmp_path / "run"), overrides=run.overrides, hp=hp, verbose=0,
                          tensorboard=False)
    assert keras.config.dtype_policy().name == "float32"
    checkpoint = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras")
    assert checkpoint.get_layer("ckn2").compute_dtype == "bfloat16"
    assert all(layer.dtype_policy.name == "float32" for layer in result["model"].layers)
    assert result["metrics"]["test_accuracy"] > 0.9


# ----------------------------------------------------------------------------- the layer under mixed precision


def test_mixed_bfloat16_rounds_only_the_patch_anchor_products(rng):
    """Under mixed_bfloat16 the layer's graph computes one op in bfloat16, the patch-anchor products (the Conv2D
    with an output per anchor); the patch norms, kernel, pooling and Nystrom factor stay float32. The outputs hardly
    tell (a whole-bfloat16 layer's error, 0.8 % of the largest output here, is as small): its traced ops do."""
    x = rng.normal(size=(2, 9, 9, 16)).astype("float32")
    exact = CKNConv2D(8, 3, subsampling=2, sigma=0.5)
    exact.build(x.shape)
    with precision_policy("mixed_bfloat16"):
        mixed = CKNConv2D(8, 3, subsampling=2, sigma=0.5)
    mixed.build(x.shape)
    mixed.set_weights(exact.get_weights())
    assert mixed.compute_dtype == "bfloat16" and mixed.anchors.dtype == "float32" and mixed.factor.dtype == "float32"
    graph = tf.function(mixed).get_concrete_function(tf.TensorSpec(x.shape, "float32")).graph
    in_bfloat16 = [(op.type, op.outputs[0].shape.as_list()[-1:]) for op in graph.get_operations()
                   if op.type not in ("Cast", "Identity", "Reshape") and op.outputs
                   and any(out.dtype == tf.bfloat16 for out in op.outputs)]
    assert in_bfloat16 == [("Conv2D", [8])], in_bfloat16
    assert any(op.type == "Exp" and op.outputs[0].dtype == tf.float32 for op in graph.get_operations())
    reference, rounded = np.asarray(exact(x)), np.asarray(keras.ops.cast(mixed(x), "float32"))
    assert not np.array_equal(reference, rounded)
    # measured 0.34 % of the largest output (a few bfloat16 steps, after the kernel and the factor amplify them)
    np.testing.assert_allclose(rounded, reference, rtol=0, atol=0.01 * np.abs(reference).max())


# ----------------------------------------------------------------------------- builder options, loss, benchmark


def test_augment_sits_after_the_whitening_and_is_the_identity_at_inference(rng):
    kwargs = dict(filters=(4, 4), kernel_sizes=(3, 1), subsamplings=(2, 2), whitening="image", num_classes=3,
                  input_shape=(12, 12, 3))
    plain, augmented = ckn(**kwargs), ckn(augment=True, **kwargs)
    assert [layer.name for layer in augmented.layers[1:4]] == ["whitening", "augment", "ckn1"]
    augment = augmented.get_layer("augment")
    assert isinstance(augment, RandomShiftFlip) and (augment.shift, augment.flip, augment.fill) == (4, True, "constant")
    for layer in plain.layers:
        augmented.get_layer(layer.name).set_weights(layer.get_weights())
    images = rng.integers(0, 256, (3, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), atol=1e-6)
    assert not np.allclose(augmented.get_layer("augment")(images, training=True), images)


def test_squared_hinge_loss_is_the_reference_hinge(rng):
    logits = rng.normal(size=(6, 4)).astype("float32") * 2
    labels = rng.integers(0, 4, 6)
    signs = -np.ones((6, 4))
    signs[np.arange(6), labels] = 1
    expected = 0.5 * np.sum(np.maximum(0, 1 - signs * logits) ** 2, axis=1)
    np.testing.assert_allclose(one_vs_rest_squared_hinge(labels, logits), expected, rtol=1e-6)
    assert keras.saving.get_registered_object("kernelzoo>one_vs_rest_squared_hinge") is one_vs_rest_squared_hinge


def test_bench_ckn_times_a_step_at_both_precisions():
    from kernelzoo.zoo.ckn.bench import measure
    tiny = {"filters": (4,) * 5, "input_shape": (12, 12, 3)}
    for precision in ("float32", "mixed_bfloat16"):
        result = measure(SUP5, precision, batch_size=4, steps=1, warmup=1, overrides=tiny)
        assert result["ms"] > 0 and result["images_per_s"] > 0 and result["steps"] == 1
    profile = measure(SUP5, batch_size=4, steps=1, warmup=1, overrides=tiny, profile=True)["profile"]
    assert profile and all(ms >= 0 for _, ms in profile) and profile[0][1] > 0
    assert any("gradient_tape/" in name for name, _ in profile)  # the backward's ops are in the step
    with pytest.raises(ValueError, match="preset"):
        measure("ckn_cifar10_unsup_64_256")
