"""kernelNet layers: kernel formulas, fit, sparsity, regularisers, costs, config."""
import os

import keras
import numpy as np
import pytest

from kernelzoo.layers.cost import cost_report
from kernelzoo.layers.kernel_dense import KernelDense, SparseKernelDense
from kernelzoo.layers.kernels import KERNELS, Grid2D, kernel_matrix, squared_distances
from kernelzoo.layers.sparsify import SparsifyingActivation
from kernelzoo.zoo.kernelnet.optimize import fit_lbfgs
from kernelzoo.zoo.precision import dtype_policy

RNG = np.random.default_rng(0)


def _np_kernel(u, v, kind, gamma=0.7, degree=3, offset=0.5, scale=1.3, distance="euclidean"):
    dot = u @ v.T
    d2 = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    dist = d2 if distance == "squared" else np.sqrt(d2)
    return {"dot": dot, "poly": (dot + offset) ** degree, "rbf": np.exp(-gamma * d2),
            "tanh": np.tanh(dot), "finite_support": np.maximum(0, 1 - scale * dist)}[kind]


@pytest.mark.parametrize("kind, distance", [("dot", "euclidean"), ("poly", "euclidean"), ("rbf", "euclidean"),
                                            ("tanh", "euclidean"),  # `distance` is finite_support's alone
                                            ("finite_support", "euclidean"), ("finite_support", "squared")])
def test_kernel_matrix_matches_numpy(kind, distance):
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    if kind == "finite_support":  # points closer together: a good part of the pairs within the support
        u, v = 0.4 * u, 0.4 * v
    got = keras.ops.convert_to_numpy(kernel_matrix(
        u.astype("float32"), v.astype("float32"), kind, gamma=0.7, degree=3, offset=0.5,
        scale=1.3, distance=distance))
    want = _np_kernel(u, v, kind, distance=distance)
    if kind == "finite_support":
        assert 0.2 < np.mean(want > 0) < 0.8
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_squared_distances_of_points_far_from_the_origin_keep_their_digits():
    """Centred first: |u|^2 + |v|^2 - 2 u.v of points near (300, 300) loses about 0.03 in float32."""
    u = 300.0 + RNG.uniform(size=(20, 2))
    v = 300.0 + RNG.uniform(size=(30, 2))
    want = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    got = keras.ops.convert_to_numpy(squared_distances(u.astype("float32"), v.astype("float32")))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_kernel_dense_forward_is_alpha_times_kernel():
    layer = KernelDense(4, kernel_function="rbf", dim=3, gamma=0.5, activation="tanh")
    x = RNG.normal(size=(6, 5)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    u, v = layer.input_locations.numpy(), layer.output_locations.numpy()
    alpha, bias = layer.alpha.numpy(), layer.bias.numpy()
    bias[:] = 0.3
    layer.bias.assign(bias)
    y = keras.ops.convert_to_numpy(layer(x))
    w = alpha[:, None] * _np_kernel(u, v, "rbf", gamma=0.5)
    np.testing.assert_allclose(y, np.tanh(x @ w + 0.3), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, options", [("poly", dict(degree=3, offset=0.5)), ("poly", dict(degree=1, offset=-0.75)),
                                           ("rbf", dict(gamma=0.3))])
def test_kernel_dense_hands_every_argument_on(kind, options):
    """The kernel's options -> kernel_matrix (W against the NumPy kernel of the layer's locations), alpha_ and
    bias_initializer -> the variables, alpha_ / bias_regularizer -> layer.losses, alpha_constraint -> an
    optimizer step, and each argument through the config to a clone (not merely agreeing with its own config)."""
    import tensorflow as tf
    layer = KernelDense(4, kernel_function=kind, dim=3, activation="tanh",
                        alpha_initializer=keras.initializers.Constant(0.8),
                        bias_initializer=keras.initializers.Constant(0.2),
                        input_locations_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=1),
                        output_locations_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=2),
                        alpha_regularizer=keras.regularizers.L2(0.1), bias_regularizer=keras.regularizers.L1(0.05),
                        alpha_constraint=keras.constraints.NonNeg(), **options)
    x = RNG.normal(size=(3, 5)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    assert np.all(layer.alpha.numpy() == 0.8) and np.all(layer.bias.numpy() == 0.2)
    u, v = layer.input_locations.numpy().astype("float64"), layer.output_locations.numpy().astype("float64")
    w = 0.8 * _np_kernel(u, v, kind, **options)
    np.testing.assert_allclose(y, np.tanh(x @ w + 0.2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sorted(float(loss) for loss in layer.losses), sorted([0.1 * 0.64 * 5, 0.05 * 0.2 * 4]),
                               rtol=1e-5)
    keras.optimizers.SGD(1.0).apply([tf.fill(layer.alpha.shape, 10.0)], [layer.alpha])
    assert np.all(layer.alpha.numpy() == 0)
    arguments = ("kernel_function", "gamma", "degree", "offset", "activation", "alpha_initializer", "bias_initializer",
                 "alpha_regularizer", "bias_regularizer", "alpha_constraint")
    clone = KernelDense.from_config(layer.get_config())
    for name in arguments:
        assert keras.saving.serialize_keras_object(getattr(clone, name)) == \
            keras.saving.serialize_keras_object(getattr(layer, name)), name


@pytest.mark.parametrize("kind", KERNELS + ("sparse",))
def test_kernel_layers_keep_w_float32_under_a_float64_policy(kind):
    """alpha (SparseKernelDense's kernel A) is a float64 variable there, the kernel values float32: W is their
    product in float32."""
    x = RNG.normal(size=(3, 6))
    with dtype_policy("float64"):
        if kind == "sparse":
            layer = SparseKernelDense(4, bias_initializer="random_normal")
        else:
            layer = KernelDense(4, kernel_function=kind, bias_initializer="random_normal")
        y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    w = keras.ops.convert_to_numpy(layer.effective_kernel())
    assert w.dtype == np.float32
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), x @ w + layer.bias.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: KernelDense(3), lambda: SparseKernelDense(3)])
def test_kernel_layers_name_a_wrong_input_width(make):
    layer = make()
    layer(RNG.normal(size=(2, 6)).astype("float32"))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 6"):
        layer(RNG.normal(size=(2, 5)).astype("float32"))
    assert tuple(layer(RNG.normal(size=(4, 2, 6)).astype("float32")).shape) == (4, 2, 3)  # any leading axes


def _fit_residual(dim, target):
    keras.utils.set_random_seed(1)
    layer = KernelDense(target.shape[1], kernel_function="dot", dim=dim,
                        input_locations_initializer="glorot_normal",
                        output_locations_initializer="glorot_normal", alpha_initializer="ones")
    layer.build((None, target.shape[0]))
    goal = keras.ops.convert_to_tensor(target)

    def loss_fn(lay):
        return keras.ops.sum(keras.ops.square(lay.effective_kernel() - goal))

    fit_lbfgs(layer, loss_fn, maxiter=2000)
    w = keras.ops.convert_to_numpy(layer.effective_kernel())
    return np.abs(w - target).max()


def test_dot_kernel_represents_a_dense_matrix():
    target = RNG.normal(size=(6, 4)).astype("float32")
    assert _fit_residual(4, target) < 1e-3          # d = min(m, n): exact
    assert _fit_residual(1, target) > 0.1           # rank 1 cannot (the test can fail)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_finite_support_weights_vanish_outside_support(distance):
    layer = SparseKernelDense(9, dim=2, scale=2.0, distance=distance,
                              input_locations_initializer="grid",
                              output_locations_initializer="grid")
    layer.build((None, 16))
    u, v = layer.input_locations.numpy(), layer.output_locations.numpy()
    d2 = ((u[:, None] - v[None]) ** 2).sum(-1)
    dist = d2 if distance == "squared" else np.sqrt(d2)
    w = keras.ops.convert_to_numpy(layer.effective_kernel())
    assert np.all(w[2.0 * dist >= 1.0] == 0.0)
    assert np.all(w[2.0 * dist < 1.0 - 1e-6] != 0.0)
    assert 0 < np.count_nonzero(w) < w.size
    assert layer.expected_macs() == np.count_nonzero(w)
    assert layer.expected_macs(0.5) == 0.5 * np.count_nonzero(w)


def test_sparse_kernel_dense_starts_with_every_weight_inside_the_support():
    """The default locations are drawn from N(0, 1e-3) as in the paper's MovieLens code: every K_fs(u_i, v_j) starts
    at ~1, so W = A * K starts as the free matrix A (no weight cut off before training moves the locations)."""
    layer = SparseKernelDense(30)
    layer.build((None, 40))
    k = keras.ops.convert_to_numpy(layer.kernel_values())
    assert k.shape == (40, 30) and np.all(k > 0.999)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_finite_support_gradient_is_finite_at_coincident_locations(policy):
    """Under mixed_float16 the 1e-12 floor of the squared distance underflowed to 0 (sqrt: NaN gradient);
    the kernel values are computed in float32."""
    import tensorflow as tf
    with dtype_policy(policy):
        layer = KernelDense(3, kernel_function="finite_support", dim=2, input_locations_initializer="zeros",
                            output_locations_initializer="zeros")
        x = np.ones((2, 4), "float32")
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(tf.cast(out, "float32"))
        grads = tape.gradient(loss, layer.trainable_variables)
    assert out.dtype == layer.compute_dtype
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_regulariser_values():
    l0, l2, le = 0.3, 0.2, 0.05
    layer = SparseKernelDense(
        5, dim=2, kernel_regularizer=keras.regularizers.L2(l2),
        kernel_values_regularizer=keras.regularizers.L2(l0),
        effective_regularizer=keras.regularizers.L2(le),
        input_locations_initializer=keras.initializers.RandomNormal(stddev=0.5),
        output_locations_initializer=keras.initializers.RandomNormal(stddev=0.5))
    layer(np.ones((1, 4), "float32"))
    a = layer.kernel.numpy()
    k = _np_kernel(layer.input_locations.numpy(), layer.output_locations.numpy(),
                   "finite_support", scale=1.0, distance="squared")
    got = sorted(float(v) for v in layer.losses)
    want = sorted([l2 * (a ** 2).sum(), l0 * (k ** 2).sum(), le * ((a * k) ** 2).sum()])
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_sparsifying_activation_matches_eq9():
    x = RNG.normal(size=(4, 10)).astype("float32")
    for eta in (0.0, 0.4, 0.9):
        got = keras.ops.convert_to_numpy(SparsifyingActivation(eta)(x))
        thr = eta * x.max(-1, keepdims=True) + (1 - eta) * x.mean(-1, keepdims=True)
        np.testing.assert_allclose(got, np.maximum(0, x - thr), rtol=1e-5, atol=1e-6)
    dense = SparsifyingActivation(0.0)(x)
    sparse = SparsifyingActivation(0.8)(x)
    assert np.count_nonzero(sparse) < np.count_nonzero(dense)


def test_grid_initializer_gives_pixel_locations():
    grid = keras.ops.convert_to_numpy(Grid2D(28, 28)((784, 2)))
    assert grid[0].tolist() == [0.0, 0.0] and grid[-1].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(grid[29], [1 / 27, 1 / 27], rtol=1e-6)   # pixel (1, 1)
    np.testing.assert_allclose(grid[1], [0, 1 / 27], atol=1e-7)          # pixel (row 0, column 1): (row, col)
    np.testing.assert_allclose(grid[28], [1 / 27, 0], atol=1e-7)         # pixel (row 1, column 0)
    wide = keras.ops.convert_to_numpy(Grid2D(2, 3)((6, 2)))              # 2 rows of 3: row-major
    np.testing.assert_allclose(wide, [[0, 0], [0, 0.5], [0, 1], [1, 0], [1, 0.5], [1, 1]], atol=1e-7)
    stacked = keras.ops.convert_to_numpy(Grid2D(repeats=3)((3 * 16, 2)))
    np.testing.assert_array_equal(stacked[:16], stacked[32:])
    assert len(np.unique(stacked[:16], axis=0)) == 16


def test_parameter_count_and_cost_report():
    m, n, d = 12, 7, 3
    layer = KernelDense(n, kernel_function="dot", dim=d)
    layer.build((None, m))
    assert layer.parameter_count() == d * (m + n) + m + n
    fixed = KernelDense(n, dim=2, input_locations_trainable=False,
                        output_locations_trainable=False)
    fixed.build((None, m))
    assert fixed.parameter_count() == m + n
    inputs = keras.Input((m,))
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    report = cost_report(model, input_density=0.25)
    assert report["params"] == layer.parameter_count() + n * 2 + 2
    assert report["macs"] == pytest.approx(0.25 * m * n + n * 2)


def test_config_roundtrip_and_saving(tmp_path):
    inputs = keras.Input((16,))
    x = SparseKernelDense(8, dim=2, kernel_values_regularizer="l2")(inputs)
    x = KernelDense(9, kernel_function="poly", dim=2, degree=3, input_locations_initializer="grid",
                    output_locations_initializer="grid", alpha_trainable=False)(x)
    x = SparsifyingActivation(0.3)(x)
    model = keras.Model(inputs, x)
    for layer in model.layers[1:]:
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = RNG.normal(size=(3, 16)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_location_noise_moves_the_input_locations_in_training_only(tmp_path):
    # dot kernel with the identity as output locations: y = (u_i + noise) for the one-hot input i
    layer = KernelDense(2, kernel_function="dot", dim=2, use_alpha=False, use_bias=False, location_noise=0.05,
                        output_locations_initializer="identity")
    x = np.eye(40, dtype="float32")
    inference = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(inference, layer.input_locations.numpy(), rtol=1e-6)
    noise = np.stack([keras.ops.convert_to_numpy(layer(x, training=True)) - inference for _ in range(50)])
    assert abs(noise.std() - 0.05) < 0.005 and abs(noise.mean()) < 0.005  # 4,000 draws: 1.1 % and 0.0008 s.e.
    assert not np.allclose(noise[0], noise[1])  # a new draw every call
    quiet = KernelDense(2, kernel_function="dot", dim=2, use_alpha=False, use_bias=False)
    quiet(x)
    assert len(layer.variables) == len(quiet.variables) + 1  # its seed state; a noiseless layer saves what it did
    inputs = keras.Input((40,))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "noisy.keras")
    loaded = keras.models.load_model(tmp_path / "noisy.keras")
    assert loaded.layers[-1].location_noise == 0.05
    np.testing.assert_allclose(loaded(x), inference, rtol=1e-6)


@pytest.mark.parametrize("make, argument", [
    (lambda: KernelDense(0), "`units`"),
    (lambda: KernelDense(3, location_noise=-0.1), "`location_noise`"),
    (lambda: SparseKernelDense(3, location_noise=float("inf")), "`location_noise`"),
    (lambda: KernelDense(3, kernel_function="gauss"), "`kernel_function`"),
    (lambda: KernelDense(3, offset=float("nan")), "`offset`"),
    (lambda: KernelDense(3, offset=float("inf")), "`offset`"),
    (lambda: KernelDense(3, gamma=float("inf")), "`gamma`"),
    (lambda: KernelDense(3, scale=float("inf")), "`scale`"),
    (lambda: SparseKernelDense(3, scale=float("inf")), "`scale`"),
    (lambda: KernelDense(3, dim=0), "`dim`"),
    (lambda: KernelDense(3, gamma=-1.0), "`gamma`"),
    (lambda: KernelDense(3, degree=0), "`degree`"),
    (lambda: KernelDense(3, scale=0), "`scale`"),
    (lambda: KernelDense(3, distance="manhattan"), "`distance`"),
    (lambda: KernelDense(3, dim=3, input_locations_initializer="grid"),
     "`input_locations_initializer`='grid' needs dim=2"),
    (lambda: SparseKernelDense(3, dim=1, output_locations_initializer="grid"),
     "`output_locations_initializer`='grid' needs dim=2"),  # any d but 2, refused before the build
    (lambda: SparseKernelDense(3, distance="l1"), "`distance`"),
    (lambda: SparseKernelDense(-2), "`units`"),
    (lambda: SparsifyingActivation(eta=1.5), "`eta`"),
    (lambda: SparsifyingActivation(eta=1.0), "`eta`"),  # every output 0
    (lambda: SparsifyingActivation(axis=0.5), "`axis`"),
    (lambda: Grid2D(rows=0), "`rows`"),
    (lambda: Grid2D(repeats=0), "`repeats`"),
    (lambda: Grid2D(minval=1.0, maxval=0.0), "`maxval` must exceed `minval`"),
    (lambda: Grid2D(maxval=float("inf")), "`maxval`"),
    (lambda: Grid2D(minval=-float("inf")), "`minval`"),
    (lambda: Grid2D(rows=3)((8, 2)), "grid 3x2 does not hold 8 locations"),
    (lambda: KernelDense(3).expected_macs(2.0), "`input_density`"),
    (lambda: kernel_matrix(np.zeros((2, 2)), np.zeros((3, 2)), "finite_support", distance="squard"), "`distance`"),
])
def test_bad_arguments_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_kernel_dense_names_its_kernel_kernel_function_and_reads_old_configs():
    x = RNG.normal(size=(3, 4)).astype("float32")
    layer = KernelDense(5, kernel_function="poly", dim=2, degree=3)
    y = keras.ops.convert_to_numpy(layer(x))
    assert layer.kernel_function == "poly" and not hasattr(layer, "kernel")
    config = layer.get_config()
    assert config["kernel_function"] == "poly" and "kernel" not in config
    legacy = dict(config)
    legacy["kernel"] = legacy.pop("kernel_function")  # as saved before the rename (the shipped .keras files)
    old = KernelDense.from_config(legacy)
    old.build((None, 4))
    old.set_weights(layer.get_weights())
    assert old.kernel_function == "poly"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(old(x)), y)
    assert KernelDense(3, kernel="tanh").kernel_function == "tanh"  # the old keyword still works


def test_kernel_dense_defaults_to_rbf_and_refuses_a_legacy_kernel_that_disagrees():
    """The default is not a value of `kernel_function`: kernel="dot" with kernel_function="rbf" is a conflict."""
    assert KernelDense(3).kernel_function == "rbf"
    assert KernelDense.from_config(KernelDense(3).get_config()).kernel_function == "rbf"
    assert KernelDense(3, kernel="dot", kernel_function="dot").kernel_function == "dot"
    with pytest.raises(ValueError, match="`kernel`='dot' .* `kernel_function`='rbf' disagree"):
        KernelDense(3, kernel="dot", kernel_function="rbf")
    with pytest.raises(ValueError, match="`kernel` must be one of"):
        KernelDense(3, kernel="gauss")
