"""zoo/precision.py: mixed_bfloat16 on hardware that only emulates bfloat16 is announced, not silent."""
import warnings

import pytest
import tensorflow as tf

from kernelzoo.zoo import precision


@pytest.mark.parametrize("flags", [set(), {"avx2", "fma"}])
def test_emulated_bfloat16_warns(monkeypatch, flags):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda device_type=None: [])  # no GPU either
    with pytest.warns(RuntimeWarning, match="emulated"):
        precision.warn_if_emulated("mixed_bfloat16")


@pytest.mark.parametrize("name, flags", [("mixed_bfloat16", {"amx_bf16"}), ("mixed_bfloat16", {"avx512_bf16"}),
                                         ("float32", set())])
def test_native_bfloat16_or_float32_is_quiet(monkeypatch, name, flags):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_emulated(name)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision"):
        precision.warn_if_emulated("float16")


def test_float32_copy_keeps_every_weight_and_computes_in_float32():
    """float32_copy (what a mixed-precision run saves) copies every weight exactly, non-trainable statistics
    included, into a functional copy whose layers, input layer included, are all float32; the original stays mixed
    and the copy's outputs are its bfloat16 ones up to their rounding."""
    import keras
    import numpy as np

    with precision.precision_policy("mixed_bfloat16"):
        inputs = keras.Input((6, 6, 2))
        hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
        model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(keras.layers.Flatten()(hidden)))
    model.compile(loss="mse")
    rng = np.random.default_rng(0)  # not an initialiser's values: a copy that re-initialises differs everywhere
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()])
    copy = precision.float32_copy(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert {layer.dtype_policy.name for layer in model.layers[1:]} == {"mixed_bfloat16"}
    assert copy.compiled is False and [w.path for w in copy.weights] == [w.path for w in model.weights]
    for copied, weight in zip(copy.get_weights(), model.get_weights(), strict=True):
        assert copied.dtype == np.float32
        np.testing.assert_array_equal(copied, weight)
    x = rng.normal(size=(5, 6, 6, 2)).astype("float32")
    exact, rounded = np.asarray(copy(x)), np.asarray(model(x), "float32")
    assert exact.dtype == np.float32 and not np.array_equal(exact, rounded)
    np.testing.assert_allclose(exact, rounded, rtol=0, atol=0.02 * np.abs(exact).max())


def test_float32_copy_reaches_the_layers_of_a_nested_model():
    import keras

    with precision.precision_policy("mixed_bfloat16"):
        inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")], name="inner")
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, name="outer_dense")(inner(inputs)))
    copy = precision.float32_copy(model)
    assert copy.get_layer("inner").get_layer("inner_dense").dtype_policy.name == "float32"
