"""FusedBatchNormalization: Keras's BatchNormalization, trained through TF's fused op."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kernelzoo.layers import FusedBatchNormalization


def _layer(kind, shape, **kwargs):
    keras.utils.set_random_seed(0)
    layer = kind(momentum=0.8, gamma_initializer="random_normal", beta_initializer="random_normal", **kwargs)
    layer.build(shape)
    return layer


def _training_step(layer, x, weights):
    """Output, gradients (input, then the trainable weights) of sum(weights * output), moving statistics."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return ([np.asarray(tf.cast(y, tf.float32))] + [np.asarray(g) for g in grads]
            + [layer.moving_mean.numpy(), layer.moving_variance.numpy()])


def _op_types(layer, x, training):
    graph = tf.function(lambda v: layer(v, training=training)).get_concrete_function(tf.constant(x)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape", [(4, 5, 6, 7), (2, 1, 1, 3)])
def test_training_step_equals_keras(rng, center, scale, shape):
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    expected = _training_step(_layer(keras.layers.BatchNormalization, shape, center=center, scale=scale), x, weights)
    got = _training_step(_layer(FusedBatchNormalization, shape, center=center, scale=scale), x, weights)
    assert len(got) == len(expected) == 4 + center + scale
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_fused_op_in_training_only(rng):
    x = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    layer = _layer(FusedBatchNormalization, x.shape)
    assert "FusedBatchNormV3" in _op_types(layer, x, True)
    assert "FusedBatchNormV3" not in _op_types(layer, x, False)  # inference: Keras's path (export traces it)
    x = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    np.testing.assert_allclose(layer(x, training=False), _layer(keras.layers.BatchNormalization, x.shape)(x),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,axis", [((6, 4), -1), ((2, 3, 3, 4), 1), ((2, 3, 3, 4, 2), -1)])
def test_other_ranks_and_axes_take_keras_path(rng, shape, axis):
    x = rng.normal(size=shape).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    layer = _layer(FusedBatchNormalization, shape, axis=axis)
    assert "FusedBatchNormV3" not in _op_types(layer, x, True)
    expected = _training_step(_layer(keras.layers.BatchNormalization, shape, axis=axis), x, weights)
    for g, e in zip(_training_step(_layer(FusedBatchNormalization, shape, axis=axis), x, weights), expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_frozen_layer_uses_moving_statistics(rng):
    x = rng.normal(1.0, 2.0, (2, 3, 3, 4)).astype("float32")
    layer = _layer(FusedBatchNormalization, x.shape)
    layer.trainable = False
    assert "FusedBatchNormV3" not in _op_types(layer, x, True)
    np.testing.assert_allclose(layer(x, training=True), layer(x, training=False))


def test_mixed_bfloat16_close_to_keras(rng):
    shape = (8, 6, 6, 5)
    x = rng.normal(1.0, 2.0, shape).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    results = []
    for kind in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = _layer(kind, shape, dtype="mixed_bfloat16")
        assert layer(x, training=True).dtype == "bfloat16"
        results.append(_training_step(layer, x, weights))
    for g, e in zip(*results):  # bfloat16 keeps 8 bits: outputs and gradients within a few of its steps
        np.testing.assert_allclose(g, e, rtol=0.05, atol=0.05 * np.abs(e).max())


def test_saves_and_loads(tmp_path, rng):
    x = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.5, epsilon=1e-2, name="bn")(inputs))
    model(x, training=True)
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization
    assert loaded.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_layer_close_to_keras(rng, dtype):
    """A layer whose weights and moving statistics are themselves low precision (not a mixed policy)."""
    shape = (8, 6, 6, 5)
    x = rng.normal(1.0, 2.0, shape).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    results = []
    for kind in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = _layer(kind, shape, dtype=dtype)
        assert layer.moving_mean.dtype == dtype
        results.append([np.asarray(r, "float32") for r in _training_step(layer, x, weights)])
    assert "FusedBatchNormV3" in _op_types(_layer(FusedBatchNormalization, shape, dtype=dtype), x, True)
    for g, e in zip(*results):
        np.testing.assert_allclose(g, e, rtol=0.05, atol=0.05 * np.abs(e).max())


def test_without_center_and_scale_equals_keras(rng):
    shape = (4, 3, 3, 2)
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    expected = _training_step(_layer(keras.layers.BatchNormalization, shape, center=False, scale=False), x, weights)
    got = _training_step(_layer(FusedBatchNormalization, shape, center=False, scale=False), x, weights)
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_fit_equals_keras(rng):
    """Compiled training (fit's tf.function): weights and moving statistics follow Keras's layer's."""
    x = rng.normal(1.0, 2.0, (16, 4, 4, 3)).astype("float32")
    y = rng.normal(size=(16, 4, 4, 3)).astype("float32")
    trained = []
    for kind in (keras.layers.BatchNormalization, FusedBatchNormalization):
        inputs = keras.Input((4, 4, 3))
        model = keras.Model(inputs, _layer(kind, (None, 4, 4, 3))(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        trained.append([w.numpy() for w in model.weights])
    for g, e in zip(*trained):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
