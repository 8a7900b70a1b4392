"""The composite l1/lp similarity and MEX in bounded memory (`kernelzoo.ops.blockwise`).

Small budgets force many blocks, a zero-padded last block, a dynamic batch (a
`tf.function` with a None batch, as Keras traces train steps) and template chunks;
values and every gradient must equal the unblocked computation. The budget must bound
TF's allocator peak, and the loops must run one block at a time.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kernelzoo import ops as kops
from kernelzoo.layers import Mex, Similarity
from kernelzoo.ops import blockwise, composite

# Of the largest reference entry, as the custom-vs-composite tests: only the summation order differs.
VALUE_RTOL, GRAD_RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def composite_path():
    with kops.implementation("composite"):
        yield


def _values_and_grads(fn, arrays, dynamic=False):
    """[fn(*arrays), d<fn, w>/d arrays...] for fixed random w; in a tf.function with a None batch if dynamic."""
    tensors = [tf.constant(a) for a in arrays]
    weights = tf.constant(np.random.default_rng(0).normal(size=fn(*tensors).shape).astype("float32"))

    def step(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            out = fn(*args)
        return [out] + tape.gradient(out, list(args), output_gradients=weights)
    if dynamic:
        signature = [tf.TensorSpec((None,) + arrays[0].shape[1:])] + [tf.TensorSpec(a.shape) for a in arrays[1:]]
        step = tf.function(step, input_signature=signature, autograph=False)
    return [None if t is None else t.numpy() for t in step(*tensors)]


def _assert_same(got, expected):
    """[value, gradients...] equal up to rounding; NaN and inf where the reference has them."""
    for i, (g, e) in enumerate(zip(got, expected)):
        assert (g is None) == (e is None), i
        if e is None:
            continue
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
        finite = np.isfinite(e)
        np.testing.assert_array_equal(g[~finite & ~np.isnan(e)], e[~finite & ~np.isnan(e)])
        scale = max(np.max(np.abs(e[finite]), initial=0.0), 1e-30)
        rtol = VALUE_RTOL if i == 0 else GRAD_RTOL
        assert np.max(np.abs(g[finite] - e[finite]), initial=0.0) <= rtol * scale, (i, scale)


def _blocked(fn, arrays, budget, dynamic):
    with blockwise.memory_budget(budget):
        return _values_and_grads(fn, arrays, dynamic)


def _ops_in(fn, *specs):
    return tf.function(fn, autograph=False).get_concrete_function(*specs).graph.get_operations()


# ------------------------------------------------------------- helper --
def _rowwise(a, b, w, v):
    return keras.ops.tanh(keras.ops.matmul(a, w) + v) * keras.ops.sum(b, axis=1, keepdims=True)


@pytest.mark.parametrize("count", [1, 6, 7, 11])
@pytest.mark.parametrize("dynamic", [False, True])
def test_blockwise_equals_one_call(rng, count, dynamic):
    arrays = [rng.normal(size=(count, 3)), rng.normal(size=(count, 2)), rng.normal(size=(3, 4)), rng.normal(size=4)]
    arrays = [a.astype("float32") for a in arrays]

    def blocks_of_three(a, b, w, v):
        return blockwise.blockwise(_rowwise, [a, b], [w, v], elements_per_row=10)
    expected = _values_and_grads(_rowwise, arrays)
    _assert_same(_blocked(blocks_of_three, arrays, 3 * 10 * 4, dynamic), expected)


def test_blockwise_loops_one_block_at_a_time_and_skips_the_loop_when_one_block_holds_everything():
    def fn(a):
        return blockwise.blockwise(lambda x: x * 2.0, [a], elements_per_row=1)
    with blockwise.memory_budget(4 * 8):  # 8 rows per block
        loops = [op for op in _ops_in(fn, tf.TensorSpec((None, 2))) if op.type in ("While", "StatelessWhile")]
        assert loops and all(op.get_attr("parallel_iterations") == 1 for op in loops)
        assert not [op for op in _ops_in(fn, tf.TensorSpec((8, 2))) if "While" in op.type]
        assert [op for op in _ops_in(fn, tf.TensorSpec((9, 2))) if "While" in op.type]  # one row over a block


# --------------------------------------------------------- similarity --
@pytest.mark.parametrize("kind,ignore_nan", [("l1", False), ("l1", True), ("lp", False), ("lp", True)])
@pytest.mark.parametrize("pairs", [50, 8], ids=["row-blocks", "template-chunks"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_similarity_blocks_equal_one_call(rng, kind, ignore_nan, pairs, dynamic):
    """24 patch rows, 12-vectors, 9 templates: blocks of 5 rows, or of 2 rows x 2 templates."""
    x = rng.normal(size=(2, 5, 4, 2)).astype("float32")
    if ignore_nan:
        x[0, 1, 2, 1] = np.nan
        x[1, 3, :, :] = np.nan
    z = rng.normal(size=(3, 2, 2, 9)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = rng.uniform(0.6, 2.5, size=9).astype("float32")

    def fn(x, z, u, p):
        return kops.similarity(x, z, u, similarity=kind, p=p if kind == "lp" else None, strides=(2, 1),
                               padding="same", normalization_term=True, ignore_nan=ignore_nan)
    budget = pairs * 12 * composite._LIVE_COPIES[kind] * 4  # (row, template) pairs per block
    _assert_same(_blocked(fn, [x, z, u, p], budget, dynamic), _values_and_grads(fn, [x, z, u, p]))


# ---------------------------------------------------------------- MEX --
MEX_CASES = {
    # name: (pool, strides, padding, channel_block, offset regions, use_c, softmax, xi)
    "classwise-regions": ((1, 1), (1, 1), "valid", 6, (2, 2), False, False, "learned"),
    "pool-same-unshared-c": ((2, 2), (1, 2), "same", 2, "unshared", True, False, "learned"),
    "pool-shared-softmax": ((3, 2), (2, 2), "valid", 3, (1, 1), True, True, "learned"),
    "no-offsets-edge-xi": ((2, 2), (2, 2), "same", 1, None, False, False, "edges"),
    "fixed-xi-inf": ((2, 2), (2, 2), "same", 6, (2, 2), True, False, np.inf),
    "fixed-xi-zero": ((1, 1), (1, 1), "valid", 6, (2, 2), False, False, 0.0),
    "fixed-xi-softmax": ((2, 2), (1, 1), "valid", 2, None, True, True, -1.5),
}
EDGE_XI = np.array([0.0, 1e-5, -2.5, np.inf, -np.inf, 40.0], "float32")


@pytest.mark.parametrize("case", list(MEX_CASES))
@pytest.mark.parametrize("dynamic", [False, True])
def test_mex_blocks_equal_one_call(rng, case, dynamic):
    pool, strides, padding, channel_block, regions, use_c, softmax, xi = MEX_CASES[case]
    k = len(EDGE_XI) if xi == "edges" else 3
    x = rng.normal(size=(5, 7, 6, 6)).astype("float32")
    out_h, out_w = (-(-7 // strides[0]), -(-6 // strides[1])) if padding == "same" else (
        (7 - pool[0]) // strides[0] + 1, (6 - pool[1]) // strides[1] + 1)
    regions = (out_h, out_w) if regions == "unshared" else regions
    arrays = [x]
    if isinstance(xi, str):
        arrays.append(EDGE_XI if xi == "edges" else np.array([0.7, -2.5, 1e-5], "float32"))
    if regions is not None:
        arrays.append(rng.normal(size=regions + (k,) + pool + (channel_block,)).astype("float32"))
    if use_c:
        arrays.append(rng.normal(size=k).astype("float32"))

    def fn(x, *rest):
        rest = list(rest)
        xi_arg = rest.pop(0) if isinstance(xi, str) else xi
        offsets = rest.pop(0) if regions is not None else None
        return kops.mex(x, xi_arg, num_instances=k, pool_size=pool, strides=strides, padding=padding,
                        channel_block=channel_block, offsets=offsets, c=rest.pop(0) if use_c else None,
                        softmax_mode=softmax)
    per_image = out_h * out_w * 6 // channel_block * k * (pool[0] * pool[1] * channel_block + 1)
    budget = 2 * per_image * composite._LIVE_COPIES["mex"] * 4  # 2 images per block: 3 blocks, 1 padded
    _assert_same(_blocked(fn, arrays, budget, dynamic), _values_and_grads(fn, arrays))


# ------------------------------------------------------- Keras, memory --
def test_keras_simnet_gradients_with_a_dynamic_batch(rng):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((10, 10, 3)), Similarity(6, 3, similarity="l1", weighted=True),
        Mex(num_instances=4, offsets=(2, 2), learn_xi=True, offsets_initializer="random_normal"),
        Mex(pool_size=8, channel_block=1, xi=0.0, learn_xi=False), keras.layers.Flatten()])
    x = rng.normal(size=(7, 10, 10, 3)).astype("float32")

    @tf.function(input_signature=[tf.TensorSpec((None, 10, 10, 3))], autograph=False)
    def gradients(images):
        with tf.GradientTape() as tape:
            out = model(images)
        return [out] + tape.gradient(out, model.trainable_variables, output_gradients=tf.ones_like(out))
    expected = [t.numpy() for t in gradients(x)]
    with blockwise.memory_budget(20000):
        gradients = tf.function(gradients.python_function, input_signature=gradients.input_signature,
                                autograph=False)
        _assert_same([t.numpy() for t in gradients(x)], expected)


def _allocator_peak(fn, *args):
    try:
        fn(*args)
        tf.config.experimental.reset_memory_stats("CPU:0")
        base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, tf.errors.OpError):
        pytest.skip("TF's CPU allocator statistics are not available here")
    fn(*args)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base


@pytest.mark.parametrize("op", ["l1", "mex"])
def test_budget_bounds_the_allocator_peak(rng, op):
    """fwd+bwd whose unblocked intermediates take 6x the budget stays within it (plus in- and outputs)."""
    if op == "l1":  # 3200 patch rows x 27 x 64 templates: 5 copies of 22 MB unblocked
        arrays = [rng.normal(size=(8, 20, 20, 27)), rng.normal(size=(1, 1, 27, 64)), np.ones((1, 1, 27, 64))]

        def forward(x, z, u):
            return kops.similarity(x, z, u, similarity="l1")
    else:  # 16 images x 64 positions x 10 instances x 65: 14 copies of 2.7 MB unblocked
        arrays = [rng.normal(size=(16, 8, 8, 64)), np.ones(10), rng.normal(size=(2, 2, 10, 1, 1, 64))]

        def forward(x, xi, offsets):
            return kops.mex(x, xi, num_instances=10, offsets=offsets)
    tensors = [tf.constant(a.astype("float32")) for a in arrays]

    def step(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            out = forward(*args)
        return [out] + tape.gradient(out, list(args))
    budget = 6 * 2**20
    with blockwise.memory_budget(budget):
        peak = _allocator_peak(tf.function(step, autograph=False), *tensors)
    in_and_out = 4 * 4 * (sum(a.size for a in arrays) + forward(*tensors).shape.num_elements())
    assert peak < budget + in_and_out, (peak / 2**20, in_and_out / 2**20)


# ------------------------------------------------------------ settings --
def test_memory_budget_is_validated_and_read_from_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="nbytes"):
        with blockwise.memory_budget(0):
            pass
    monkeypatch.setenv(blockwise.BUDGET_ENV, "64")
    assert blockwise.budget_bytes() == 64 * 2**20
    with kops.memory_budget(1000):  # the public name
        assert blockwise.budget_bytes() == 1000
    assert blockwise.budget_bytes() == 64 * 2**20
    for bad in ("lots", "inf", "nan", "-5", "0"):
        monkeypatch.setenv(blockwise.BUDGET_ENV, bad)
        with pytest.raises(ValueError, match=blockwise.BUDGET_ENV):
            blockwise.budget_bytes()
    monkeypatch.delenv(blockwise.BUDGET_ENV)
    assert blockwise.budget_bytes() == blockwise.DEFAULT_BUDGET_MB * 2**20
