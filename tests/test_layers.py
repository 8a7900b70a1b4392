"""Similarity and Mex layers: Keras contract, special cases, training, saving, errors."""
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from kernelzoo.layers import FusedBatchNormalization, Mex, MinValue, Similarity
from kernelzoo.layers.regularizers import sgd_weight_decay
from kernelzoo.zoo.simnet.models import TriangleCoding

SIMILARITY_CONFIGS = [
    dict(filters=4, kernel_size=3),
    dict(filters=3, kernel_size=(2, 3), strides=2, padding="same", similarity="l1", weighted=False),
    dict(filters=5, kernel_size=2, similarity="lp", p=1.5, learn_p=True, normalization_term=True, ignore_nan=True),
    dict(filters=2, kernel_size=2, similarity="lp", p=[1.0, 3.0], templates_regularizer="l2",
         weights_constraint=None),
    dict(filters=6, kernel_size=1, similarity="linear", templates_initializer="he_normal"),
]
MEX_CONFIGS = [
    dict(),
    dict(num_instances=3, offsets="shared", use_c=True, xi=[1.0, 0.0, -2.0]),
    dict(num_instances=2, pool_size=2, channel_block=2, offsets="unshared", learn_xi=False, xi=float("inf")),
    dict(pool_size=(2, 3), strides=1, padding="same", offsets=(2, 2), offsets_regularizer="l2",
         softmax_mode=True),
    dict(pool_size=3, channel_block=1, xi=0.0, learn_xi=False),
]


def _input(rng, shape=(2, 7, 8, 4)):
    return rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("config", SIMILARITY_CONFIGS + [("mex", c) for c in MEX_CONFIGS])
def test_config_round_trip_and_output_shape(rng, config):
    """Config and weights, not the op: run once, under the default implementation."""
    layer = Mex(**config[1]) if isinstance(config, tuple) else Similarity(**config)
    x = _input(rng)
    out = layer(x)
    assert tuple(out.shape) == layer.compute_output_shape(x.shape)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), out, rtol=1e-6, atol=1e-6)


# Every constructor argument away from its default across a layer's configs (with the objects below: distinct
# initial values, regularizers, constraints; a NaN in the input), so that one the layer drops on its way to its
# variables, the op, layer.losses, the optimizer or the config fails `test_*_hands_every_argument_on`.
SIMILARITY_FULL_CONFIGS = [
    dict(filters=3, kernel_size=2, strides=(1, 2), padding="same", similarity="lp", weighted=True,
         p=[1.0, 1.5, 2.5], learn_p=True, normalization_term=True, ignore_nan=True),
    dict(filters=2, kernel_size=(2, 3), strides=2, similarity="l1", normalization_term=True, ignore_nan=True),
]
SIMILARITY_OBJECTS = dict(
    templates_initializer=keras.initializers.Constant(0.3), weights_initializer=keras.initializers.Constant(0.7),
    templates_regularizer=keras.regularizers.L2(0.01), weights_regularizer=keras.regularizers.L1(0.02),
    templates_constraint=keras.constraints.NonNeg(), weights_constraint=MinValue(0.25))
MEX_FULL_CONFIGS = [
    dict(num_instances=2, pool_size=2, channel_block=2, strides=1, padding="same", xi=[1.5, -0.5], learn_xi=True,
         offsets="shared", use_c=True, softmax_mode=True),
    dict(num_instances=3, pool_size=(2, 3), channel_block=1, strides=(1, 2), xi=[2.0, -1.0, 0.5], learn_xi=False,
         offsets=(2, 1), use_c=True, softmax_mode=True),
]
MEX_OBJECTS = dict(
    offsets_initializer=keras.initializers.Constant(0.4), offsets_regularizer=keras.regularizers.L2(0.03),
    offsets_constraint=keras.constraints.NonNeg(), c_initializer=keras.initializers.Constant(-0.6))


def _arguments(layer):
    """The layer's constructor arguments as it holds them, serialised (initializers, regularizers, constraints as
    Keras objects): a clone's must be the original's, not merely agree with its own config."""
    import inspect
    names = set(inspect.signature(type(layer).__init__).parameters) - {"self", "kwargs"}
    return {name: keras.saving.serialize_keras_object(getattr(layer, name)) for name in names}


def _step_down(variables):
    """One SGD step of gradient +10 on each variable: every entry far below its constraint's bound."""
    import tensorflow as tf
    keras.optimizers.SGD(1.0).apply([tf.fill(v.shape, 10.0) for v in variables], variables)


@pytest.mark.parametrize("config", SIMILARITY_FULL_CONFIGS)
def test_similarity_hands_every_argument_on(rng, config):
    """Initializers -> the variables, normalization_term / ignore_nan / p / strides / padding -> the op (against a
    direct kernelzoo.ops.similarity call on the layer's variables), regularizers -> layer.losses, constraints ->
    an optimizer step, and each argument through the config to a clone."""
    from kernelzoo import ops as kops
    layer = Similarity(**config, **SIMILARITY_OBJECTS)
    x = _input(rng, (2, 5, 7, 2))
    x[0, 2, 3, 1] = np.nan
    out = np.asarray(layer(x))
    assert np.all(layer.templates.numpy() == 0.3) and np.all(layer.template_weights.numpy() == 0.7)
    op_arguments = {k: v for k, v in config.items() if k not in ("filters", "kernel_size", "weighted", "learn_p")}
    want = kops.similarity(x, layer.templates, layer.template_weights, **op_arguments)
    assert np.all(np.isfinite(out))  # the NaN marginalised out
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    size = layer.templates.numpy().size
    np.testing.assert_allclose(sorted(float(v) for v in layer.losses), [0.01 * 0.09 * size, 0.02 * 0.7 * size],
                               rtol=1e-5)
    _step_down([layer.templates, layer.template_weights])
    assert np.all(layer.templates.numpy() == 0) and np.all(layer.template_weights.numpy() == 0.25)
    assert _arguments(Similarity.from_config(layer.get_config())) == _arguments(layer)


@pytest.mark.parametrize("config", MEX_FULL_CONFIGS)
def test_mex_hands_every_argument_on(rng, config):
    """As the similarity's: offsets_ / c_initializer -> the variables, softmax_mode / xi / blocks -> the op (against
    kernelzoo.ops.mex on the layer's variables), offsets_regularizer -> layer.losses, offsets_constraint -> an
    optimizer step, and each argument through the config to a clone."""
    from kernelzoo import ops as kops
    layer = Mex(**config, **MEX_OBJECTS)
    x = _input(rng, (2, 5, 7, 2))
    out = np.asarray(layer(x))
    assert np.all(layer.offsets_variable.numpy() == 0.4) and np.all(layer.c.numpy() == -0.6)
    xi = config["xi"]
    if config["learn_xi"]:
        np.testing.assert_array_equal(layer.xi_variable.numpy(), xi)
        xi = layer.xi_variable
    op_arguments = {k: v for k, v in config.items() if k not in ("xi", "learn_xi", "offsets", "use_c")}
    want = kops.mex(x, xi, offsets=layer.offsets_variable, c=layer.c, **op_arguments)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([float(v) for v in layer.losses], [0.03 * 0.16 * layer.offsets_variable.numpy().size],
                               rtol=1e-5)
    _step_down([layer.offsets_variable])
    assert np.all(layer.offsets_variable.numpy() == 0)
    assert _arguments(Mex.from_config(layer.get_config())) == _arguments(layer)


def test_offsets_modes_create_the_right_shapes(rng):
    x = _input(rng)  # Mex pool 2 on 7x8 -> 3x4 outputs
    shapes = {"shared": (1, 1), "unshared": (3, 4), (3, 2): (3, 2)}
    for mode, regions in shapes.items():
        layer = Mex(num_instances=2, pool_size=2, channel_block=2, offsets=mode)
        layer.build(x.shape)
        assert tuple(layer.offsets_variable.shape) == regions + (2, 2, 2, 2)


def test_layers_hand_their_variables_and_arguments_to_the_ops(rng):
    """Plumbing, under one implementation (the special cases themselves: test_ops, under both): the templates
    are laid out as Conv2D's kernel; strides, padding, a fixed xi, a learned xi and c reach the op."""
    from kernelzoo.ops import implementation
    x = _input(rng)
    with implementation("composite"):
        sim = Similarity(5, 3, strides=2, padding="same", similarity="linear", weighted=False)
        conv = keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False)
        conv.build(x.shape)
        sim.build(x.shape)
        sim.templates.assign(conv.kernel)
        np.testing.assert_allclose(sim(x), conv(x), rtol=1e-5, atol=1e-5)
        maxpool = Mex(pool_size=2, channel_block=1, padding="same", xi=float("inf"), learn_xi=False)
        np.testing.assert_allclose(maxpool(x), keras.layers.MaxPooling2D(2, padding="same")(x), atol=1e-6)
        relu = Mex(channel_block=1, xi=1e6, use_c=True)
        np.testing.assert_allclose(relu(x), keras.layers.ReLU()(x), atol=1e-5)


def _tiny_simnet(similarity="l2"):
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        Similarity(6, 3, similarity=similarity, weights_initializer=keras.initializers.RandomUniform(0.5, 1.5)),
        Mex(num_instances=2, offsets=(2, 2), xi=1.0),
        Mex(pool_size=6, channel_block=1, xi=0.0, learn_xi=False),
        keras.layers.Flatten(),
    ])


def _bright_vs_dark(rng, n=64):
    labels = rng.integers(0, 2, n)
    images = rng.normal(size=(n, 8, 8, 1)).astype("float32") * 0.3 + labels[:, None, None, None] - 0.5
    return images, labels


def test_sequential_simnet_trains(impl, rng):
    keras.utils.set_random_seed(0)
    images, labels = _bright_vs_dark(rng)
    model = _tiny_simnet()
    model.compile(keras.optimizers.SGD(0.2, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(images, labels, verbose=0)
    model.fit(images, labels, epochs=15, batch_size=16, verbose=0)
    after = model.evaluate(images, labels, verbose=0)
    assert after < 0.5 * before


def test_an_optimizer_step_keeps_the_weights_non_negative_and_a_learned_p_at_its_floor():
    """One SGD step that drives both below their constraints (training alone keeps the weights >= 0.29)."""
    import tensorflow as tf
    sim = Similarity(2, 2, similarity="lp", p=0.06, learn_p=True)
    sim.build((None, 4, 4, 1))
    assert sim.template_weights.shape == (2, 2, 1, 2) and sim.p_variable.shape == (2,)
    keras.optimizers.SGD(1.0).apply([tf.fill(sim.template_weights.shape, 10.0), tf.ones((2,))],
                                    [sim.template_weights, sim.p_variable])
    assert np.all(sim.template_weights.numpy() == 0)  # 1 - 10, clipped by non_neg
    np.testing.assert_allclose(sim.p_variable.numpy(), [0.05, 0.05])  # 0.06 - 1, clipped by MinValue(0.05)


def test_functional_model_with_learned_p_and_xi_gets_their_gradients(impl, rng):
    inputs = keras.Input((6, 6, 2))
    x = Similarity(3, 2, similarity="lp", p=1.5, learn_p=True)(inputs)
    outputs = Mex(num_instances=2, pool_size=5, use_c=True, offsets="shared")(x)
    model = keras.Model(inputs, outputs)
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(_input(rng, (2, 6, 6, 2))) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    names = [v.path for v in model.trainable_variables]
    assert all(g is not None and np.any(np.asarray(g) != 0) for g in grads), names


def test_layers_on_the_custom_ops_opt_out_of_xla(impl):
    """The custom ops have no XLA kernels: under them the layers say supports_jit=False, and Keras then compiles
    without XLA (jit_compile="auto" on a GPU, or True, would compile them with XLA otherwise), whichever
    implementation was selected when the layers were built."""
    from kernelzoo.ops import implementation
    other = {"composite": "custom", "custom": "composite"}[impl]
    with implementation(other):  # built under the other one: what counts is the implementation at compile time
        layers = [Similarity(3, 2), Mex(pool_size=2)]
        model = keras.Sequential([keras.Input((6, 6, 2))] + layers)
    jit = impl == "composite"
    assert [layer.supports_jit for layer in layers] == [jit, jit]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Model doesn't support `jit_compile=True`")
        model.compile("sgd", "mse", jit_compile=True)
    assert model.jit_compile is jit


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_the_compute_dtype(impl, rng, policy):
    """Activations in the policy's compute dtype (the custom ops' T), variables and their gradients float32,
    values those of the float32 layers within the compute dtype's rounding."""
    import tensorflow as tf
    dtype = keras.backend.standardize_dtype
    compute = keras.DTypePolicy(policy).compute_dtype
    make = [lambda **kw: Similarity(3, 2, **kw), lambda **kw: Mex(pool_size=2, offsets="shared", use_c=True, **kw)]
    mixed, full = [f(dtype=policy) for f in make], [f() for f in make]
    x = _input(rng)
    hidden = mixed[0](x)
    out = mixed[1](hidden)
    full[1](full[0](x))
    for a, b in zip(full, mixed):
        a.set_weights(b.get_weights())
    ref = full[1](full[0](x))
    assert dtype(hidden.dtype) == dtype(out.dtype) == compute
    assert all(dtype(v.dtype) == "float32" for layer in mixed for v in layer.weights)
    scale = np.abs(np.asarray(ref)).max()
    epsilon = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}[compute]
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=4 * epsilon * scale)
    variables = [v for layer in mixed for v in layer.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(mixed[1](mixed[0](x)), tf.float32) ** 2)
    grads = tape.gradient(loss, variables)
    assert all(g.dtype == tf.float32 and np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)
    from kernelzoo.ops import api
    if api.selected_implementation() == "custom":  # the ops run on the compute dtype, not a float32 copy
        graph = tf.function(lambda t: mixed[1](mixed[0](t))).get_concrete_function(tf.TensorSpec(x.shape)).graph
        types = {op.type: op.get_attr("T") for op in graph.get_operations() if op.type.startswith("Kernelzoo")}
        assert types == {"KernelzooSimilarity": tf.as_dtype(compute), "KernelzooMex": tf.as_dtype(compute)}


def test_saved_model_loads_in_a_fresh_process(tmp_path, rng):
    """Every weight moved off its initial value first (kept valid: > 0), so a load that dropped one (the MEX
    offsets at 0, xi at 1) fails."""
    model = _tiny_simnet("l1")
    for v in model.weights:
        v.assign(np.abs(v.numpy()) + rng.uniform(0.1, 0.5, v.shape))
    assert [v.name for v in model.weights] == ["templates", "weights", "xi", "offsets"]
    images = _bright_vs_dark(rng, 8)[0]
    path = tmp_path / "simnet.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", images)
    script = (
        "import sys, numpy as np, keras, kernelzoo\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))\n"
        "np.savez(sys.argv[4], *m.get_weights())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                    str(tmp_path / "w.npz")], check=True, env=dict(os.environ, KERNELZOO_OPS="composite"))
    loaded = np.load(tmp_path / "w.npz")
    weights = model.get_weights()
    assert len(loaded.files) == len(weights)
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(loaded[f"arr_{i}"], w)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,message", [
    (lambda: Similarity(0, 3), "`filters`"),
    (lambda: Similarity(3, (2, 2, 2)), "`kernel_size`"),
    (lambda: Similarity(3, 2, similarity="cosine"), "`similarity`"),
    (lambda: Similarity(3, 2, similarity="lp"), "needs `p`"),
    (lambda: Similarity(3, 2, similarity="lp", p=-1.0), "`p` must be finite and > 0"),
    (lambda: Similarity(3, 2, similarity="lp", p=[1.0, 2.0]), "`p` must be a number or a list of 3"),
    (lambda: Similarity(3, 2, similarity="l2", p=2.0), "`p` is only used with similarity='lp'"),
    (lambda: Similarity(3, 2, learn_p=True), "`learn_p=True` needs similarity='lp'"),
    (lambda: Similarity(3, 2, similarity="linear", normalization_term=True), "`normalization_term`"),
    (lambda: Similarity(3, 2, padding="causal"), "`padding`"),
    (lambda: Mex(num_instances=0), "`num_instances`"),
    (lambda: Mex(xi=float("nan")), "`xi` must be a real"),
    (lambda: Mex(num_instances=2, xi=[1.0, 2.0, 3.0]), "`xi` must be a real .* list of 2"),
    (lambda: Mex(offsets="everywhere"), "`offsets`"),
    (lambda: Mex(xi=0.0, learn_xi=False, softmax_mode=True), "`xi`=0 with softmax_mode=True"),
    (lambda: Mex(xi=[1.0, 0.0], num_instances=2, learn_xi=True, softmax_mode=True), "`xi`=0 with softmax_mode"),
    (lambda: Mex(learn_xi="no"), "`learn_xi`"),
    (lambda: Mex(softmax_mode=1), "`softmax_mode`"),
    # a bad boolean is named before a check that combines it with another argument reads it
    (lambda: Mex(xi=0.0, softmax_mode="no"), "`softmax_mode` must be True or False"),
    (lambda: Similarity(3, 3, similarity="linear", normalization_term="no"), "`normalization_term` must be True or"),
    (lambda: Similarity(3, 2, weighted="False"), "`weighted`"),
    (lambda: Similarity(3, 2, ignore_nan=None), "`ignore_nan`"),
    (lambda: __import__("kernelzoo.layers", fromlist=["KernelDense"]).KernelDense(3, use_bias="false"), "`use_bias`"),
    (lambda: Mex(pool_size=0), "`pool_size`"),
    (lambda: Similarity(3, 2, similarity="lp", p=float("inf")), "`p` must be finite"),
    (lambda: Similarity(2, 2, similarity="lp", p=[1.0, float("inf")]), "`p` must be finite"),
    (lambda: Similarity(3, 2, similarity="lp", p=float("nan")), "`p`"),
    (lambda: Similarity(3, 2, similarity="lp", p="2"), "`p`"),
    (lambda: Similarity(3, 2, similarity="lp", p=0.01, learn_p=True), "`p` must be >= 0.05 with learn_p=True"),
    (lambda: Similarity(2, 2, similarity="lp", p=[1.0, 0.04], learn_p=True), "`p` must be >= 0.05"),
    (lambda: Mex(xi=True), "`xi`"),
    (lambda: Mex(xi="1"), "`xi`"),
    (lambda: Mex(num_instances=2, xi=[1.0, True]), "`xi`"),
    (lambda: MinValue(float("inf")), "`min_value`"),
    (lambda: sgd_weight_decay(float("inf")), "`weight_decay`"),
    (lambda: FusedBatchNormalization(momentum=2.0), "`momentum`"),
    (lambda: FusedBatchNormalization(momentum=-0.1), "`momentum`"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_limits_of_the_accepted_arguments():
    """Infinite xi is MEX's max / min pooling; a fixed p may be below the floor of a learned one."""
    assert Mex(num_instances=2, xi=[float("inf"), -float("inf")]).xi == [float("inf"), -float("inf")]
    assert Similarity(3, 2, similarity="lp", p=0.01).p == 0.01
    assert Similarity(3, 2, similarity="lp", p=0.05, learn_p=True).p == 0.05
    assert FusedBatchNormalization(momentum=1.0).momentum == 1.0
    assert sgd_weight_decay(0) is None


def _fused_ops(layer, x):
    """The op types of a training step of `layer`."""
    import tensorflow as tf
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(tf.constant(x)).graph
    return {op.type for op in graph.get_operations()}


def test_fused_batch_norm_leaves_an_epsilon_below_cudnns_least_to_keras(rng):
    """TensorFlow's fused wrappers raise such an epsilon to 1.001e-5; Keras's path normalises with it."""
    x = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    assert "FusedBatchNormV3" in _fused_ops(FusedBatchNormalization(epsilon=1.001e-5), x)
    small = FusedBatchNormalization(epsilon=1e-6)
    assert "FusedBatchNormV3" not in _fused_ops(small, x)
    reference = keras.layers.BatchNormalization(epsilon=1e-6)
    np.testing.assert_allclose(small(x, training=True), reference(x, training=True), rtol=1e-6, atol=1e-6)


def test_triangle_coding_keeps_its_digits_far_from_the_origin(rng):
    """Distances through `squared_distances` (centred): |x|^2 - 2 x.c + |c|^2 of points near 300 loses ~0.03."""
    centroids = 300.0 + rng.uniform(size=(2, 5))
    feats = 300.0 + rng.uniform(size=(1, 3, 4, 2))
    layer = TriangleCoding(5, centroids_initializer=keras.initializers.Constant(centroids))
    z = np.linalg.norm(feats[..., None] - centroids, axis=3)
    np.testing.assert_allclose(layer(feats.astype("float32")), np.maximum(z.mean(-1, keepdims=True) - z, 0), atol=2e-5)


def test_bad_inputs_at_build_and_call(rng):
    with pytest.raises(ValueError, match="channel_block"):
        Mex(channel_block=3)(_input(rng))
    with pytest.raises(ValueError, match="region grid"):
        Mex(pool_size=2, offsets=(5, 1))(_input(rng))
    with pytest.raises(ValueError):
        Similarity(3, 2)(rng.normal(size=(2, 5, 5)).astype("float32"))  # rank 3
    layer = Similarity(3, 2)
    layer(_input(rng))
    with pytest.raises(ValueError):
        layer(_input(rng, (2, 7, 8, 5)))  # channel count changed
    with pytest.raises(ValueError, match="larger than the input"):
        Similarity(3, 9)(_input(rng))
    with pytest.raises(ValueError, match="`kernel_size` \\(3, 9\\) is larger"):
        Similarity(3, (3, 9))(keras.Input((7, 8, 4)))  # symbolic: at build, not with a negative output shape
    with pytest.raises(ValueError, match="`pool_size` \\(5, 5\\) is larger"):
        Mex(pool_size=5)(keras.Input((3, 3, 1)))
    from kernelzoo.layers import CKNConv2D, SparsifyingActivation
    with pytest.raises(ValueError, match="`kernel_size` \\(5, 5\\) is larger"):
        CKNConv2D(4, 5, padding="valid")(keras.Input((3, 3, 2)))
    with pytest.raises(ValueError, match="`axis`=3 is out of range"):
        SparsifyingActivation(axis=3)(keras.Input((5,)))
    with pytest.raises(ValueError, match="static spatial input size"):
        Mex(pool_size=2)(keras.Input((None, None, 4)))
    unshared = Mex(pool_size=2, offsets="unshared")
    unshared(_input(rng, (2, 8, 8, 5)))
    with pytest.raises(ValueError):  # one offset per output position of an 8 x 8 input
        unshared(_input(rng, (2, 16, 16, 5)))
    shared = Mex(pool_size=2, offsets="shared")
    shared(_input(rng, (2, 8, 8, 5)))
    assert tuple(shared(_input(rng, (2, 16, 16, 5))).shape) == (2, 8, 8, 1)


@pytest.mark.parametrize("make", [
    lambda: Similarity(4, 3), lambda: Mex(2),
    lambda: __import__("kernelzoo.layers", fromlist=["KernelDense"]).KernelDense(3),
    lambda: __import__("kernelzoo.layers", fromlist=["SparseKernelDense"]).SparseKernelDense(3),
    lambda: __import__("kernelzoo.layers", fromlist=["SparsifyingActivation"]).SparsifyingActivation(),
])
def test_get_config_holds_exactly_the_constructor_arguments(make):
    import inspect

    layer = make()
    arguments = set(inspect.signature(type(layer).__init__).parameters) - {"self", "kwargs"}
    keras_keys = set(keras.layers.Layer().get_config())  # name, trainable, dtype
    assert set(layer.get_config()) - keras_keys == arguments


def _normalised_model():
    """Input -> Normalization adapted to data of mean ~107 -> Dense: a copy that loses the statistics differs."""
    inputs = keras.Input((4,))
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(np.arange(40, dtype="float32").reshape(10, 4) * 3.0 + 50.0)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(norm(inputs)))


def _float32_export_copy(model):
    from kernelzoo.export._common import float32_model
    with pytest.warns(RuntimeWarning, match="float32 copy"):
        return float32_model(model)


@pytest.mark.parametrize("copy_name", ["float32_copy", "export float32_model", "with_cluster_dtype"])
def test_model_copies_keep_adapted_normalization(copy_name):
    """Copies made with set_weights: Normalization reads statistics finalize_state derives (layers.weights)."""
    from kernelzoo.zoo.layerwise.models import with_cluster_dtype
    from kernelzoo.zoo.precision import float32_copy, precision_policy
    copy_fn = {"float32_copy": float32_copy, "export float32_model": _float32_export_copy,
               "with_cluster_dtype": lambda m: with_cluster_dtype(m, "float32")}[copy_name]
    with precision_policy("mixed_bfloat16" if copy_name == "export float32_model" else "float32"):
        model = _normalised_model()
    x = np.linspace(40.0, 200.0, 12, dtype="float32").reshape(3, 4)
    np.testing.assert_allclose(copy_fn(model).predict(x, verbose=0), model.predict(x, verbose=0), rtol=0.02, atol=0.02)
