"""CKN family (issue 14): the CKNConv2D layer, PerImageWhitening, spherical k-means, the classifier,
the unsupervised recipe end to end, saving and export."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kernelzoo.layers import CKNConv2D
from kernelzoo.layers.ckn import gaussian_filter, inverse_sqrt
from kernelzoo.zoo.ckn import ImageWhitening, PerImageWhitening, ckn, init_ckn_layers, preprocessing, spherical_kmeans
from kernelzoo.zoo.ckn.preprocessing import inverse_sqrt_spd

LAYER_CONFIGS = [
    dict(filters=4, kernel_size=3),
    dict(filters=3, kernel_size=(2, 3), subsampling=2, padding="valid", kernel_function="poly2"),
    dict(filters=5, kernel_size=1, subsampling=3, sigma=0.5, eigenvalue_floor=1e-3, nystrom_shift=0.01,
         anchors_regularizer="l2"),
    dict(filters=2, kernel_size=3, trainable=False, anchors_initializer="he_normal"),
]


def _kappa(u, kernel_function="exp", sigma=0.6):
    return u ** 2 if kernel_function == "poly2" else np.exp((u - 1) / sigma ** 2)


def _points_layer(points, anchors, kernel_function="exp", floor=1e-9):
    """A 1x1 CKN layer whose anchors are the given unit vectors, and the points as a (1, n, 1, d) map."""
    layer = CKNConv2D(anchors.shape[0], 1, kernel_function=kernel_function, padding="valid", eigenvalue_floor=floor)
    layer.build((1, len(points), 1, points.shape[1]))
    layer.set_anchors(anchors.T)
    return layer, points[None, :, None, :].astype("float32")


def _exact_gram(points, kernel_function="exp"):
    norms = np.linalg.norm(points, axis=1)
    return np.outer(norms, norms) * _kappa(points @ points.T / np.outer(norms, norms), kernel_function)


def _psi(layer, x):
    return np.asarray(layer(x))[0, :, 0, :].astype("float64")


# ----------------------------------------------------------------------------- the Nystrom map


def test_nystrom_identity_with_the_points_as_anchors(rng):
    points = rng.normal(size=(12, 6)) * rng.uniform(0.5, 3.0, size=(12, 1))
    layer, x = _points_layer(points, points / np.linalg.norm(points, axis=1, keepdims=True))
    psi = _psi(layer, x)
    np.testing.assert_allclose(psi @ psi.T, _exact_gram(points), rtol=1e-4, atol=1e-4)


def test_nystrom_identity_for_any_point_when_anchors_span_the_poly2_space(rng):
    # kappa(u) = u^2 on R^3 has a 6-dimensional feature space: 6 generic anchors span it.
    anchors = rng.normal(size=(6, 3))
    layer, x = _points_layer(rng.normal(size=(20, 3)), anchors / np.linalg.norm(anchors, axis=1, keepdims=True),
                             kernel_function="poly2")
    psi = _psi(layer, x)
    np.testing.assert_allclose(psi @ psi.T, _exact_gram(x[0, :, 0], "poly2"), rtol=1e-4, atol=1e-4)


def test_approximation_error_falls_as_anchors_grow(rng):
    centres = rng.normal(size=(8, 9))
    points = centres[rng.integers(0, 8, 300)] + 0.4 * rng.normal(size=(300, 9))
    exact = _exact_gram(points)
    errors = []
    for count in (4, 16, 64, 256):
        anchors, _ = spherical_kmeans(points, count, seed=0)
        layer, x = _points_layer(points, anchors, floor=1e-6)
        psi = _psi(layer, x)
        errors.append(np.abs(psi @ psi.T - exact).mean())
    assert all(later < 0.8 * earlier for earlier, later in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("shift", [0.0, 0.05])
@pytest.mark.parametrize("kernel_function", ["exp", "poly2"])
def test_forward_matches_a_numpy_reference(rng, kernel_function, shift):
    """The factor is V diag(1 / (sqrt(lambda) + c)) V^T with c = `nystrom_shift` (0: the exact inverse square root
    of kappa(Z^T Z))."""
    layer = CKNConv2D(5, 3, subsampling=2, kernel_function=kernel_function, sigma=0.7, nystrom_shift=shift)
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")
    out = np.asarray(layer(x))
    z = np.asarray(layer.anchors).reshape(-1, 5).astype("float64")
    z /= np.linalg.norm(z, axis=0)
    values, vectors = np.linalg.eigh(_kappa(z.T @ z, kernel_function, sigma=0.7))
    factor = (vectors / (np.sqrt(values) + shift)) @ vectors.T
    padded = np.pad(x.astype("float64"), ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = np.stack([np.stack([padded[:, i:i + 3, j:j + 3].reshape(2, -1) for j in range(6)], axis=1)
                        for i in range(7)], axis=1)  # (2, 7, 6, 27) in (row, col, channel) order
    norms = np.linalg.norm(patches, axis=-1, keepdims=True)  # (2, 7, 6, 1)
    maps = norms * _kappa(patches @ z / norms, kernel_function, sigma=0.7)
    np.testing.assert_allclose(out, _numpy_pool(maps, 2) @ factor, rtol=1e-4, atol=1e-5)


def _numpy_pool(maps, s):
    """Gaussian pooling written out: sum over the (2s+1)^2 window of the s-padded map at stride s."""
    taps = np.exp(-np.arange(-s, s + 1) ** 2 / s ** 2)
    taps /= taps.sum()
    padded = np.pad(maps, ((0, 0), (s, s), (s, s), (0, 0)))
    rows, cols = -(-maps.shape[1] // s), -(-maps.shape[2] // s)
    out = np.zeros((maps.shape[0], rows, cols, maps.shape[3]))
    for i in range(rows):
        for j in range(cols):
            for a in range(2 * s + 1):
                for b in range(2 * s + 1):
                    out[:, i, j] += taps[a] * taps[b] * padded[:, i * s + a, j * s + b]
    return out


@pytest.mark.parametrize("s, size", [(2, (8, 8)), (3, (7, 11)), (6, (16, 16))])
def test_gaussian_pooling_matches_the_direct_sum(rng, s, size):
    layer = CKNConv2D(4, 1, subsampling=s)
    maps = rng.normal(size=(2,) + size + (4,)).astype("float32")
    np.testing.assert_allclose(np.asarray(layer.pool(maps)), _numpy_pool(maps.astype("float64"), s),
                               rtol=1e-5, atol=1e-6)
    taps = gaussian_filter(s)
    assert taps.shape == (2 * s + 1,) and abs(taps.sum() - 1) < 1e-12


def test_gaussian_pooling_gradient_is_the_direct_sum_adjoint(rng):
    layer = CKNConv2D(3, 1, subsampling=2)
    maps = rng.normal(size=(2, 7, 6, 3))
    weights = rng.normal(size=(2, 4, 3, 3))
    x = tf.constant(maps)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer.pool(x) * weights)
    grad = tape.gradient(loss, x).numpy()
    for index in [(0, 0, 0, 0), (1, 3, 2, 1), (0, 6, 5, 2), (1, 4, 1, 0)]:  # linear: a unit step is exact
        step = np.zeros_like(maps)
        step[index] = 1.0
        numeric = np.sum((_numpy_pool(maps + step, 2) - _numpy_pool(maps, 2)) * weights)
        assert abs(numeric - grad[index]) < 1e-6, (index, numeric, grad[index])  # float32 taps


def test_pooling_needs_a_known_map_size():
    layer = CKNConv2D(4, 1, subsampling=2)
    layer.build((None, 8, 8, 3))  # built on a known size, then traced on an unknown one
    with pytest.raises(ValueError, match="known map size"):
        tf.function(layer).get_concrete_function(tf.TensorSpec((None, None, None, 3)))


@pytest.mark.parametrize("size", [(None, None), (8, None)])
def test_subsampling_needs_a_static_input_size_at_build(size):
    """At build, not at a later predict on another input size (which retraces with unknown sizes)."""
    with pytest.raises(ValueError, match="subsampling=2 needs a static spatial input size"):
        CKNConv2D(4, 3, subsampling=2)(keras.Input(size + (3,)))
    assert CKNConv2D(4, 3)(keras.Input(size + (3,))).shape == (None,) + size + (4,)  # s = 1: any size


@pytest.mark.parametrize("kernel_function", ["exp", "poly2"])
def test_patch_map_is_the_norm_times_kappa_of_the_cosine(rng, kernel_function):
    layer = CKNConv2D(4, 1, kernel_function=kernel_function, sigma=0.7)
    squares = np.concatenate([rng.uniform(1e-8, 1e-6, size=(1, 2, 3, 1)), rng.uniform(0.1, 9.0, size=(1, 2, 3, 1))])
    dots = rng.uniform(-1, 1, size=(2, 2, 3, 4)) * np.sqrt(squares)  # |cosine| <= 1
    norms = np.sqrt(squares)
    np.testing.assert_allclose(np.asarray(layer.patch_map(dots.astype("float32"), squares.astype("float32"))),
                               norms * _kappa(dots / norms, kernel_function, sigma=0.7), rtol=2e-6, atol=1e-12)


# ----------------------------------------------------------------------------- numerics and gradients


def test_zero_patches_give_zero_features_and_finite_gradients():
    layer = CKNConv2D(4, 3, subsampling=2)
    x = tf.zeros((1, 6, 6, 2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, [x, layer.anchors])
    assert np.all(np.isfinite(out)) and np.abs(np.asarray(out)).max() < 1e-3
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.3])
def test_inverse_sqrt_gradient_matches_finite_differences(rng, shift):
    a = rng.normal(size=(5, 5))
    matrix = a @ a.T + 0.5 * np.eye(5)
    weights = rng.normal(size=(5, 5))
    values, vectors = np.linalg.eigh(matrix)
    np.testing.assert_allclose(np.asarray(inverse_sqrt(tf.constant(matrix), 1e-9, shift)),
                               (vectors / (np.sqrt(values) + shift)) @ vectors.T, rtol=1e-10, atol=1e-12)

    def value(m):
        return float(np.sum(np.asarray(inverse_sqrt(tf.constant(m), 1e-9, shift)) * weights))

    m = tf.constant(matrix)
    with tf.GradientTape() as tape:
        tape.watch(m)
        loss = tf.reduce_sum(inverse_sqrt(m, 1e-9, shift) * weights)
    grad = tape.gradient(loss, m).numpy()
    for i, j in [(0, 0), (1, 3), (4, 2)]:  # symmetric perturbations: the matrix stays symmetric
        step = np.zeros((5, 5))
        step[i, j] = step[j, i] = 1e-6
        numeric = (value(matrix + step) - value(matrix - step)) / 2e-6
        analytic = grad[i, j] + grad[j, i] if i != j else grad[i, i]
        assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(numeric)), (i, j, numeric, analytic)


@pytest.mark.parametrize("kernel_function", ["exp", "poly2"])
def test_layer_gradients_match_finite_differences(rng, kernel_function):
    layer = CKNConv2D(3, 2, subsampling=2, kernel_function=kernel_function, sigma=0.8, dtype="float32")
    x = tf.Variable(rng.normal(size=(1, 4, 4, 2)).astype("float32"))
    weights = rng.normal(size=(1, 2, 2, 3)).astype("float32")
    layer(x)
    layer.anchors.assign(rng.normal(size=tuple(layer.anchors.shape)).astype("float32"))  # seeded: deterministic

    def value():
        return float(np.sum(np.asarray(layer(x), "float64") * weights))

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * weights)
    grads = tape.gradient(loss, [layer.anchors, x])
    indices = [[(0, 0, 0, 0), (1, 0, 1, 2), (1, 1, 0, 1)], [(0, 0, 0, 0), (0, 1, 2, 1), (0, 3, 3, 0)]]
    for variable, grad, where in zip([layer.anchors, x], grads, indices):
        for index in where:
            numeric = _central_difference(value, variable, index, 1e-2)
            assert abs(numeric - grad.numpy()[index]) < 2e-2 * max(1.0, abs(numeric)), (index, numeric, grad[index])


def _central_difference(value, variable, index, step):
    """(value() with variable[index] + step, minus with - step) / (2 step); the variable is restored."""
    start = variable.numpy()
    values = []
    for sign in (1, -1):
        moved = start.copy()
        moved[index] += sign * step
        variable.assign(moved)
        values.append(value())
    variable.assign(start)
    return (values[0] - values[1]) / (2 * step)


def test_repeated_anchors_keep_gradients_finite(rng):
    layer = CKNConv2D(4, 1)
    layer.build((1, 3, 3, 3))
    anchor = rng.normal(size=(3, 1))
    layer.anchors.assign(np.tile(anchor, (1, 4)).reshape(1, 1, 3, 4))  # a singular Gram matrix
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(rng.normal(size=(1, 3, 3, 3)).astype("float32")))
    assert np.all(np.isfinite(tape.gradient(loss, layer.anchors)))


def test_eigenvalue_floor_bounds_the_factor_of_repeated_anchors():
    """kappa(Z^T Z) of two equal anchors is singular: its zero eigenvalue is raised to the floor before ^(-1/2)."""
    layer = CKNConv2D(2, 1)
    layer.build((None, 1, 1, 3))
    layer.set_anchors(np.ones((3, 2)))
    values, vectors = np.linalg.eigh(np.ones((2, 2)))  # exp kernel: kappa(1) = 1 everywhere
    expected = (vectors / np.sqrt(np.maximum(values, layer.eigenvalue_floor))) @ vectors.T
    np.testing.assert_allclose(np.asarray(layer.nystrom_factor()), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- the frozen (inference) mode


def test_frozen_layer_uses_the_stored_factor_and_matches(rng):
    layer = CKNConv2D(6, 3, subsampling=2)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    live = np.asarray(layer(x))
    np.testing.assert_allclose(np.asarray(layer.factor), np.eye(6))  # not refreshed while trainable
    layer.trainable = False
    np.testing.assert_allclose(np.asarray(layer.factor), np.asarray(layer.nystrom_factor()))
    np.testing.assert_allclose(np.asarray(layer(x)), live, rtol=1e-6, atol=1e-6)
    assert layer.trainable_weights == []
    layer.set_anchors(rng.normal(size=(27, 6)))  # refreshes the stored factor too
    layer.trainable = True
    np.testing.assert_allclose(np.asarray(layer.factor), np.asarray(layer.nystrom_factor()), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="anchors"):
        layer.set_anchors(np.ones((26, 6)))


def test_set_weights_of_a_frozen_layer_refreshes_its_factor(rng):
    """A trainable layer's `factor` weight is never refreshed (the identity here): copied as it is, it was stale."""
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    source = CKNConv2D(6, 3, subsampling=2)
    source.build(x.shape)
    frozen = CKNConv2D(6, 3, subsampling=2, trainable=False)
    frozen.build(x.shape)
    frozen.set_weights(source.get_weights())
    np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(source(x)), rtol=1e-6, atol=1e-6)
    unbuilt = CKNConv2D(6, 3, trainable=False)
    unbuilt.set_weights([])  # nothing to set, nothing to refresh (as Keras's)


def test_set_anchors_takes_only_the_layer_shape_or_its_matrix(rng):
    layer = CKNConv2D(4, (3, 2))
    layer.build((None, 8, 8, 2))
    anchors = rng.normal(size=(3, 2, 2, 4)).astype("float32")
    layer.set_anchors(anchors)
    np.testing.assert_array_equal(np.asarray(layer.anchors), anchors)
    layer.set_anchors(anchors.reshape(12, 4))
    np.testing.assert_array_equal(np.asarray(layer.anchors), anchors)
    for shape in [(2, 3, 2, 4), (6, 2, 4), (4, 3, 4)]:  # the right size and last axis, another layout
        with pytest.raises(ValueError, match=r"`anchors` must have shape \(3, 2, 2, 4\) or \(12, 4\)"):
            layer.set_anchors(anchors.reshape(shape))


def _count_refreshes(monkeypatch):
    """The names of the CKN layers whose factor is refreshed (an eigendecomposition each), in order."""
    calls, refresh = [], CKNConv2D.refresh_factor
    monkeypatch.setattr(CKNConv2D, "refresh_factor", lambda layer: (calls.append(layer.name), refresh(layer))[1])
    return calls


def test_a_frozen_layer_refreshes_its_factor_once_when_built_frozen_or_given_anchors(rng, monkeypatch):
    calls = _count_refreshes(monkeypatch)
    layer = CKNConv2D(6, 3, trainable=False, name="frozen")
    layer.build((None, 8, 8, 3))
    assert calls == ["frozen"]                        # the factor of the initial anchors
    CKNConv2D.trainable.fset(layer, False)            # already frozen: its factor is already its anchors' (the
    assert calls == ["frozen"]                        # setter itself: TF's __setattr__ skips an unchanged value)
    trainable = CKNConv2D(6, 3, name="trainable")
    trainable.build((None, 8, 8, 3))
    trainable.set_anchors(rng.normal(size=(27, 6)))   # a trainable layer computes its factor in call
    assert calls == ["frozen"]
    trainable.trainable = False
    assert calls == ["frozen", "trainable"]
    np.testing.assert_allclose(np.asarray(trainable.factor), np.asarray(trainable.nystrom_factor()), atol=1e-6)


def test_load_model_refreshes_each_frozen_factor_once_and_outputs_are_unchanged(tmp_path, rng, monkeypatch):
    model = _tiny_model("image")
    model.get_layer("ckn1").set_anchors(rng.normal(size=(27, 6)))
    model.get_layer("ckn1").trainable = False         # one frozen layer, one trainable layer
    images = rng.integers(0, 256, (4, 12, 12, 3)).astype("float32")
    model.save(tmp_path / "ckn.keras")
    calls = _count_refreshes(monkeypatch)
    loaded = keras.models.load_model(tmp_path / "ckn.keras")
    assert calls == ["ckn1"]                          # after its anchors load, not also from the initial ones
    layer = loaded.get_layer("ckn1")
    np.testing.assert_array_equal(np.asarray(layer.factor), np.asarray(model.get_layer("ckn1").factor))
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))


def test_a_saved_layer_holds_its_anchors_and_recomputes_its_factor_on_load(rng):
    layer = CKNConv2D(6, 3, trainable=False)
    layer.build((None, 8, 8, 3))
    layer.set_anchors(rng.normal(size=(27, 6)))
    store = {}
    layer.save_own_variables(store)
    assert list(store) == ["0"]                       # the anchors; the factor is a function of them
    loaded = CKNConv2D(6, 3, trainable=False)
    loaded.build((None, 8, 8, 3))
    loaded.load_own_variables(store)
    np.testing.assert_array_equal(np.asarray(loaded.factor), np.asarray(layer.factor))
    trainable = CKNConv2D(6, 3)
    trainable.build((None, 8, 8, 3))
    trainable.load_own_variables(store)               # its factor is computed in call: no eigendecomposition here
    np.testing.assert_array_equal(np.asarray(trainable.factor), np.eye(6))
    unbuilt, nothing = CKNConv2D(6, 3), {}
    unbuilt.save_own_variables(nothing)               # saves and loads nothing, as a Keras layer
    unbuilt.load_own_variables(nothing)
    assert nothing == {}
    saved_with_factor = {"0": np.asarray(layer.anchors), "1": np.full((6, 6), 0.5, "float32")}
    loaded.load_own_variables(saved_with_factor)      # a file written before: its factor as saved
    np.testing.assert_array_equal(np.asarray(loaded.factor), saved_with_factor["1"])
    with pytest.raises(ValueError, match="anchors .* got 3 arrays"):
        loaded.load_own_variables(dict(saved_with_factor, **{"2": saved_with_factor["1"]}))


def test_frozen_graph_has_no_eigendecomposition(rng):
    layer = CKNConv2D(4, 3, trainable=False)
    layer.build((None, 6, 6, 3))
    graph = tf.function(lambda x: layer(x)).get_concrete_function(tf.TensorSpec((None, 6, 6, 3))).graph
    assert "SelfAdjointEigV2" not in {op.type for op in graph.get_operations()}


# ----------------------------------------------------------------------------- Keras contract


@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_config_round_trip_and_output_shape(rng, config):
    layer = CKNConv2D(**config)
    x = rng.normal(size=(2, 7, 8, 3)).astype("float32")
    out = layer(x)
    assert tuple(out.shape) == layer.compute_output_shape(x.shape)
    clone = CKNConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(out), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("regularizer, penalty", [(keras.regularizers.L2(0.1), lambda a: 0.1 * np.sum(a ** 2)),
                                                  (keras.regularizers.L1(0.02), lambda a: 0.02 * np.sum(np.abs(a)))],
                         ids=["l2", "l1"])
def test_anchors_initializer_and_regularizer_reach_the_anchors_and_the_config(rng, regularizer, penalty):
    """The regularizer of the anchors as the layer holds them (before their normalisation), in layer.losses; both
    arguments through the config to a clone (the round trip above compares a clone with its own config)."""
    layer = CKNConv2D(3, 2, anchors_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=4),
                      anchors_regularizer=regularizer)
    layer(rng.normal(size=(1, 4, 4, 2)).astype("float32"))
    anchors = layer.anchors.numpy()
    assert anchors.min() >= 0.5 and anchors.max() <= 1.5  # the initializer's, not random_normal's
    np.testing.assert_allclose([float(loss) for loss in layer.losses], [penalty(anchors)], rtol=1e-5)
    clone = CKNConv2D.from_config(layer.get_config())
    for name in ("anchors_initializer", "anchors_regularizer", "nystrom_shift", "eigenvalue_floor"):
        assert keras.saving.serialize_keras_object(getattr(clone, name)) == \
            keras.saving.serialize_keras_object(getattr(layer, name)), name


def test_kernel_function_is_a_string_attribute_not_kernel_and_old_configs_load():
    layer = CKNConv2D(2, 3, kernel_function="poly2")
    assert layer.kernel_function == "poly2" and not hasattr(layer, "kernel")
    config = layer.get_config()
    assert config["kernel_function"] == "poly2" and "kernel" not in config
    config["kernel"] = config.pop("kernel_function")  # as saved by the first CKN runs (runs/ckn)
    assert CKNConv2D.from_config(config).kernel_function == "poly2"
    assert CKNConv2D(2, 3).kernel_function == "exp"
    with pytest.raises(ValueError, match="`kernel`.*`kernel_function`"):  # the legacy name must not win silently
        CKNConv2D(2, 3, kernel="poly2", kernel_function="exp")


@pytest.mark.parametrize("kwargs, name", [
    (dict(filters=0, kernel_size=3), "filters"), (dict(filters=2, kernel_size=(3, 0)), "kernel_size"),
    (dict(filters=2, kernel_size=3, subsampling=0), "subsampling"),
    (dict(filters=2, kernel_size=3, kernel_function="rbf"), "kernel_function"),
    (dict(filters=2, kernel_size=3, sigma=0), "sigma"),
    (dict(filters=2, kernel_size=3, padding="full"), "padding"),
    (dict(filters=2, kernel_size=3, eigenvalue_floor=-1), "eigenvalue_floor"),
    (dict(filters=2, kernel_size=3, nystrom_shift=-0.1), "nystrom_shift"),
    (dict(filters=2, kernel_size=3, sigma=float("inf")), "sigma"),
    (dict(filters=2, kernel_size=3, eigenvalue_floor=float("inf")), "eigenvalue_floor"),
    (dict(filters=2, kernel_size=3, nystrom_shift=float("inf")), "nystrom_shift")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CKNConv2D(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(whitening_eps=-1.0), "whitening_eps"), (dict(kernel_sizes=(0, 3)), "kernel_sizes"),
    (dict(kernel_sizes=(3, (2, 0))), "kernel_sizes"), (dict(kernels="rbf"), "kernels"),
    (dict(whitening="image", whitening_power=0.3), "whitening_power"),
    (dict(whitening="patches", whitening_power=0.5), "whitening_power"),  # it would be ignored
    (dict(trainable_anchors="no"), "trainable_anchors"), (dict(trainable_anchors=0), "trainable_anchors"),
    (dict(whitening="image", kernel_sizes=(1, 3)), "kernel_sizes"),  # the whitening's patches: 1x1 ones whiten to 0
    (dict(whitening="patches", kernel_sizes=(1, 3)), "kernel_sizes")])
def test_builder_errors_name_the_builder_arguments(kwargs, name):
    """Not the layers' own (`eps`, `patch_size`, `kernel_function`, `power`); no argument is silently ignored."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        ckn(filters=(4, 4), input_shape=(8, 8, 3), **kwargs)


def test_builder_whitening_power_defaults_to_the_reference():
    assert ckn(filters=(4, 4), input_shape=(8, 8, 3), whitening="image").get_layer("whitening").power == 0.25
    model = ckn(filters=(4, 4), input_shape=(8, 8, 3), whitening="image", whitening_power=0.5)
    assert model.get_layer("whitening").power == 0.5


def test_builder_patches_whitening_is_read_by_a_1x1_first_layer():
    """whitening="patches" turns the k x k patches into channels: the first CKN layer reads them with a 1x1 window,
    the later layers keep their patch sizes."""
    model = ckn(filters=(4, 4), kernel_sizes=(3, 2), input_shape=(8, 8, 3), whitening="patches")
    assert [model.get_layer(name).kernel_size for name in ("ckn1", "ckn2")] == [(1, 1), (2, 2)]
    assert model.get_layer("ckn1").input.shape[-1] == 27


def _tiny_model(whitening="patches", kernels=("exp", "poly2"), **kwargs):
    model = ckn(filters=(6, 8), kernel_sizes=(3, 2), subsamplings=(2, 3), kernels=kernels,
                whitening=whitening, num_classes=3, input_shape=(12, 12, 3), **kwargs)
    return model


def test_save_and_load_in_a_fresh_process(tmp_path, rng):
    model = _tiny_model("image", nystrom_shift=0.01)
    images = rng.integers(0, 256, (40, 12, 12, 3)).astype("uint8")
    model.get_layer("ckn1").trainable = False  # one frozen layer, one trainable layer
    path = str(tmp_path / "ckn.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", images[:5])
    np.save(tmp_path / "y.npy", np.asarray(model(images[:5].astype("float32"))))
    script = textwrap.dedent(f"""
        import numpy as np, keras, kernelzoo
        model = keras.models.load_model({path!r})
        assert [l.trainable for l in model.layers[2:4]] == [False, True]
        out = np.asarray(model(np.load({str(tmp_path / 'x.npy')!r}).astype("float32")))
        np.testing.assert_allclose(out, np.load({str(tmp_path / 'y.npy')!r}), rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------- whitening, k-means, classifier


def test_newton_schulz_inverse_sqrt_matches_the_eigendecomposition(rng):
    a = rng.normal(size=(4, 12, 50)) * np.logspace(0, -3, 12)[None, :, None]
    cov = np.einsum("bdn,ben->bde", a, a) / 50
    trace = np.trace(cov, axis1=1, axis2=2)[:, None, None]
    matrices = cov + 0.01 * trace / 12 * np.eye(12)  # the smallest regularisation the layer is used with
    values, vectors = np.linalg.eigh(matrices)
    exact = np.einsum("bde,be,bfe->bdf", vectors, values ** -0.5, vectors)
    approx = np.asarray(inverse_sqrt_spd(matrices.astype("float32"), trace.astype("float32")))
    np.testing.assert_allclose(approx, exact, atol=1e-5 * np.abs(exact).max())


def test_per_image_whitening_matches_a_numpy_reference(rng):
    images = np.cumsum(np.cumsum(rng.normal(size=(3, 10, 10, 3)), 1), 2) @ rng.normal(size=(3, 3)) + 100
    layer = PerImageWhitening(3, eps=0.1)
    out = np.asarray(layer(images.astype("float32"))).reshape(3, 100, 27)
    assert tuple(layer.compute_output_shape((None, 10, 10, 3))) == (None, 10, 10, 27)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for image, whitened in zip(padded, out):
        patches = np.stack([image[i:i + 3, j:j + 3] for i in range(10) for j in range(10)])  # (100, 3, 3, 3)
        patches = (patches - patches.mean(axis=(1, 2), keepdims=True)).reshape(100, 27)
        patches -= patches.mean(axis=0)
        cov = patches.T @ patches / 100
        values, vectors = np.linalg.eigh(cov + 0.1 * np.trace(cov) / 27 * np.eye(27))
        expected = patches @ (vectors / np.sqrt(values)) @ vectors.T
        np.testing.assert_allclose(whitened, expected, atol=1e-4 * np.abs(expected).max())
    clone = PerImageWhitening.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="eps"):
        PerImageWhitening(3, eps=0)


def test_per_image_whitening_maps_a_zero_image_to_zero(rng, monkeypatch):
    images = np.stack([np.zeros((6, 6, 3)), rng.normal(size=(6, 6, 3)) + 100]).astype("float32")
    out = np.asarray(PerImageWhitening(3)(images))
    np.testing.assert_array_equal(out[0], 0)          # trace 0 (the zero padding makes any other image's > 0)
    monkeypatch.setattr(preprocessing, "TRACE_FLOOR", 0.0)  # the layer as it was: 0 / 0 for the zero image
    unfloored = np.asarray(PerImageWhitening(3)(images))
    assert np.isnan(unfloored[0]).all()
    np.testing.assert_array_equal(out[1], unfloored[1])  # any other image's output is bit-identical


def _reference_image_whitening(image, k, power, eps):
    """The reference preprocessing written out directly (float64, eigendecomposition, explicit loops):
    centre every k x k patch per channel, rebuild the image by averaging; whiten the patches with their
    Gram matrix G (+ eps tr(G) / D) to the -power; rebuild by averaging."""
    h, w, c = image.shape
    corners = [(i, j) for i in range(h - k + 1) for j in range(w - k + 1)]

    def rebuild(patches):
        total, count = np.zeros((h, w, c)), np.zeros((h, w, 1))
        for (i, j), patch in zip(corners, patches):
            total[i:i + k, j:j + k] += patch
            count[i:i + k, j:j + k] += 1
        return total / count

    patches = np.stack([image[i:i + k, j:j + k] for i, j in corners])
    image = rebuild(patches - patches.mean(axis=(1, 2), keepdims=True))
    patches = np.stack([image[i:i + k, j:j + k] for i, j in corners]).reshape(len(corners), -1)
    gram = patches.T @ patches / len(corners)
    if np.trace(gram) == 0:
        return np.zeros_like(image)
    values, vectors = np.linalg.eigh(gram + eps * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0]))
    return rebuild((patches @ (vectors * values ** -power) @ vectors.T).reshape(len(corners), k, k, c))


@pytest.mark.parametrize("power, eps, k", [(0.25, 1e-3, 3), (0.5, 1e-3, 3), (0.25, 1e-4, 2)])
def test_image_whitening_matches_a_numpy_reference(rng, power, eps, k):
    images = np.stack([rng.integers(0, 256, (11, 9, 3)).astype("float64"),
                       np.cumsum(np.cumsum(rng.normal(size=(11, 9, 3)), 0), 1) * 4 + 128,  # smooth: ill-conditioned
                       np.full((11, 9, 3), 77.0)])  # flat: maps to zero
    layer = ImageWhitening(k, power=power, eps=eps)
    out = np.asarray(layer(images.astype("float32")))
    assert out.shape == images.shape and tuple(layer.compute_output_shape((None, 11, 9, 3))) == (None, 11, 9, 3)
    for image, whitened in zip(images, out):
        expected = _reference_image_whitening(image / 255.0, k, power, eps)
        np.testing.assert_allclose(whitened, expected, atol=2e-5 * max(np.abs(expected).max(), 1e-3))
    clone = ImageWhitening.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="power"):
        ImageWhitening(3, power=0.3)
    with pytest.raises(ValueError, match="eps"):
        ImageWhitening(3, eps=0)


def test_whitening_configs_keep_power_and_eps():
    """A saved model's whitening is rebuilt from its config: a non-default power or eps must not fall back."""
    for layer in (ImageWhitening(3, power=0.5, eps=1e-4), PerImageWhitening(2, eps=0.3)):
        clone = type(layer).from_config(layer.get_config())
        assert (clone.patch_size, clone.eps, getattr(clone, "power", None)) == \
            (layer.patch_size, layer.eps, getattr(layer, "power", None))


def test_image_whitening_needs_an_image_of_at_least_a_patch():
    with pytest.raises(ValueError, match="at least 3x3"):
        ImageWhitening(3)(np.zeros((1, 2, 5, 3), "float32"))


@pytest.mark.parametrize("layer", [ImageWhitening, PerImageWhitening])
def test_whitening_refuses_1x1_patches(layer):
    """A 1x1 patch centred per channel is 0: every image would whiten to zeros, so all get the same features."""
    with pytest.raises(ValueError, match="`patch_size`"):
        layer(patch_size=1)
    assert layer(patch_size=2).patch_size == 2


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_spherical_kmeans_finds_planted_directions(rng, init):
    directions = np.linalg.qr(rng.normal(size=(10, 5)))[0].T  # 5 orthonormal directions
    rows = directions[rng.integers(0, 5, 2000)] * rng.uniform(0.5, 2, (2000, 1)) + 0.05 * rng.normal(size=(2000, 10))
    centroids, report = spherical_kmeans(np.vstack([rows, np.zeros((3, 10))]), 5, init=init, seed=3)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert np.sort(np.max(centroids @ directions.T, axis=0))[0] > 0.99
    assert report["rows"] == 2000 and np.all(np.diff(report["objective"]) >= -1e-6)
    again, _ = spherical_kmeans(rows, 5, init=init, seed=3)
    np.testing.assert_array_equal(again, centroids)
    with pytest.raises(ValueError, match="k="):
        spherical_kmeans(rows[:4], 5)


def test_spherical_kmeans_takes_exactly_k_rows_and_stops_once_converged(rng):
    """M == k non-zero rows are enough (each its own centroid); a run that stops early stops on a gain below tol."""
    directions = np.linalg.qr(rng.normal(size=(10, 5)))[0].T
    centroids, _ = spherical_kmeans(np.vstack([directions * rng.uniform(0.5, 2, (5, 1)), np.zeros((1, 10))]), 5)
    np.testing.assert_allclose(np.sort(np.max(centroids @ directions.T, axis=0)), 1, atol=1e-5)
    rows = directions[rng.integers(0, 5, 500)] + 0.3 * rng.normal(size=(500, 10))
    _, report = spherical_kmeans(rows, 5, init="random", max_iter=50, tol=1e-4, seed=0)
    objective = report["objective"]
    assert 2 <= report["steps"] == len(objective) < 50, report["steps"]
    assert objective[-1] - objective[-2] <= 1e-4 * abs(objective[-2]), objective


def test_spherical_kmeans_refills_an_empty_cluster_with_the_farthest_rows(rng):
    """Random seeds from 30 copies of one row collide: the empty clusters take the rows least like their centroid
    (the two other directions), not copies of a seed again nor a zero centroid."""
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rows = np.vstack([np.repeat(directions[:1], 30, axis=0), directions[1:]])
    for seed in range(3):
        centroids, _ = spherical_kmeans(rows, 3, init="random", seed=seed)
        np.testing.assert_allclose(np.sort(np.max(centroids @ directions.T, axis=0)), 1, atol=1e-5, err_msg=seed)


@pytest.mark.parametrize("candidates", [1, 3])
def test_kmeans_plus_plus_seeds_small_far_clusters_beside_a_large_one(rng, candidates):
    """D^2 sampling (to the nearest seed so far; greedy: the best of `candidates` draws) seeds both small tight
    clusters; uniform seeds fall in the large one, which Lloyd steps then split, missing a small cluster."""
    basis = np.linalg.qr(rng.normal(size=(10, 3)))[0].T
    rows = np.vstack([basis[0] + 0.05 * rng.normal(size=(1000, 10)), basis[1] + 0.01 * rng.normal(size=(50, 10)),
                      basis[2] + 0.01 * rng.normal(size=(50, 10))])
    for seed in range(5):
        centroids, _ = spherical_kmeans(rows, 3, candidates=candidates, seed=seed)
        assert np.sort(np.max(centroids @ basis.T, axis=0))[0] > 0.99, seed


def test_layer_patches_are_the_inference_patches_the_layer_reads(rng):
    """Every position of a "same" layer, its zero-padded border included; after an augmentation, the patches of the
    inference graph (the augmentation is the identity), as the plain model's."""
    from kernelzoo.zoo.ckn.kmeans import layer_patches
    rows = layer_patches(lambda x, training: x, CKNConv2D(2, 3), np.ones((2, 5, 5, 1)), 1000)
    assert rows.shape == (50, 9) and np.sum(rows == 0) == 2 * (3 * 20 - 4)  # 3 padded cells per edge position
    kwargs = dict(filters=(4,), kernel_sizes=(3,), subsamplings=(2,), whitening="image", input_shape=(8, 8, 3))
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype("uint8")
    patches = []
    for model in (ckn(**kwargs), ckn(augment=True, **kwargs)):
        layer = model.get_layer("ckn1")
        patches.append(layer_patches(keras.Model(model.input, layer.input), layer, images, 40, seed=0))
    np.testing.assert_allclose(patches[1], patches[0], atol=1e-6)


def test_l2_path_plot_needs_the_chosen_score(tmp_path):
    from kernelzoo.zoo.frozen_features import plot_l2_path
    with pytest.raises(ValueError, match="`scores`"):
        plot_l2_path({}, None, 10, str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="`chosen`=0.5"):
        plot_l2_path({0.1: 0.7}, 0.5, 10, str(tmp_path / "a.png"))
    assert os.path.getsize(plot_l2_path({0.1: 0.7, 0.01: 0.8}, 0.01, 10, str(tmp_path / "a.png"))) > 1000


# ----------------------------------------------------------------------------- the unsupervised recipe


@pytest.mark.parametrize("key, value", [
    ("kmeans_init", "kmeans"), ("kmeans_patches", -5), ("kmeans_iterations", 0), ("l2_grid", (-1.0,)), ("l2_grid", ()),
    ("l2_grid", (float("inf"),)), ("l2_grid", (0.1, 0.1)), ("l2_grid", (1e-3, 0.001)), ("l2_patience", 0),
    ("l2_patience", -2), ("lbfgs_iterations", 0), ("classifier_loss", "hinge"), ("holdout", 0), ("holdout", -1)])
def test_unsupervised_recipe_checks_its_hyperparameters(key, value):
    """The k-means ones as the supervised recipe (the same check), the classifier's as every frozen-features recipe:
    before any work (k-means and the feature pass would leave a run folder that cannot resume) and by name."""
    from kernelzoo.zoo import registry
    preset = registry.info("ckn_cifar10_unsup_64_256")
    with pytest.raises(ValueError, match=f"`{key}`"):
        registry.recipe(preset).hyperparameters(preset, **{key: value})


def _never(what):
    """A stand-in for `what` that fails the test when called."""
    def call(*args, **kwargs):
        raise AssertionError(f"{what} ran")
    return call


def _frozen_fit(out_dir, rng, train=None, **hp):
    """FrozenFeaturesRecipe.fit (the L2 path, then the refit) of a Dense "features" layer on 40 random inputs."""
    from kernelzoo.zoo.frozen_features import FrozenFeaturesRecipe
    from kernelzoo.zoo.recipe import Data
    inputs = keras.Input((6,))
    features = keras.layers.Dense(4, name="features")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="zeros", name="logits")(features))
    train = (rng.normal(size=(40, 6)).astype("float32"), np.arange(40) % 3) if train is None else train
    hp = {"batch_size": 8, "feature_dtype": "float32", "holdout": 10, "l2_grid": (1.0, 0.1), "l2_patience": 2,
          "lbfgs_iterations": 20, "classifier_loss": "logistic", **hp}
    return FrozenFeaturesRecipe().fit(model, Data(train=train, test=None, source="random"), str(out_dir), hp,
                                      verbose=0)


def test_l2_path_refuses_a_repeated_value_and_always_ends_with_the_refit(tmp_path, rng):
    """A repeated L2 value (however written) left the path short of its refit on all images, silently; `fit` (a
    hand-made `hp` reaches it unchecked) refuses it by name before writing anything."""
    from kernelzoo.zoo import training
    for grid in [(0.1, 0.1), (1e-3, 0.001)]:
        with pytest.raises(ValueError, match="`l2_grid`"):
            _frozen_fit(tmp_path / "repeated", rng, l2_grid=grid)
    assert not (tmp_path / "repeated").exists()
    result = _frozen_fit(tmp_path / "run", rng, l2_grid=(1.0, 0.1))
    assert [row["epoch"] for row in result["history"]] == [0, 1, 2] and training.read_state(tmp_path / "run")["final"]


def test_held_out_images_of_eval_are_those_the_l2_path_held_out(tmp_path, rng):
    """`kernelzoo eval --holdout` measures `recipe.held_out`'s images (it found none for this recipe, which keeps
    its data whole and splits inside `fit`): a --validate-only model scores its l2 step's held-out accuracy."""
    from kernelzoo.zoo.frozen_features import FrozenFeaturesRecipe
    from kernelzoo.zoo.recipe import Data
    train = (rng.normal(size=(40, 6)).astype("float32"), np.arange(40) % 3)
    result = _frozen_fit(tmp_path / "run", rng, train=train, l2_grid=(0.1,), validate_only=True)
    recipe = FrozenFeaturesRecipe()
    held = recipe.held_out(Data(train=train, test=None, source="random"), 10, seed=0)
    assert len(held.val[1]) == 10 and len(held.train[1]) == 30
    scores = recipe.evaluate(result["model"], held, "val")
    assert scores["accuracy"] == pytest.approx(result["metrics"]["val_accuracy"])


@pytest.mark.parametrize("hp, options", [({"holdout": 240}, {}), ({}, {"holdout": 500})])
def test_unsupervised_recipe_checks_the_holdout_against_the_training_images_first(tmp_path, monkeypatch, hp, options):
    """The tiny run has 240 training images: a holdout of them all (the recipe's or --holdout) is refused by name
    before the k-means (the split failed after it and the feature pass, leaving a run folder)."""
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.ckn import recipe as ckn_recipe
    run = ckn_recipe.tiny_runs()[0]
    preset = registry.info(run.preset)
    recipe = registry.recipe(preset)
    monkeypatch.setattr(ckn_recipe, "kmeans_anchors", _never("k-means"))
    with pytest.raises(ValueError, match="`holdout` must be an int in \\[1, 239\\]"):
        recipe.train(preset, run.data, str(tmp_path / "run"), overrides=run.overrides,
                     hp=recipe.hyperparameters(preset, **{**run.hp, **hp}), options=recipe.options(**options),
                     verbose=0, tensorboard=False)
    assert not (tmp_path / "run").exists()


def test_kmeans_patches_are_checked_against_the_widest_layer_before_any_kmeans(rng, monkeypatch):
    """Fewer patches than a layer's anchors failed that layer's k-means (naming `rows`), after the earlier layers'."""
    from kernelzoo.zoo.ckn import recipe as ckn_recipe
    calls = []
    monkeypatch.setattr(ckn_recipe, "init_ckn_layers", lambda model, images, **kwargs: calls.append(kwargs) or {})
    images = rng.integers(0, 256, (4, 12, 12, 3)).astype("uint8")
    hp = {"kmeans_patches": 7, "kmeans_init": "k-means++", "kmeans_iterations": 3}
    with pytest.raises(ValueError, match="`kmeans_patches` must be an int >= 8"):  # _tiny_model: 6 and 8 anchors
        ckn_recipe.kmeans_anchors(_tiny_model(), images, hp, 0, 0)
    assert not calls
    ckn_recipe.kmeans_anchors(_tiny_model(), images, dict(hp, kmeans_patches=8), 0, 0)
    assert [kwargs["max_patches"] for kwargs in calls] == [8]


def test_kmeans_anchors_passes_the_recipe_init_iterations_and_the_run_seed(rng, monkeypatch):
    from kernelzoo.zoo.ckn import recipe as ckn_recipe
    calls = []
    monkeypatch.setattr(ckn_recipe, "init_ckn_layers", lambda model, images, **kwargs: calls.append(kwargs) or {})
    for init in ("random", "k-means++"):
        hp = {"kmeans_patches": 100, "kmeans_init": init, "kmeans_iterations": 3}
        ckn_recipe.kmeans_anchors(_tiny_model(), rng.integers(0, 256, (4, 12, 12, 3)), hp, 7, 0)
    assert calls == [{"max_patches": 100, "init": init, "max_iter": 3, "seed": 7, "verbose": False}
                     for init in ("random", "k-means++")]


@pytest.mark.parametrize("name", [f"ckn_cifar10_unsup_{size}" for size in ("64_256", "256_1024", "512_8192")])
def test_unsupervised_presets_use_kmeans_plus_plus_and_the_reference_squared_hinge(name):
    """The card's recipe: k-means++ seeds and the reference's loss, the one-vs-rest squared hinge (an L2-SVM)."""
    from kernelzoo.zoo import registry
    preset = registry.info(name)
    hp = registry.recipe(preset).hyperparameters(preset)
    assert (hp["kmeans_init"], hp["classifier_loss"]) == ("k-means++", "squared_hinge")


def test_tiny_unsupervised_ckn_beats_chance_and_resumes_exactly(tiny_runs):
    """The CKN family's tiny run (trained once per session, conftest.TinyRuns: test_families checks the
    family contract on the same runs, with a looser resume tolerance than this one)."""
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.ckn.presets import PRESETS
    from kernelzoo.zoo.ckn.recipe import UnsupervisedCKNRecipe, tiny_runs as ckn_tiny_runs

    run = ckn_tiny_runs()[0]
    assert run.preset == PRESETS[0].name and isinstance(registry.recipe(PRESETS[0]), UnsupervisedCKNRecipe)
    key = f"ckn-{run.preset}"
    _, result, folder = tiny_runs.trained(key)
    assert result["metrics"]["test_accuracy"] > 0.8  # chance: 1/3
    tuning = json.loads((folder / "tuning.json").read_text())
    assert tuning["holdout"] == run.hp["holdout"] and sorted(map(float, tuning["scores"])) == [0.01, 0.1, 1.0]
    assert tuning["scores"][f"{tuning['chosen']:g}"] == max(tuning["scores"].values())
    assert result["history"][-1]["l2"] == tuning["chosen"]  # the refit on all uses the chosen value
    assert (folder / "l2_path.png").stat().st_size > 1000
    assert all(not layer.trainable for layer in result["model"].layers if isinstance(layer, CKNConv2D))
    history = result["history"]
    assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3] and history[-1]["loss"] < history[0]["loss"]

    resumed, _, killed_at = tiny_runs.resumed(key)  # interrupted at the start of epoch 2, then resumed
    assert killed_at == 2
    for a, b in zip(result["model"].weights, resumed["model"].weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_init_freezes_every_layer_in_order(rng):
    model = _tiny_model()
    images = rng.integers(0, 256, (30, 12, 12, 3)).astype("uint8")
    reports = init_ckn_layers(model, images, max_patches=1500, seed=0)
    assert list(reports) == ["ckn1", "ckn2"]
    for name in reports:
        layer = model.get_layer(name)
        assert not layer.trainable
        z = np.asarray(layer.unit_anchors())
        np.testing.assert_allclose(np.asarray(layer.factor), np.asarray(layer.nystrom_factor()), atol=1e-6)
        assert np.allclose(np.linalg.norm(z, axis=0), 1, atol=1e-5)


@pytest.mark.parametrize("trainable_anchors", [True, False])
def test_init_refreshes_each_factor_once(rng, monkeypatch, trainable_anchors):
    model = _tiny_model(trainable_anchors=trainable_anchors)
    images = rng.integers(0, 256, (20, 12, 12, 3)).astype("uint8")
    calls = _count_refreshes(monkeypatch)
    init_ckn_layers(model, images, max_patches=500, max_iter=3, seed=0)
    assert calls == ["ckn1", "ckn2"]
    for layer in (model.get_layer("ckn1"), model.get_layer("ckn2")):
        np.testing.assert_allclose(np.asarray(layer.factor), np.asarray(layer.nystrom_factor()), atol=1e-6)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("whitening", ["image", "patches"])
def test_export_parity_onnx_and_saved_model(tmp_path, rng, reference_once, whitening):
    from kernelzoo.export import to_onnx, to_saved_model
    from kernelzoo.export.verify import float32_tolerance, verify_artifact

    model = _tiny_model(whitening, nystrom_shift=0.01)
    if whitening == "image":  # smooth images: whitened uniform noise gives nearly collinear layer-2 anchors, a
        # Nystrom factor with entries ~30 that lifts float32 rounding past the tolerance (natural images: ~10)
        smooth = np.cumsum(np.cumsum(rng.normal(size=(40, 12, 12, 3)), 1), 2) * 8 + 128
        images = np.clip(smooth, 0, 255).astype("uint8")
    else:
        images = rng.integers(0, 256, (40, 12, 12, 3)).astype("uint8")
    init_ckn_layers(model, images, max_patches=1500, seed=0)
    model.get_layer("logits").set_weights([rng.normal(size=w.shape).astype("float32")
                                           for w in model.get_layer("logits").get_weights()])
    for path in (to_onnx(model, str(tmp_path / "ckn.onnx"), input_dtype="uint8"),
                 to_saved_model(model, str(tmp_path / "ckn_saved"), input_dtype="uint8")):
        report = verify_artifact(model, path, images=images, input_dtype="uint8")
        assert report["nan_mismatch"] == 0 and report.get("top1_agreement", 1.0) == 1.0, report
        tolerance = float32_tolerance(report["max_reference"], report.get("rounding_floor", 0.0))
        assert report["max_abs"] <= tolerance, report
