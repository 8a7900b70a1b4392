"""The layerwise family's SGD baseline (paper 003 Sec. 6, Fig. 3 "CNN" and "CNN(Random)"): the TensorFlow CIFAR-10
tutorial CNN (`tf_tutorial_cnn`), its LRN layer, the cnn_cifar10_tf_* presets and TutorialCNNRecipe. The family
contract (training through the recipe, resume, save/load, ONNX parity) runs its tiny run in tests/test_families.py."""
import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.data.synthetic import stripes
from kernelzoo.zoo.layerwise.layers import LocalResponseNormalization
from kernelzoo.zoo.layerwise.models import TUTORIAL_LRN, tf_tutorial_cnn
from kernelzoo.zoo.layerwise.recipe import LayerwiseRecipe, TutorialCNNRecipe
from kernelzoo.zoo.recipe import Data

NAMES = ("cnn_cifar10_tf_fc", "cnn_cifar10_tf_linear", "cnn_cifar10_tf_fc_random", "cnn_cifar10_tf_linear_random")
TINY = {"filters": (4, 6), "fc_units": (8, 5), "input_shape": (12, 12, 3), "num_classes": 3}


def _images(count=8, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3)).astype("float32")


def test_the_tutorial_cnn_at_full_size():
    """Parameters counted by hand for 32 x 32 inputs (two stride-2 poolings, same padding: 8 x 8 x 64 features):
    conv1 5*5*3*64 + 64 = 4,864; conv2 5*5*64*64 + 64 = 102,464; fc1 4,096*384 + 384 = 1,573,248;
    fc2 384*192 + 192 = 73,920; logits 192*10 + 10 = 1,930 (linear head: 4,096*10 + 10 = 40,970)."""
    fc, linear, frozen = tf_tutorial_cnn(), tf_tutorial_cnn(head="linear"), tf_tutorial_cnn(train_conv=False)
    assert fc.count_params() == 4_864 + 102_464 + 1_573_248 + 73_920 + 1_930 == 1_756_426
    assert linear.count_params() == 4_864 + 102_464 + 40_970 == 148_298
    assert sum(int(np.prod(w.shape)) for w in frozen.trainable_weights) == 1_573_248 + 73_920 + 1_930
    assert [layer.name for layer in fc.layers] == ["image", "preprocess", "conv1", "pool1", "norm1", "conv2", "norm2",
                                                   "pool2", "features", "fc1", "fc2", "logits"]
    assert [layer.name for layer in linear.layers][-2:] == ["features", "logits"]
    shapes = {name: tuple(fc.get_layer(name).output.shape[1:]) for name in ("conv1", "pool1", "pool2", "features")}
    assert shapes == {"conv1": (32, 32, 64), "pool1": (16, 16, 64), "pool2": (8, 8, 64), "features": (4096,)}
    assert fc.output_shape == linear.output_shape == (None, 10)
    assert fc.get_layer("norm2").get_config()["alpha"] == pytest.approx(0.001 / 9)
    # The tutorial's biases and weight decay (wd * l2_loss = wd / 2 * sum(w^2), on fc1 and fc2 only).
    np.testing.assert_array_equal(fc.get_layer("conv2").bias.numpy(), np.float32(0.1))
    np.testing.assert_array_equal(fc.get_layer("conv1").bias.numpy(), 0.0)
    assert fc.get_layer("fc1").kernel_regularizer.l2 == pytest.approx(0.002)
    assert fc.get_layer("logits").kernel_regularizer is None and linear.get_layer("logits").kernel_regularizer is None
    assert np.abs(fc.get_layer("conv1").kernel.numpy()).max() <= 2 * 0.05 + 1e-6   # truncated at 2 std
    assert fc.get_layer("preprocess").reads_raw_pixels


def test_tutorial_logits_start_at_std_one_over_fan_in():
    """The tutorial's softmax_linear: truncated normal of std 1 / fan-in (200 here): every weight within 2 / 200."""
    model = tf_tutorial_cnn(filters=(2, 2), fc_units=(8, 200), input_shape=(8, 8, 3), num_classes=3)
    kernel = model.get_layer("logits").kernel.numpy()
    assert 0.5 / 200 < kernel.std() and np.abs(kernel).max() <= 2 / 200 + 1e-7


def test_lrn_is_tensorflows_on_every_path():
    import tensorflow as tf
    x = np.random.default_rng(2).normal(scale=30.0, size=(2, 3, 3, 11)).astype("float32")
    layer = LocalResponseNormalization(**TUTORIAL_LRN)
    expected = tf.nn.local_response_normalization(x, 4, 1.0, 0.001 / 9, 0.75).numpy()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.composite(x)), expected, rtol=1e-5, atol=1e-6)
    wide = LocalResponseNormalization(depth_radius=20, alpha=0.5, beta=1.0)   # the window spans every channel
    np.testing.assert_allclose(wide(x), x / (1 + 0.5 * np.sum(x ** 2, axis=-1, keepdims=True)), rtol=1e-5)
    assert LocalResponseNormalization.from_config(layer.get_config()).get_config() == layer.get_config()
    mixed = LocalResponseNormalization(**TUTORIAL_LRN, dtype="mixed_bfloat16")   # no bfloat16 LRN kernel on CPU
    out = mixed(x.astype("bfloat16"))
    assert out.dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(out, "float32"), expected, rtol=2e-2, atol=1e-2)
    for bad in ({"depth_radius": -1}, {"bias": 0.0}, {"alpha": -1.0}, {"beta": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LocalResponseNormalization(**bad)


@pytest.mark.parametrize("arguments, named", [
    ({"head": "svm"}, "head"), ({"train_conv": "no"}, "train_conv"), ({"filters": (64,)}, "filters"),
    ({"filters": (64, 0)}, "filters"), ({"kernel_size": 0}, "kernel_size"), ({"fc_units": ()}, "fc_units"),
    ({"weight_decay": -0.1}, "weight_decay"), ({"num_classes": 0}, "num_classes"), ({"input_shape": (32, 32)},
                                                                                    "input_shape")])
def test_bad_arguments_are_named(arguments, named):
    with pytest.raises(ValueError, match=named):
        tf_tutorial_cnn(**arguments)


def test_cnn_random_trains_the_head_and_keeps_the_random_convolutions():
    """CNN(Random): one SGD step of the preset's recipe moves every head weight and no convolution weight; the
    frozen layers stay frozen in the saved config (resume, model.keras)."""
    preset = registry.info("cnn_cifar10_tf_fc_random")
    recipe = registry.recipe(preset)
    keras.utils.set_random_seed(0)
    model = recipe.compile(recipe.build(preset, None, TINY), recipe.hyperparameters(preset, lr=0.5))
    before = {w.path: w.numpy().copy() for w in model.weights}
    model.train_on_batch(_images(), np.arange(8) % 3)
    for weight in model.weights:
        moved = not np.array_equal(before[weight.path], weight.numpy())
        assert moved == weight.path.startswith(("fc", "logits")), weight.path
    copy = keras.Model.from_config(model.get_config())
    assert [copy.get_layer(name).trainable for name in ("conv1", "conv2", "fc1")] == [False, False, True]


def test_cnn_random_trains_its_head_on_cached_features_with_the_keras_loops_steps(tmp_path, monkeypatch):
    """CNN(Random) runs the frozen convolutions once (LayerwiseRecipe's classifier stage) and ends where the Keras
    loop over the whole network ends: the same head initialisation, batches and order, frozen weights untouched."""
    from kernelzoo.zoo.layerwise import recipe as layerwise_recipe
    from kernelzoo.zoo.recipe import Recipe

    preset = registry.info("cnn_cifar10_tf_fc_random")
    recipe = registry.recipe(preset)
    data = Data(train=stripes(48, size=12), test=stripes(12, size=12, seed=1), source="stripes",
                class_names=("h", "v", "flat"))
    hp = recipe.hyperparameters(preset, epochs=2, batch_size=8, lr=0.3)
    run = lambda folder: recipe.train(preset, data, str(tmp_path / folder),  # noqa: E731
                                      overrides=TINY, hp=hp, verbose=0, tensorboard=False)
    cached = run("cached")
    rows = training.read_log(str(tmp_path / "cached" / training.LOG_FILE))
    assert [row["stage"] for row in rows] == [1, 1]  # the classifier stage of a network without blocks
    assert not (tmp_path / "cached" / "features").exists()  # the cache goes at the end
    with pytest.raises(ValueError, match="strategy"):
        recipe.fit(cached["model"], data, str(tmp_path / "x"), hp, strategy=object())
    monkeypatch.setattr(layerwise_recipe._FrozenConvolutionsRecipe, "fit", Recipe.fit)
    keras_loop = run("keras_loop")
    for mine, theirs in zip(cached["model"].weights, keras_loop["model"].weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.path)


def test_presets_and_their_recipe(capsys):
    presets = {name: registry.info(name) for name in NAMES}
    assert {name: (p.config["head"], p.config["train_conv"], p.paper.value) for name, p in presets.items()} == {
        "cnn_cifar10_tf_fc": ("fc", True, 0.759), "cnn_cifar10_tf_linear": ("linear", True, 0.735),
        "cnn_cifar10_tf_fc_random": ("fc", False, 0.645), "cnn_cifar10_tf_linear_random": ("linear", False, 0.616)}
    recipe = registry.recipe(presets["cnn_cifar10_tf_fc"])
    assert isinstance(recipe, TutorialCNNRecipe) and isinstance(registry.recipe("layerwise_cifar10_fc"),
                                                                LayerwiseRecipe)
    hp = recipe.hyperparameters(presets["cnn_cifar10_tf_fc"])
    assert {key: hp[key] for key in ("optimizer", "lr", "momentum", "schedule", "batch_size")} == {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "schedule": "constant", "batch_size": 128}
    assert recipe.holdout(hp, recipe.options(validate_only=True)) == 10_000     # the paper's 10k held-out images
    assert recipe.lr_schedule(hp) is None                                        # constant: the optimizer's lr
    linear = recipe.hyperparameters(presets["cnn_cifar10_tf_linear"])            # epochs chosen held out in bf16
    assert (hp["epochs"], hp["precision"], linear["lr"], linear["epochs"], linear["precision"]) == (
        60, "mixed_bfloat16", 0.1, 27, "mixed_bfloat16")
    with pytest.raises(ValueError, match="precision"):
        recipe.hyperparameters(presets["cnn_cifar10_tf_fc"], precision="float16")
    from kernelzoo.cli import main
    assert main(["bench", "layerwise", "cnn_cifar10_tf_fc"]) == 2  # the stage benchmark is the layerwise recipe's
    assert "TutorialCNNRecipe (the Keras loop, no stages)" in capsys.readouterr().err


def test_precision_reaches_the_recipe_from_the_command_line(monkeypatch, tmp_path):
    from kernelzoo import cli

    seen = {}
    monkeypatch.setattr(TutorialCNNRecipe, "load_data", lambda self, *a, **k: Data(None, None, "stub"))
    monkeypatch.setattr(TutorialCNNRecipe, "train", lambda self, preset, data, out, hp=None, **k: seen.update(hp)
                        or {"model_path": "-"})
    cli.main(["train", "cnn_cifar10_tf_linear_random", "--precision", "mixed_bfloat16", "--out", str(tmp_path)])
    assert seen["precision"] == "mixed_bfloat16" and seen["lr"] == 0.003  # the preset's, chosen on held-out images


def test_a_mixed_bfloat16_run_saves_a_float32_model(tmp_path):
    """A mixed_bfloat16 run saves a float32 model.keras holding the trained weights (the checkpoint's float32
    variables, exactly: a copy that re-initialises fails), which the run also returns."""
    preset = registry.info("cnn_cifar10_tf_linear")
    recipe = registry.recipe(preset)
    data = Data(train=stripes(48, size=12), test=stripes(12, size=12, seed=1), source="stripes",
                class_names=("h", "v", "flat"))
    result = recipe.train(preset, data, str(tmp_path), overrides={"filters": (4, 6)}, verbose=0, tensorboard=False,
                          hp=recipe.hyperparameters(preset, epochs=1, batch_size=16, precision="mixed_bfloat16"))
    trained = keras.models.load_model(tmp_path / "checkpoints" / "last.keras")
    assert trained.get_layer("conv2").dtype_policy.name == "mixed_bfloat16"
    saved = keras.models.load_model(tmp_path / training.MODEL_FILE)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    for weight, checkpointed in zip(saved.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(weight, checkpointed)
    x = data.test[0].astype("float32")
    np.testing.assert_allclose(saved.predict(x, verbose=0), result["model"].predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert set(result["metrics"]) >= {"test_accuracy", "test_loss"}


def test_lrn_exports_as_onnx_lrn_with_parity(tmp_path):
    """The family contract exports the tiny run at the default opset (test_export: the full-size model to ONNX
    and SavedModel); here the newest opset (18), whose graph holds ONNX's own LRN (tf2onnx's handler: alpha
    times the window size)."""
    import onnx

    from kernelzoo.export import to_onnx, verify_artifact

    keras.utils.set_random_seed(1)
    model = tf_tutorial_cnn(train_conv=False, **TINY)
    images = _images(16, seed=3)
    path = to_onnx(model, str(tmp_path / "cnn.onnx"), opset=18)
    nodes = [node for node in onnx.load(path).graph.node if node.op_type == "LRN"]
    assert len(nodes) == 2
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attributes["size"] == 9 and attributes["alpha"] == pytest.approx(0.001)
    report = verify_artifact(model, path, images=images)
    assert report["ok_float32"] and report["top1_agreement"] == 1.0, report
