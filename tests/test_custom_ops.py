"""Custom C++ ops (kernelzoo.ops.custom) against the composite keras.ops reference.

Covers values and gradients over a grid of configurations, numerical gradients of the
GEMM form, bad shapes reaching the C++ kernels (InvalidArgumentError, not a crash) and the
JIT build / cache of the op library. Skipped only when no C++ compiler exists.
The numerical gradients and NaN propagation of the public API (custom op included) are in test_ops.py.
"""
import argparse
import itertools
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kernelzoo.ops import library

from conftest import background_job, job_folder

if library._compiler() is None:
    pytest.skip("no C++ compiler: the custom ops cannot be built", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from kernelzoo.ops import composite, custom, selfcheck  # noqa: E402
from test_ops import ONE_CHANNEL_STRIDED  # noqa: E402

RNG_SEED = 1234


@pytest.fixture(scope="module")
def lib():
    return library.load()


def _rel_close(actual, expected, rtol, name=""):
    """|a - b| <= rtol * max|b| elementwise (NaN/inf must match exactly)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{name}: NaN pattern")
    np.testing.assert_array_equal(actual[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)], err_msg=f"{name}: inf")
    if not finite.any():
        return
    scale = max(np.max(np.abs(expected[finite])), 1e-30)
    err = np.max(np.abs(actual[finite] - expected[finite])) / scale
    assert err <= rtol, f"{name}: max error {err:.2e} relative to max |ref| > {rtol:.0e}"


def _value_and_grads(fn, tensors, grad_out_seed=0):
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = fn(*tensors)
    g = tf.constant(np.random.default_rng(grad_out_seed).normal(size=y.shape).astype("float32"))
    grads = tape.gradient(y, tensors, output_gradients=g)
    return y.numpy(), [None if v is None else v.numpy() for v in grads]


# ----------------------------------------------------------- similarity --
SIM_GRID = list(itertools.product(["linear", "l1", "l2", "lp"], [False, True], [(1, 1), (2, 3)],
                                  ["valid", "same"], [False, True]))


@pytest.mark.parametrize("kind,weighted,strides,padding,ignore_nan", SIM_GRID)
def test_similarity_matches_composite(lib, kind, weighted, strides, padding, ignore_nan):
    rng = np.random.default_rng(RNG_SEED)
    n = 21  # not a multiple of the SIMD width: exercises the tails
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")
    if ignore_nan:
        x[0, 1, 2, 1] = np.nan
        x[1, 4, 5, :] = np.nan
    z = rng.normal(size=(3, 2, 3, n)).astype("float32")
    u = (rng.uniform(0.2, 1.5, size=z.shape) if weighted else np.ones(z.shape)).astype("float32")
    p = (rng.uniform(0.7, 2.5, size=n) if kind == "lp" else np.full(n, 2.0)).astype("float32")
    kw = dict(similarity=kind, strides=strides, padding=padding, ignore_nan=ignore_nan)

    y, grads = _value_and_grads(lambda *a: custom.similarity(*a, **kw), [x, z, u, p])
    y_ref, grads_ref = _value_and_grads(lambda *a: composite.similarity(*a, **kw), [x, z, u, p])
    assert not np.isnan(y).any()
    _rel_close(y, y_ref, 1e-5, "output")
    for name, g, g_ref in zip(["inputs", "templates", "weights", "p"], grads, grads_ref):
        if g_ref is None:  # composite does not use p for this similarity
            np.testing.assert_array_equal(g, 0.0)
            continue
        _rel_close(g, g_ref, 1e-4, f"grad {name}")
    if ignore_nan:
        assert np.all(grads[0][np.isnan(x)] == 0.0)


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("shape,window,strides", ONE_CHANNEL_STRIDED)
def test_similarity_matches_composite_on_one_channel_batches_with_width_strides(lib, kind, padding, shape, window,
                                                                                strides):
    """Values and gradients where TF 2.21's oneDNN Conv2D was wrong (composite `_conv` works around it)."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.normal(size=shape).astype("float32")
    z = rng.normal(size=window + (1, 5)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = (rng.uniform(0.7, 2.5, size=5) if kind == "lp" else np.full(5, 2.0)).astype("float32")
    kw = dict(similarity=kind, strides=strides, padding=padding, ignore_nan=False)
    y, grads = _value_and_grads(lambda *a: custom.similarity(*a, **kw), [x, z, u, p])
    y_ref, grads_ref = _value_and_grads(lambda *a: composite.similarity(*a, **kw), [x, z, u, p])
    _rel_close(y, y_ref, 1e-5, "output")
    for name, g, g_ref in zip(["inputs", "templates", "weights", "p"], grads, grads_ref):
        if g_ref is not None:
            _rel_close(g, g_ref, 1e-4, f"grad {name}")


# (input shape, patch): a few rows in one chunk; 38 output rows of 38 in two bands (the backward's waves).
SKIP_GEOMETRIES = {"small": ((3, 9, 8, 3), (3, 2)), "bands": ((2, 40, 40, 2), (3, 3))}


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
@pytest.mark.parametrize("padding,ignore_nan", [("valid", False), ("same", True)])
@pytest.mark.parametrize("geometry", sorted(SKIP_GEOMETRIES))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_similarity_gradient_skips_an_unwatched_input(lib, kind, padding, ignore_nan, geometry, dtype):
    """With the input outside the tape (a first layer's images) the gradient op runs with input_grad=False:
    no input gradient, the parameters' gradients those of the full op."""
    rng = np.random.default_rng(RNG_SEED)
    shape, (kh, kw) = SKIP_GEOMETRIES[geometry]
    x = rng.normal(size=shape).astype("float32")
    if ignore_nan:
        x[0, 1, 2, 1] = x[-1, 4, 5, 0] = np.nan
    z = rng.normal(size=(kh, kw, shape[3], 21)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = (rng.uniform(0.7, 2.5, size=21) if kind == "lp" else np.full(21, 2.0)).astype("float32")
    kw_ = dict(similarity=kind, strides=(1, 1), padding=padding, ignore_nan=ignore_nan)
    out_hw = shape[1:3] if padding == "same" else (shape[1] - kh + 1, shape[2] - kw + 1)
    g = tf.constant(rng.normal(size=(shape[0], *out_hw, 21)), dtype)

    @tf.function
    def grads(x, params, watch_input):
        sources = params + ([x] if watch_input else [])
        with tf.GradientTape() as tape:
            tape.watch(sources)
            y = custom.similarity(x, *params, **kw_)
        return tape.gradient(y, sources, output_gradients=g)
    tensors = [tf.constant(x, dtype)] + [tf.constant(t) for t in (z, u, p)]
    for watch_input in (False, True):
        graph = grads.get_concrete_function(tensors[0], tensors[1:], watch_input).graph
        flags = [op.get_attr("input_grad") for op in graph.get_operations() if op.type == "KernelzooSimilarityGrad"]
        assert flags == [watch_input]
    partial, full = grads(tensors[0], tensors[1:], False), grads(tensors[0], tensors[1:], True)
    assert len(partial) == 3 and full[3].shape == x.shape
    for name, a, b in zip(["templates", "weights", "p"], partial, full):
        _rel_close(a, b, 1e-6, f"grad {name}")
    direct = lib.kernelzoo_similarity_grad(*tensors, g, **dict(kw_, strides=[1, 1], input_grad=False))
    assert direct[0].shape == (0,)


# p per template: below 1, 1, 2, large, and in between; 21 templates (SIMD tails).
LP_EDGE_P = np.array([0.3, 0.5, 0.7, 1.0, 1.0, 1.5, 2.0, 2.0, 3.0, 6.0, 10.0,
                      0.9, 1.2, 2.5, 4.0, 8.0, 1.0, 2.0, 0.6, 1.7, 5.0], "float32")


@pytest.mark.parametrize("padding,ignore_nan", [("valid", False), ("same", True)])
def test_lp_similarity_edge_cases(lib, padding, ignore_nan):
    """x and z on one small integer grid (many |x - z| = 0: value and gradients 0, no NaN)."""
    rng = np.random.default_rng(3)
    n = LP_EDGE_P.size
    x = rng.integers(-2, 3, size=(2, 6, 7, 3)).astype("float32")
    if ignore_nan:
        x[0, 2, 3, 1] = np.nan
        x[1, 0, :, :] = np.nan
    z = rng.integers(-2, 3, size=(3, 3, 3, n)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    kw = dict(similarity="lp", strides=(1, 1), padding=padding, ignore_nan=ignore_nan)
    y, grads = _value_and_grads(lambda *a: custom.similarity(*a, **kw), [x, z, u, LP_EDGE_P])
    y_ref, grads_ref = _value_and_grads(lambda *a: composite.similarity(*a, **kw),
                                        [x, z, u, LP_EDGE_P])
    assert not np.isnan(y).any() and all(not np.isnan(g).any() for g in grads)
    # per template (|x - z|^10 would hide the p < 1 columns), p gradient per entry
    for l, p_l in enumerate(LP_EDGE_P):
        _rel_close(y[..., l], y_ref[..., l], 1e-5, f"output, p = {p_l}")
        _rel_close(grads[1][..., l], grads_ref[1][..., l], 1e-4, f"grad templates, p = {p_l}")
        _rel_close(grads[2][..., l], grads_ref[2][..., l], 1e-4, f"grad weights, p = {p_l}")
    np.testing.assert_allclose(grads[3], grads_ref[3], rtol=1e-4, err_msg="grad p")
    _rel_close(grads[0], grads_ref[0], 1e-4, "grad inputs")
    # p = 1 is l1 and p = 2 is l2, values and gradients
    for p_value, kind in [(1.0, "l1"), (2.0, "l2")]:
        pick = np.flatnonzero(LP_EDGE_P == p_value)
        kw_k = dict(kw, similarity=kind)
        y_k, grads_k = _value_and_grads(
            lambda *a: custom.similarity(*a, **kw_k), [x, z[..., pick], u[..., pick], LP_EDGE_P[pick]])
        _rel_close(y[..., pick], y_k, 1e-5, f"p = {p_value} output")
        _, grads_p = _value_and_grads(
            lambda *a: tf.gather(custom.similarity(*a, **kw), pick, axis=-1), [x, z, u, LP_EDGE_P])
        _rel_close(grads_p[1][..., pick], grads_k[1], 1e-4, f"p = {p_value} grad templates")
        _rel_close(grads_p[2][..., pick], grads_k[2], 1e-4, f"p = {p_value} grad weights")


def test_lp_similarity_non_finite_chunks(lib):
    """Chunks holding NaN, inf or huge x take the kernel's special-case path: same results elsewhere."""
    rng = np.random.default_rng(5)
    n = LP_EDGE_P.size
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    z = rng.normal(size=(2, 2, 2, n)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    kw = dict(similarity="lp", strides=(1, 1), padding="valid", ignore_nan=False)
    y, (gx, _, _, _) = _value_and_grads(lambda *a: custom.similarity(*a, **kw), [x, z, u, LP_EDGE_P])
    for bad in [np.nan, np.inf, 3e38]:  # 3e38: |x - z| may overflow
        x_bad = x.copy()
        x_bad[1, 0, 0, 0] = bad
        y_bad, (gx_bad, _, _, _) = _value_and_grads(lambda *a: custom.similarity(*a, **kw),
                                                    [x_bad, z, u, LP_EDGE_P])
        if not np.isfinite(bad):  # |x - z|^p = NaN or inf for every p > 0
            np.testing.assert_array_equal(y_bad[1, 0, 0], np.full(n, -bad, "float32"))
        else:  # -inf where p > 1, finite where p < 1
            # (not for inf: the composite's one-hot patch convolution turns inf * 0 into NaN)
            y_ref = composite.similarity(x_bad, z, u, LP_EDGE_P, **kw).numpy()
            np.testing.assert_allclose(y_bad[1, 0, 0], y_ref[1, 0, 0], rtol=1e-5)
            assert np.isinf(y_bad[1, 0, 0]).any() and np.isfinite(y_bad[1, 0, 0]).any()
        _rel_close(y_bad[1, 1:, 1:], y[1, 1:, 1:], 1e-5, f"{bad}: other outputs")
        _rel_close(y_bad[0], y[0], 0.0, f"{bad}: other image")
        # the input gradient of an entry depends on that entry only
        kept = x_bad == x
        _rel_close(gx_bad[kept], gx[kept], 1e-5, f"{bad}: grad inputs")


def test_similarity_static_shape_in_graph(lib):
    @tf.function(input_signature=[tf.TensorSpec([None, 9, 8, 3], tf.float32)])
    def f(x):
        z = tf.zeros((3, 3, 3, 5))
        return custom.similarity(x, z, tf.ones_like(z), tf.ones(5), similarity="l2",
                                 strides=(2, 2), padding="same", ignore_nan=False)
    out = f.get_concrete_function().outputs[0]
    assert out.shape.as_list() == [None, 5, 4, 5]


# ------------------------------------------------------------------ mex --
def _out_size(size, pool, stride, padding):
    return -(-size // stride) if padding == "same" else (size - pool) // stride + 1


MEX_GRID = list(itertools.product([(2, 2), (3, 2)], [(2, 2), (1, 2)], ["valid", "same"], [1, 2],
                                  ["none", "shared", "regions", "unshared"], [False, True],
                                  [False, True]))


@pytest.mark.parametrize("pool,strides,padding,channel_block,offsets_mode,use_c,softmax", MEX_GRID)
def test_mex_matches_composite(lib, pool, strides, padding, channel_block, offsets_mode, use_c,
                               softmax):
    rng = np.random.default_rng(RNG_SEED)
    # 20 channels with channel_block 1: SIMD lanes plus a scalar remainder.
    channels = 20 if channel_block == 1 else 6
    k = 3
    x = rng.normal(size=(2, 7, 6, channels)).astype("float32")
    xi = np.array([0.7, -2.5, 1e-5 if not softmax else 4.0], "float32")
    oh = _out_size(7, pool[0], strides[0], padding)
    ow = _out_size(6, pool[1], strides[1], padding)
    regions = {"none": None, "shared": (1, 1), "regions": (2, 2), "unshared": (oh, ow)}[offsets_mode]
    tensors = [x, xi]
    if regions is not None:
        tensors.append(rng.normal(size=regions + (k,) + pool + (channel_block,)).astype("float32"))
    if use_c:
        tensors.append(rng.normal(size=k).astype("float32"))
    kw = dict(num_instances=k, pool_size=pool, channel_block=channel_block, strides=strides,
              padding=padding, softmax_mode=softmax)

    def call(mod):
        def fn(*t):
            off = t[2] if regions is not None else None
            c = t[-1] if use_c else None
            return mod.mex(t[0], t[1], off, c, **kw)
        return fn
    y, grads = _value_and_grads(call(custom), tensors)
    y_ref, grads_ref = _value_and_grads(call(composite), tensors)
    assert y.shape == (2, oh, ow, channels // channel_block * k)
    _rel_close(y, y_ref, 1e-5, "output")
    names = ["inputs", "xi"] + (["offsets"] if regions is not None else []) + (["c"] if use_c else [])
    for name, g, g_ref in zip(names, grads, grads_ref):
        _rel_close(g, g_ref, 2e-4 if name == "xi" else 1e-4, f"grad {name}")


XI_EDGE = np.array([0.0, 1e-5, -1e-5, 1.0, -2.5, 1e6, -1e6, np.inf, -np.inf], "float32")


@pytest.mark.parametrize("padding,use_c,softmax,channel_block",
                         list(itertools.product(["valid", "same"], [False, True], [False, True],
                                                [1, 2])))
def test_mex_xi_edge_values(lib, padding, use_c, softmax, channel_block):
    rng = np.random.default_rng(3)
    k = len(XI_EDGE)
    x = rng.normal(size=(2, 5, 5, 18)).astype("float32")
    x[0, 0, 0, :] = x[0, 0, 1, :]  # exact ties for the max / min gradients
    tensors = [x, XI_EDGE, rng.normal(size=(1, 1, k, 2, 2, channel_block)).astype("float32")]
    if use_c:
        tensors.append(rng.normal(size=k).astype("float32"))
    kw = dict(num_instances=k, pool_size=(2, 2), channel_block=channel_block, strides=(2, 2),
              padding=padding, softmax_mode=softmax)

    def call(mod):
        return lambda *t: mod.mex(t[0], t[1], t[2], t[3] if use_c else None, **kw)
    y, grads = _value_and_grads(call(custom), tensors)
    y_ref, grads_ref = _value_and_grads(call(composite), tensors)
    # per instance (columns), relative to that instance's scale
    y, y_ref = y.reshape(-1, k), y_ref.reshape(-1, k)
    for i in range(k):
        _rel_close(y[:, i], y_ref[:, i], 1e-5, f"output xi={XI_EDGE[i]}")
    if softmax:
        assert np.all(y[:, 0] == np.inf)  # xi == 0 in softmax mode
    gx, gxi = grads[0], grads[1]
    _rel_close(gx, grads_ref[0], 1e-4, "grad inputs")
    scale = np.max(np.abs(grads_ref[1][np.isfinite(grads_ref[1])]))
    np.testing.assert_allclose(gxi, grads_ref[1], rtol=2e-4, atol=1e-6 * scale, err_msg="grad xi")
    assert gxi[7] == 0 and gxi[8] == 0  # xi = +-inf
    for g, g_ref, name in zip(grads[2:], grads_ref[2:], ["offsets", "c"]):
        _rel_close(g, g_ref, 1e-4, f"grad {name}")


LONG_SET_XI = np.array([0.7, -2.5, 40.0, 0.05, 1e-6, 0.0], "float32")  # exact, exact, exp, expm1, series, mean


@pytest.mark.parametrize("pool,padding,channel_block", [((1, 1), "valid", 80), ((2, 2), "same", 24),
                                                        ((1, 1), "valid", 37)])
@pytest.mark.parametrize("softmax", [False, True])
def test_mex_long_sets_match_composite(lib, pool, padding, channel_block, softmax):
    """Blocks of many channels (the SimNet's class-wise MEX) take the vectorised long-set path."""
    rng = np.random.default_rng(11)
    k = len(LONG_SET_XI) - (1 if softmax else 0)  # softmax at xi = 0 is +inf (tested above)
    channels = 2 * channel_block
    x = rng.normal(size=(2, 5, 4, channels)).astype("float32")
    tensors = [x, LONG_SET_XI[:k], rng.normal(size=(2, 2, k) + pool + (channel_block,)).astype("float32"),
               rng.normal(size=k).astype("float32")]
    kw = dict(num_instances=k, pool_size=pool, channel_block=channel_block, strides=pool, padding=padding,
              softmax_mode=softmax)

    def call(mod):
        return lambda *t: mod.mex(*t, **kw)
    y, grads = _value_and_grads(call(custom), tensors)
    y_ref, grads_ref = _value_and_grads(call(composite), tensors)
    y, y_ref = y.reshape(-1, k), y_ref.reshape(-1, k)
    for i in range(k):
        _rel_close(y[:, i], y_ref[:, i], 1e-5, f"output xi={LONG_SET_XI[i]}")
    for name, g, g_ref in zip(["inputs", "xi", "offsets", "c"], grads, grads_ref):
        _rel_close(g, g_ref, 2e-4 if name == "xi" else 1e-4, f"grad {name}")
    x[1, 0, 0, 0] = np.nan  # a set with a NaN goes to the scalar path and propagates it
    nan_out = custom.mex(x, *tensors[1:], **kw).numpy()
    np.testing.assert_array_equal(np.isnan(nan_out), np.isnan(composite.mex(x, *tensors[1:], **kw).numpy()))
    assert np.isnan(nan_out[1, 0, 0]).any() and not np.isnan(nan_out[0]).any()


def test_mex_extremes_and_mean(lib):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 6, 17)).astype("float32")
    xi = np.array([np.inf, -np.inf, 0.0], "float32")
    y = custom.mex(x, xi, None, None, num_instances=3, pool_size=(2, 2), channel_block=1,
                   strides=(2, 2), padding="valid", softmax_mode=False).numpy().reshape(2, 3, 3, 17, 3)
    blocks = x.reshape(2, 3, 2, 3, 2, 17)
    np.testing.assert_array_equal(y[..., 0], blocks.max(axis=(2, 4)))
    np.testing.assert_array_equal(y[..., 1], blocks.min(axis=(2, 4)))
    np.testing.assert_allclose(y[..., 2], blocks.mean(axis=(2, 4)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channel_block,pool", [(400, (1, 1)), (5, (1, 1)), (1, (2, 2))],
                         ids=["long_set", "scalar", "vector"])
@pytest.mark.parametrize("spread", [0.01, 0.3])
def test_mex_expm1_regime_is_float_accurate(lib, channel_block, pool, spread):
    """Where |xi| range(v) < 1 the value is about mean(v): each of the op's three paths (long sets, the
    scalar form, channel vectors) shifts by the mean, so the value carries ~eps32 |value| of rounding, not
    ~eps32 range(v) (shifting by max(v) in float32 left 1.1e-6 of max |value| on long sets here)."""
    rng = np.random.default_rng(3)
    channels = channel_block if channel_block > 1 else 16
    x = rng.uniform(-5.0, 5.0, size=(4, 8, 8, channels)).astype("float32")
    xi = np.float32(spread / 10.0)
    y = custom.mex(x, np.full(1, xi), None, None, num_instances=1, pool_size=pool, channel_block=channel_block,
                   strides=pool, padding="valid", softmax_mode=False).numpy().astype("float64")
    (bh, bw), sets = pool, x.astype("float64")
    if channel_block > 1:
        sets = sets.reshape(4, 8, 8, -1, channel_block)
    else:
        sets = sets.reshape(4, 8 // bh, bh, 8 // bw, bw, channels).transpose(0, 1, 3, 5, 2, 4)
        sets = sets.reshape(4, 8 // bh, 8 // bw, channels, bh * bw)
    mean = sets.mean(-1)
    y_ref = mean + np.log(np.mean(np.exp(float(xi) * (sets - mean[..., None])), -1)) / float(xi)
    _rel_close(y, y_ref.reshape(y.shape), 4 * np.finfo(np.float32).eps, f"spread={spread}")


def test_mex_nan_propagates(lib):
    x = np.zeros((1, 4, 4, 17), "float32")
    x[0, 0, 0, 3] = np.nan
    for xi in [1.0, 0.0, np.inf, -3.0]:
        y = custom.mex(x, np.array([xi], "float32"), None, None, num_instances=1, pool_size=(2, 2),
                       channel_block=1, strides=(2, 2), padding="valid", softmax_mode=False).numpy()
        assert np.isnan(y[0, 0, 0, 3]) and np.isnan(y).sum() == 1, xi


# ---------------------------------------------------- class-wise MEX as a GEMM --
# Pool 1x1 over >= 32 channels per block, >= 2 instances sharing one finite nonzero xi: the
# kernels take the exp-domain GEMM form (mex_functor.h), entry by entry falling back to the direct
# form where it is not certified accurate. The op's `gemm` attr (default true) switches the GEMM
# form off, so the same op gives the direct form as a reference: it is the form every other MEX
# test checks against the composite, and the GEMM entries must match it (within float rounding)
# without the O(1e-7) detour of perturbing xi per instance. The composite is the second reference.
GEMM_XI = [1e-4, 0.5, 1.0, 30.0, 1e4, 0.0, np.inf, -np.inf, -1.5]
GEMM_KINDS = ["normal", "wide", "anti", "anti_k", "underflow", "dominant", "nonfinite"]


def _gemm_geometry(channels):
    """(channel blocks, strides, padding): 33 channels also cover 2 blocks and a strided 'same' pool."""
    return (2, (2, 1), "same") if channels == 33 else (1, (1, 1), "valid")


def _gemm_data(kind, channels, k, regions, use_c, blocks, seed=0):
    """Input (2, 5, 4, blocks * channels), offsets (regions + (k, 1, 1, channels)) or None, c or None.

    normal: x ~ N(0, 9), b ~ N(0, 1); wide: b uniform over a range of 1e3; anti: b anti-aligned
    with x by a ramp of 18 shared by all instances (as trained SimNet offsets: the kernels' split
    v = (x + mean b) + (b - mean b) undoes it); anti_k: the ramp of 25 with alternating signs over
    instances (shifts overshoot max(v) by ~20 xi: accepted up to xi ~ 2, cancellation in d/dxi);
    underflow: the same with a ramp of 60 (T < exp(-40) at xi = 1: the direct form); dominant: one
    channel per instance 50 above the rest; nonfinite: NaN and +-inf in x, -inf and NaN in b.
    """
    rng = np.random.default_rng(seed)
    shape = (2, 5, 4, blocks, channels)
    off_shape = (regions or (1, 1)) + (k, 1, 1, channels)
    x = 3.0 * rng.normal(size=shape)
    b = rng.normal(size=off_shape)
    if kind == "wide":
        b = rng.uniform(-500, 500, size=off_shape)
    elif kind in ("anti", "anti_k", "underflow"):
        a = rng.permutation(np.linspace(0.0, {"anti": 18.0, "anti_k": 25.0, "underflow": 60.0}[kind], channels))
        sign = np.ones(k) if kind == "anti" else np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
        x = x + a
        b = b - sign[:, None, None, None] * a
    elif kind == "dominant":
        top = rng.integers(0, channels, size=k)
        b[:, :, np.arange(k), 0, 0, top] += 50.0
    elif kind == "nonfinite":
        x[0, 0, 0, 0, 3] = np.nan
        x[0, 1, 2, -1, 0] = np.inf
        x[1, 3, 1, 0, 7] = -np.inf
        b[0, 0, 0, 0, 0, 5] = -np.inf
        b[-1, -1, k - 1, 0, 0, 1] = np.nan
    x = x.reshape(2, 5, 4, blocks * channels).astype("float32")
    off = b.astype("float32") if regions is not None else None
    c = rng.normal(size=k).astype("float32") if use_c else None
    return x, off, c


def _gemm_regions(mode, out_hw):
    return {"none": None, "shared": (1, 1), "regions": (2, 2), "unshared": out_hw}[mode]


def _mex_value_and_grads(lib, x, xi, off, c, g, **attrs):
    y = _mex(lib, x, xi, off, c, **attrs).numpy()
    grads = _mex(lib, x, xi, off, c, grad=g, **attrs)
    return [y] + [t.numpy() for t in grads]


@pytest.mark.parametrize("channels,k", [(33, 2), (33, 10), (400, 2), (400, 10)])
@pytest.mark.parametrize("regions_mode", ["none", "shared", "regions", "unshared"])
@pytest.mark.parametrize("softmax,use_c", [(False, False), (False, True), (True, False), (True, True)])
def test_mex_gemm_matches_direct(lib, channels, k, regions_mode, softmax, use_c):
    blocks, strides, padding = _gemm_geometry(channels)
    out_hw = (_out_size(5, 1, strides[0], padding), _out_size(4, 1, strides[1], padding))
    regions = _gemm_regions(regions_mode, out_hw)
    attrs = dict(num_instances=k, pool_size=[1, 1], channel_block=channels, strides=list(strides),
                 padding=padding, softmax_mode=softmax)
    g = tf.constant(np.random.default_rng(1).normal(size=(2,) + out_hw + (blocks * k,)).astype("float32"))
    names = ["output", "grad inputs", "grad xi", "grad offsets", "grad c"]
    gemm_ran = False
    for kind in GEMM_KINDS:
        if kind != "nonfinite" and regions is None and kind != "normal":
            continue  # the offsets are what these kinds vary
        x, off, c = _gemm_data(kind, channels, k, regions, use_c, blocks)
        for xi_value in GEMM_XI:
            xi = np.full(k, xi_value, "float32")
            got = _mex_value_and_grads(lib, x, xi, off, c, g, **attrs)
            ref = _mex_value_and_grads(lib, x, xi, off, c, g, gemm=False, **attrs)
            for name, a, b in zip(names, got, ref):
                if name == "grad offsets" and off is None or name == "grad c" and c is None:
                    continue
                _rel_close(a, b, 1e-5 if name == "output" else 1e-4, f"{kind} xi={xi_value} {name}")
            if kind == "normal" and xi_value in (0.5, 1.0, 30.0, -1.5):
                gemm_ran |= bool(np.any(got[0] != ref[0]))  # float rounding differs: the GEMM form ran
            if kind == "nonfinite":
                assert np.isnan(got[0]).any() and np.isnan(got[1]).any()
    assert gemm_ran, "the GEMM form never ran"


def _mex_1x1_float64(x, xi, off, c, g, *, channel_block, strides, softmax):
    """Float64 MEX over pool-1x1 blocks and its gradients (inputs, xi, offsets, c): the reference."""
    xs = x.astype(np.float64)[:, ::strides[0], ::strides[1], :]  # output (i, j) reads pixel (i s_h, j s_w)
    n_img, oh, ow, channels = xs.shape
    k, bc = len(xi), channel_block
    v = xs.reshape(n_img, oh, ow, channels // bc, 1, bc) + np.zeros((k, 1))
    if off is not None:
        ri = np.arange(oh) * off.shape[0] // oh
        rj = np.arange(ow) * off.shape[1] // ow
        v = v + off.astype(np.float64)[ri][:, rj][None, :, :, None, :, 0, 0, :]
    if c is not None:
        v = np.concatenate([v, np.broadcast_to(c.astype(np.float64)[:, None], v.shape[:-1] + (1,))], -1)
    z, size = xi.astype(np.float64)[:, None], v.shape[-1]
    m = np.where(z[:, 0] > 0, v.max(-1), v.min(-1))[..., None]
    e = np.exp(z * (v - m))
    w = e / e.sum(-1, keepdims=True)
    log_mean = np.log(e.mean(-1))
    value = m[..., 0] + log_mean / z[:, 0]
    dxi = ((w * (v - m)).sum(-1) - log_mean / z[:, 0]) / z[:, 0]
    if softmax:
        value = value + np.log(size) / z[:, 0]
        dxi = dxi - np.log(size) / z[:, 0] ** 2
    gw = g.astype(np.float64).reshape(value.shape)[..., None] * w
    gx = np.zeros(x.shape)
    gx[:, ::strides[0], ::strides[1], :] = gw[..., :bc].sum(4).reshape(xs.shape)
    grads = [gx, (g.reshape(value.shape) * dxi).sum((0, 1, 2, 3))]
    if off is not None:
        goff = np.zeros(off.shape)
        per_position = gw[..., :bc].sum((0, 3))  # (oh, ow, K, bc)
        for i in range(oh):
            for j in range(ow):
                goff[ri[i], rj[j], :, 0, 0, :] += per_position[i, j]
        grads.append(goff)
    if c is not None:
        grads.append(gw[..., -1].sum((0, 1, 2, 3)))
    return value.reshape(n_img, oh, ow, -1), grads


GEMM_FINITE_XI = [x for x in GEMM_XI if np.isfinite(x) and x != 0]


@pytest.mark.parametrize("kind", ["normal", "wide", "anti", "anti_k", "underflow", "dominant"])
@pytest.mark.parametrize("geometry", ["simnet", "unshared"])
@pytest.mark.parametrize("softmax,use_c", [(False, False), (True, True)])
def test_mex_gemm_matches_float64(lib, kind, geometry, softmax, use_c):
    """custom.mex (the registered gradient, GEMM form on) against a float64 NumPy reference."""
    channels, k = (400, 10) if geometry == "simnet" else (33, 2)
    blocks, strides, padding = _gemm_geometry(channels)
    out_hw = (_out_size(5, 1, strides[0], padding), _out_size(4, 1, strides[1], padding))
    x, off, c = _gemm_data(kind, channels, k, (2, 2) if geometry == "simnet" else out_hw, use_c, blocks,
                           seed=2)
    kw = dict(num_instances=k, pool_size=(1, 1), channel_block=channels, strides=strides, padding=padding,
              softmax_mode=softmax)

    def fn(*t):
        return custom.mex(t[0], t[1], t[2], t[3] if use_c else None, **kw)
    for xi_value in GEMM_FINITE_XI:
        xi = np.full(k, xi_value, "float32")
        tensors = [x, xi, off] + ([c] if use_c else [])
        y, grads = _value_and_grads(fn, tensors)
        g = np.random.default_rng(0).normal(size=y.shape).astype("float32")  # as in _value_and_grads
        y_ref, grads_ref = _mex_1x1_float64(x, xi, off, c if use_c else None, g, channel_block=channels,
                                            strides=strides, softmax=softmax)
        _rel_close(y, y_ref.astype("float32"), 1e-5, f"xi={xi_value} output")
        for name, gr, gr_ref in zip(["inputs", "xi", "offsets", "c"], grads, grads_ref):
            if name != "xi":  # float32 references: terms below float32's range are 0 for the op too
                _rel_close(gr, gr_ref.astype("float32"), 1e-4, f"xi={xi_value} grad {name}")
                continue
            # xi^2 d value / d xi = log(n) - H(w) (softmax mode: -H(w)). Saturated weights (xi = 1e4)
            # leave only rounding noise of the log(n) terms, in float64 as well: scale with a floor.
            # Rounding v = x + b to float32 (the direct form does) moves the small weights' exponents
            # by |xi| ulp(v): d/dxi is only that accurate, relative.
            floor = 1e-7 * np.abs(g).sum() * np.log(channels + use_c) / xi_value ** 2
            v_max = np.abs(x).max() + np.abs(off).max() + (np.abs(c).max() if use_c else 0.0)
            rtol = max(1e-4, 1e-7 * abs(xi_value) * v_max)
            np.testing.assert_allclose(gr, gr_ref, rtol=0, atol=rtol * max(np.abs(gr_ref).max(), floor),
                                       err_msg=f"xi={xi_value} grad xi")


@pytest.mark.parametrize("kind", ["normal", "wide", "dominant"])
def test_mex_gemm_matches_composite(lib, kind):
    """custom.mex against the composite (which export traces) at the SimNet's shape of block."""
    x, off, c = _gemm_data(kind, 400, 10, (2, 2), True, 1, seed=4)
    kw = dict(num_instances=10, pool_size=(1, 1), channel_block=400, strides=(1, 1), padding="valid",
              softmax_mode=False)

    def call(mod):
        return lambda *t: mod.mex(*t, **kw)
    for xi_value in GEMM_XI:
        tensors = [x, np.full(10, xi_value, "float32"), off, c]
        y, grads = _value_and_grads(call(custom), tensors)
        y_ref, grads_ref = _value_and_grads(call(composite), tensors)
        _rel_close(y, y_ref, 1e-5, f"xi={xi_value} output")
        for name, gr, gr_ref in zip(["inputs", "xi", "offsets", "c"], grads, grads_ref):
            # The float32 composite's d/dxi over 401-element sets is itself off by up to 2.3e-3 (against
            # the float64 reference above, which the op matches to 5e-7): a loose check there.
            _rel_close(gr, gr_ref, 5e-3 if name == "xi" else 1e-4, f"xi={xi_value} grad {name}")


@pytest.mark.parametrize("xi", [1.3, -0.9])
def test_mex_gemm_numerical_gradient(lib, xi):
    """Perturbing one instance's xi makes the xi unequal (the direct form): a check of both."""
    x, off, c = _gemm_data("normal", 33, 2, (2, 1), True, 1, seed=3)
    x = tf.constant(x[:1])

    def f(x, xis, off, c):
        return custom.mex(x, xis, off, c, num_instances=2, pool_size=(1, 1), channel_block=33,
                          strides=(1, 1), padding="valid", softmax_mode=False)
    args = [x, tf.constant([xi, xi]), tf.constant(off), tf.constant(c)]
    theoretical, numerical = tf.test.compute_gradient(f, args, delta=1e-2)
    for t, nm in zip(theoretical, numerical):
        assert np.max(np.abs(t - nm)) / max(np.max(np.abs(nm)), 1.0) < 2e-2


@pytest.mark.parametrize("gemm", [True, False])
def test_mex_gradient_keeps_the_gemm_attr(lib, gemm):
    """The registered gradient runs KernelzooMexGrad with the forward op's `gemm`: one form both ways."""
    x, off, c = _gemm_data("normal", 400, 10, (2, 2), True, 1, seed=6)
    xi = np.full(10, 0.5, "float32")
    kw = dict(num_instances=10, pool_size=(1, 1), channel_block=400, strides=(1, 1), padding="valid",
              softmax_mode=False)

    @tf.function
    def value_and_grads(*tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            y = custom.mex(*tensors, gemm=gemm, **kw)
        return y, tape.gradient(y, tensors, output_gradients=tf.ones_like(y))
    tensors = [tf.constant(t) for t in (x, xi, off, c)]
    graph = value_and_grads.get_concrete_function(*tensors).graph
    attrs = {op.type: op.get_attr("gemm") for op in graph.get_operations() if op.type.startswith("KernelzooMex")}
    assert attrs == {"KernelzooMex": gemm, "KernelzooMexGrad": gemm}
    y, grads = value_and_grads(*tensors)
    attrs = dict(kw, pool_size=[1, 1], strides=[1, 1])
    for form in (True, False):  # the same numbers as the op of that form (the two forms differ in rounding)
        expected = _mex(lib, *tensors, grad=tf.ones_like(y), gemm=form, **attrs)
        same = all(np.array_equal(a, b) for a, b in zip(grads, expected))
        assert same == (form == gemm), form


@pytest.mark.parametrize("kind", ["normal", "anti_k", "dominant"])
@pytest.mark.parametrize("gemm,softmax,use_c", [(True, False, False), (True, True, True), (False, False, True)])
def test_mex_gradient_skips_a_fixed_xi(lib, kind, gemm, softmax, use_c):
    """With xi outside the tape (a fixed xi) the gradient op runs with xi_grad=False: no xi gradient, the others
    those of the full op (the GEMM form within its tolerance: an entry it sends to the direct form only for
    d/dxi's accuracy then stays in the GEMM form; the direct loop the same numbers up to summation order)."""
    x, off, c = _gemm_data(kind, 400, 10, (2, 2), use_c, 1, seed=3)
    kw = dict(num_instances=10, pool_size=(1, 1), channel_block=400, strides=(1, 1), padding="valid",
              softmax_mode=softmax, gemm=gemm)
    g = tf.constant(np.random.default_rng(2).normal(size=(2, 5, 4, 10)).astype("float32"))
    xi = tf.constant(np.full(10, 0.8, "float32"))

    @tf.function
    def grads(xi, params, watch_xi):
        sources = params + ([xi] if watch_xi else [])
        with tf.GradientTape() as tape:
            tape.watch(sources)
            y = custom.mex(params[0], xi, params[1], params[2] if use_c else None, **kw)
        return tape.gradient(y, sources, output_gradients=g)
    params = [tf.constant(t) for t in (x, off, c) if t is not None]
    for watch_xi in (False, True):
        graph = grads.get_concrete_function(xi, params, watch_xi).graph
        assert [op.get_attr("xi_grad") for op in graph.get_operations() if op.type == "KernelzooMexGrad"] == [watch_xi]
    partial, full = grads(xi, params, False), grads(xi, params, True)
    assert full[-1].shape == (10,)
    for name, a, b in zip(["input", "offsets", "c"], partial, full):
        _rel_close(a, b, 1e-5 if gemm else 1e-7, f"grad {name}")
    attrs = dict(kw, pool_size=[1, 1], strides=[1, 1], xi_grad=False)
    assert _mex(lib, x, xi, off, c, grad=g, **attrs)[1].shape == (0,)


# ------------------------------------------------------------ bad shapes --
def _lp_parameter_gradients(x, input_grad):
    """The custom op's lp gradients w.r.t. templates, weights and p for input x, one template z = 10, p = 40 (and
    w.r.t. x when `input_grad`: otherwise the op skips the input's gradient)."""
    tensors = [tf.constant(x), tf.fill((1, 1, 1, 1), 10.0), tf.ones((1, 1, 1, 1)), tf.constant([40.0])]
    with tf.GradientTape() as tape:
        tape.watch(tensors if input_grad else tensors[1:])
        y = custom.similarity(*tensors, similarity="lp", strides=(1, 1), padding="valid", ignore_nan=False)
    return [g.numpy() for g in tape.gradient(y, tensors[1:], output_gradients=tf.ones_like(y))]


@pytest.mark.parametrize("input_grad", [True, False])
def test_lp_parameter_gradients_skip_the_rows_that_pad_a_tile(lib, input_grad):
    """The lp backward works on tiles of 4 positions: a padding row (x = 0, gradient 0) gave 0 * |0 - z|^p = NaN
    where |z|^p overflows float (z = 10, p = 40). Three positions give the gradients of four whose fourth adds
    nothing (x = z: t = 0)."""
    three = np.array([10.5, 10.0, 10.0], "float32").reshape(1, 3, 1, 1)
    four = np.array([10.5, 10.0, 10.0, 10.0], "float32").reshape(1, 4, 1, 1)
    got, want = _lp_parameter_gradients(three, input_grad), _lp_parameter_gradients(four, input_grad)
    for name, a, b in zip(["templates", "weights", "p"], got, want):
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)


def _sim(lib, x, z, u, p, grad=None, **attrs):
    kw = dict(similarity="l2", strides=[1, 1], padding="valid", ignore_nan=False)
    kw.update(attrs)
    if grad is None:
        return lib.kernelzoo_similarity(x, z, u, p, **kw)
    return lib.kernelzoo_similarity_grad(x, z, u, p, grad, **kw)


def test_similarity_bad_shapes_raise(lib):
    x = tf.zeros((2, 6, 6, 3))
    z = tf.zeros((3, 3, 3, 4))
    p = tf.ones(4)
    bad = [
        (tf.zeros((6, 6, 3)), z, z, p, {}),                     # input rank 3
        (x, tf.zeros((3, 3, 2, 4)), tf.zeros((3, 3, 2, 4)), p, {}),  # channel mismatch
        (x, z, tf.zeros((3, 3, 3, 5)), p, {}),                  # weights != templates
        (x, z, z, tf.ones(3), {}),                              # p length
        (x, z, z, tf.ones((4, 1)), {}),                         # p rank
        (x, tf.zeros((7, 3, 3, 4)), tf.zeros((7, 3, 3, 4)), p, {}),  # patch taller than input
        (x, tf.zeros((3, 3, 3)), tf.zeros((3, 3, 3)), p, {}),  # templates rank 3
        (x, z, z, p, {"strides": [1, 1, 1]}),                  # strides length
        (x, z, z, p, {"strides": [0, 1]}),                     # zero stride
    ]
    for i, (a, b, c, d, attrs) in enumerate(bad):
        for kind in ["l2", "l1"]:
            with pytest.raises(tf.errors.InvalidArgumentError):
                _sim(lib, a, b, c, d, similarity=kind, **attrs)
            with pytest.raises(tf.errors.InvalidArgumentError):
                _sim(lib, a, b, c, d, grad=tf.zeros((2, 4, 4, 4)), similarity=kind, **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError):  # grad of the wrong shape
        _sim(lib, x, z, z, p, grad=tf.zeros((2, 4, 5, 4)))
    # graph mode: the shape function rejects it at trace time
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        tf.function(lambda: _sim(lib, x, z, tf.zeros((3, 3, 3, 5)), p))()


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_similarity_shape_function_names_the_padding(lib, padding):
    empty = tf.TensorSpec((0, 3, 3, 4))  # a patch of height 0 fits no padding
    trace = tf.function(lambda x, z: _sim(lib, x, z, z, tf.ones(4), padding=padding)).get_concrete_function
    with pytest.raises(ValueError, match=f"patch of size 0 does not fit the input height of size 6 with padding "
                                         f"'{padding}'"):
        trace(tf.TensorSpec((2, 6, 6, 3)), empty)


def _mex(lib, x, xi, off=None, c=None, grad=None, **attrs):
    kw = dict(num_instances=2, pool_size=[2, 2], channel_block=1, strides=[2, 2],
              padding="valid", softmax_mode=False, use_offsets=off is not None,
              use_c=c is not None)
    kw.update(attrs)
    empty = tf.zeros((0,))
    args = (x, xi, empty if off is None else off, empty if c is None else c)
    if grad is None:
        return lib.kernelzoo_mex(*args, **kw)
    return lib.kernelzoo_mex_grad(*args, grad, **kw)


def test_mex_bad_shapes_raise(lib):
    x = tf.zeros((2, 6, 6, 4))
    xi = tf.ones(2)
    bad = [
        dict(x=tf.zeros((6, 6, 4)), xi=xi),                          # input rank
        dict(x=x, xi=tf.ones(3)),                                    # xi length
        dict(x=x, xi=xi, off=tf.zeros((1, 1, 2, 2, 2))),             # offsets rank
        dict(x=x, xi=xi, off=tf.zeros((1, 1, 3, 2, 2, 1))),          # offsets K
        dict(x=x, xi=xi, off=tf.zeros((1, 1, 2, 3, 2, 1))),          # offsets block
        dict(x=x, xi=xi, off=tf.zeros((4, 1, 2, 2, 2, 1))),          # more regions than rows
        dict(x=x, xi=xi, c=tf.ones(3)),                              # c length
        dict(x=x, xi=xi, channel_block=3),                           # 4 % 3 != 0
        dict(x=x, xi=xi, pool_size=[7, 2]),                          # pool taller than input
        dict(x=x, xi=xi, pool_size=[2, 2, 2]),                       # pool_size length
        dict(x=x, xi=xi, pool_size=[100000, 100000], padding="same"),  # block too large to allocate
    ]
    for case in bad:
        case = dict(case)
        a, b = case.pop("x"), case.pop("xi")
        with pytest.raises(tf.errors.InvalidArgumentError):
            _mex(lib, a, b, **case)
        with pytest.raises(tf.errors.InvalidArgumentError):
            _mex(lib, a, b, grad=tf.zeros((2, 3, 3, 8)), **case)
    with pytest.raises(tf.errors.InvalidArgumentError):  # grad of the wrong shape
        _mex(lib, x, xi, grad=tf.zeros((2, 3, 2, 8)))
    # an input of height 0 gives an output of height 0 that still takes one region: the message says so
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"1 <= Rh <= 1 and 1 <= Rw <= 3, got \[2,1,"):
        _mex(lib, tf.zeros((2, 0, 6, 4)), xi, off=tf.zeros((2, 1, 2, 2, 2, 1)), padding="same")


def test_sizes_that_overflow_int64_raise_instead_of_aborting():
    """Empty tensors with sizes near int64's limit: 'same' with a huge height (ceil(in / s) overflowed: now the
    empty output of the right shape), Mex channels x instances and an offsets shape that overflow (clear errors, in
    eager and graph mode). TensorFlow aborts the process on a TensorShape or a shape-function dimension that
    overflows, so the cases run in a subprocess that must finish normally."""
    code = textwrap.dedent("""
        import tensorflow as tf
        from kernelzoo.ops import library
        M, E, big = library.load(), tf.zeros([0]), 2 ** 63 - 1
        mex = dict(num_instances=2, pool_size=[1, 1], channel_block=1, strides=[1, 1], padding="valid")
        cases = {
            "similarity same": lambda: M.kernelzoo_similarity(
                tf.zeros([0, big, 1, 1]), tf.zeros([1, 1, 1, 2]), tf.zeros([1, 1, 1, 2]), tf.zeros([2]),
                similarity="l2", strides=[2, 1], padding="same"),
            "mex same": lambda: M.kernelzoo_mex(tf.zeros([0, big, 1, 2]), tf.zeros([2]), E, E,
                                                **dict(mex, channel_block=2, strides=[2, 1], padding="same")),
            "mex channels": lambda: M.kernelzoo_mex(tf.zeros([0, 1, 1, 2 ** 62]), tf.zeros([2]), E, E, **mex),
            "mex grad channels": lambda: M.kernelzoo_mex_grad(tf.zeros([0, 1, 1, 2 ** 62]), tf.zeros([2]), E, E,
                                                              tf.zeros([0, 1, 1, 0]), **mex),
            "mex offsets": lambda: M.kernelzoo_mex(
                tf.zeros([1, 4, 4, 4]), tf.ones([2]), tf.zeros([2 ** 62, 1, 0, 2, 2, 2]), E, num_instances=2,
                pool_size=[2, 2], channel_block=2, strides=[2, 2], padding="valid", use_offsets=True),
            "mex graph channels": lambda: tf.function(
                lambda x: M.kernelzoo_mex(x, tf.zeros([2]), E, E, **mex),
                input_signature=[tf.TensorSpec([0, 1, 1, 2 ** 62])]).get_concrete_function(),
        }
        for name, call in cases.items():
            try:
                print(name, "gave", list(call().shape), flush=True)
            except (tf.errors.InvalidArgumentError, ValueError) as error:
                print(name, "raised", type(error).__name__, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]  # an abort: -6
    lines = dict(re.fullmatch(r"(.+?) (?:raised|gave) (.+)", line).groups() for line in done.stdout.splitlines())
    half = 2 ** 62  # ceil((2^63 - 1) / 2)
    assert lines["similarity same"] == lines["mex same"] == f"[0, {half}, 1, 2]", done.stdout
    assert [name for name, result in lines.items() if "Error" in result] == [
        "mex channels", "mex grad channels", "mex offsets", "mex graph channels"], done.stdout


# ------------------------------------------ float16 / bfloat16 activations --
# The ops' attr T: float16 / bfloat16 input, output, grad and grad_input, float32 parameters.
# Reference: the float32 op on the same (rounded) input and output gradient values.
HALF_DTYPES = [tf.float16, tf.bfloat16]
# Relative spacing of T (half an ulp is the rounding of one value).
EPSILON = {tf.float16: 2.0 ** -10, tf.bfloat16: 2.0 ** -7}


def _half_cases(rng):
    x = rng.normal(size=(2, 7, 6, 4)).astype("float32")
    z = rng.normal(size=(3, 2, 4, 5)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    for kind in ["linear", "l2", "lp"]:
        p = (rng.uniform(0.7, 2.5, size=5) if kind == "lp" else np.full(5, 2.0)).astype("float32")
        kw = dict(similarity=kind, strides=(1, 2), padding="same", ignore_nan=False)
        yield f"similarity-{kind}", (lambda *t, kw=kw: custom.similarity(*t, **kw)), [x, z, u, p]
    xi = np.array([0.7, -2.5, 30.0], "float32")
    off = rng.normal(size=(2, 2, 3, 2, 2, 2)).astype("float32")
    c = rng.normal(size=3).astype("float32")
    kw = dict(num_instances=3, pool_size=(2, 2), channel_block=2, strides=(2, 2), padding="same",
              softmax_mode=False, gemm=False)
    yield "mex", (lambda x_, xi_, off_, c_: custom.mex(x_, xi_, off_, c_, **kw)), [x, xi, off, c]
    x_wide = rng.normal(size=(2, 3, 3, 64)).astype("float32")  # the class-wise GEMM form
    kw_gemm = dict(num_instances=4, pool_size=(1, 1), channel_block=32, strides=(1, 1), padding="valid",
                   softmax_mode=True)
    yield "mex-gemm", (lambda x_, xi_: custom.mex(x_, xi_, None, None, **kw_gemm)), [x_wide, np.full(4, 2.0, "f4")]


def _run(fn, tensors, dtype, rounding):
    """fn's output and gradients with the activations (tensors[0]) and the output gradient rounded to
    `rounding` and passed as `dtype`."""
    tensors = [tf.cast(tf.cast(tensors[0], rounding), dtype)] + [tf.convert_to_tensor(t) for t in tensors[1:]]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = fn(*tensors)
    g = tf.cast(tf.cast(np.random.default_rng(0).normal(size=y.shape), rounding), dtype)
    return y, tape.gradient(y, tensors, output_gradients=g)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["float16", "bfloat16"])
def test_half_activations_match_float32_on_the_rounded_values(lib, dtype):
    """Output: the float32 op's output rounded to T, exactly (the CPU kernels compute in float32 on
    the same values). Gradients: grad_input within T's rounding, parameter gradients as float32."""
    for name, fn, tensors in _half_cases(np.random.default_rng(RNG_SEED)):
        y, grads = _run(fn, tensors, dtype, dtype)
        y_ref, grads_ref = _run(fn, tensors, tf.float32, dtype)
        assert y.dtype == dtype and grads[0].dtype == dtype, name
        assert all(g.dtype == tf.float32 for g in grads[1:]), name
        np.testing.assert_array_equal(tf.cast(y, tf.float32).numpy(),
                                      tf.cast(tf.cast(y_ref, dtype), tf.float32).numpy(), err_msg=f"{name}: output")
        gi, gi_ref = tf.cast(grads[0], tf.float32).numpy(), grads_ref[0].numpy()
        np.testing.assert_allclose(gi, gi_ref, rtol=EPSILON[dtype], atol=1e-6 * np.abs(gi_ref).max(),
                                   err_msg=f"{name}: grad input")
        for i, (g, g_ref) in enumerate(zip(grads[1:], grads_ref[1:]), 1):
            _rel_close(g.numpy(), g_ref.numpy(), 1e-5, f"{name}: grad of argument {i}")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["float16", "bfloat16"])
def test_half_activations_custom_and_composite_agree(lib, dtype):
    """Through kernelzoo.ops (both implementations): the input's dtype out, values within T's rounding."""
    from kernelzoo.ops import api
    rng = np.random.default_rng(RNG_SEED)
    x = tf.cast(rng.normal(size=(2, 6, 6, 3)), dtype)
    z = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    outs = {}
    for impl in ["custom", "composite"]:
        with api.implementation(impl):
            outs[impl] = [api.similarity(x, z, similarity="l2", padding="same", normalization_term=True),
                          api.mex(x, [1.0, -3.0], num_instances=2, pool_size=2, channel_block=1, c=[0.5, 0.0])]
    for custom_out, composite_out in zip(outs["custom"], outs["composite"]):
        assert custom_out.dtype == composite_out.dtype == dtype
        _rel_close(tf.cast(custom_out, tf.float32).numpy(), tf.cast(composite_out, tf.float32).numpy(),
                   2 * EPSILON[dtype], "custom vs composite")


def test_half_activations_type_errors_name_the_argument(lib):
    """TF's checks of the op signature (T for input and grad, float for the parameters), as building a
    graph with the ops reports them."""
    def build(x_dtype=tf.float16, z_dtype=tf.float32, grad_dtype=None):
        def fn():
            x, z = tf.zeros((1, 4, 4, 2), x_dtype), tf.zeros((2, 2, 2, 3), z_dtype)
            grad = None if grad_dtype is None else tf.zeros((1, 3, 3, 3), grad_dtype)
            return _sim(lib, x, z, tf.zeros((2, 2, 2, 3)), tf.ones(3), grad=grad)
        tf.function(fn, autograph=False).get_concrete_function()
    build()
    build(grad_dtype=tf.float16)
    with pytest.raises(TypeError, match="parameter 'input' has DataType float64 not in list"):
        build(x_dtype=tf.float64)
    with pytest.raises(TypeError, match="'grad' of 'KernelzooSimilarityGrad' Op has type float32 that does not match"):
        build(grad_dtype=tf.float32)
    with pytest.raises(TypeError, match="'templates' of 'KernelzooSimilarity' Op has type float16"):
        build(z_dtype=tf.float16)


# ------------------------------------------------------- library / cache --
@pytest.mark.parametrize("broken,label", [(custom, "the custom op"), (composite, "the composite reference")])
def test_self_check_names_the_implementation_that_raised(lib, monkeypatch, broken, label):
    def fail(*args, **kwargs):
        raise RuntimeError("broken")

    monkeypatch.setattr(broken, "mex", fail)
    problem = selfcheck._check_op("mex", "/CPU:0")
    assert problem == f"pool 2x2, 2 instances, offsets, c: {label} raised RuntimeError: broken"


def test_build_reuses_cached_library(lib):
    path = library.build()
    mtime = os.stat(path).st_mtime_ns
    assert library.build() == path
    assert os.stat(path).st_mtime_ns == mtime
    name = os.path.basename(path)
    assert name.startswith("libkernelzoo_ops-") and name.endswith(".so")
    assert os.path.dirname(path) == library.cache_dir()
    assert f"tf-{tf.__version__}" in path
    assert library.available() is True
    assert library.load() is lib


def test_kernels_and_cli(lib, capsys):
    pairs = library.kernels()
    for op in ["KernelzooSimilarity", "KernelzooSimilarityGrad", "KernelzooMex", "KernelzooMexGrad"]:
        assert (op, "CPU") in pairs
    parser = argparse.ArgumentParser()
    library.add_arguments(parser, "build-ops")
    assert library.run(parser.parse_args([]), "build-ops") == 0
    out = capsys.readouterr().out
    assert library.build() in out and "KernelzooMexGrad" in out


_TINY_SOURCE = 'extern "C" int kernelzoo_answer() { return 42; }\n'


def _counting_compiler(tmp_path):
    """A $CXX wrapper that logs each compile (-c) and sleeps so builds overlap."""
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cxx"
    real = library._compiler()
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case " $* " in *" -c "*) echo compile >> {log}; sleep 1;; esac
        exec {real} "$@"
        """))
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_concurrent_builds_produce_one_library(tmp_path):
    src = tmp_path / "tiny.cc"
    src.write_text(_TINY_SOURCE)
    out_dir = tmp_path / "cache"
    cxx, log = _counting_compiler(tmp_path)
    # load library.py by path: no TensorFlow import, so both processes start fast
    code = ("import importlib.util as u; "
            f"s = u.spec_from_file_location('kzlib', {library.__file__!r}); "
            "L = u.module_from_spec(s); s.loader.exec_module(L); "
            f"print(L._build_library([{str(src)!r}], [], {str(out_dir)!r}, {cxx!r}, [], []))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    libs = [f for f in os.listdir(out_dir) if f.endswith(".so")]
    assert libs == [os.path.basename(paths.pop())]
    assert log.read_text().count("compile") == 1
    assert not [f for f in os.listdir(out_dir) if f.startswith(".")]  # no temp leftovers
    # a third call reuses it without compiling
    library._build_library([str(src)], [], str(out_dir), cxx, [], [])
    assert log.read_text().count("compile") == 1


def test_build_failure_reports_compiler_output(tmp_path):
    src = tmp_path / "broken.cc"
    src.write_text("int main() { return undefined_symbol_xyz; }\n")
    with pytest.raises(RuntimeError, match="undefined_symbol_xyz"):
        library._build_library([str(src)], [], str(tmp_path / "c"), library._compiler(), [], [])
    assert not [f for f in os.listdir(tmp_path / "c") if f.endswith(".so")]


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(library, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        library.build()


def _no_compiler_job():
    folder = job_folder()
    script = (
        "import warnings, numpy as np\n"
        "from kernelzoo import ops\n"
        "x = np.ones((1, 4, 4, 2), 'float32'); z = np.zeros((2, 2, 2, 3), 'float32')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    first = ops.similarity(x, z, similarity='l1')\n"
        "    ops.mex(x, 1.0)\n"
        "messages = [str(w.message) for w in caught if 'custom op library' in str(w.message)]\n"
        "assert len(messages) == 1, messages\n"
        "assert ops.selected_implementation() == 'composite'\n"
        "np.testing.assert_allclose(first, -8.0 * np.ones((1, 3, 3, 3)))\n"
        "print('fallback ok')\n"
    )
    env = dict(os.environ, PATH=str(folder), CXX="", KERNELZOO_CACHE=str(folder / "cache"), KERNELZOO_OPS="auto")
    return background_job("custom ops without a compiler",
                          dict(args=[sys.executable, "-c", script], env=env, timeout=300))


NO_COMPILER = _no_compiler_job()  # fresh processes run beside the in-process tests (conftest.BackgroundJob)


@NO_COMPILER.mark
def test_without_a_compiler_the_ops_warn_once_and_fall_back():
    """A machine with no C++ compiler (empty PATH, fresh cache) still computes, on the composite path."""
    (result,) = NO_COMPILER.results()
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr[-3000:]


_FIRST_CALL_SCRIPT = textwrap.dedent("""\
    import warnings
    import numpy as np
    import tensorflow as tf
    from kernelzoo import ops
    from kernelzoo.ops import composite, library

    @tf.function
    def step(x, z, xi, off):
        y = ops.similarity(x, z, similarity="lp", p=1.5)
        return ops.mex(y, xi, num_instances=2, channel_block=3, offsets=off)

    rng = np.random.default_rng(0)
    args = [rng.normal(size=s).astype("float32") for s in [(2, 5, 5, 2), (2, 2, 2, 3), (2,), (1, 1, 2, 1, 1, 3)]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = step(*args).numpy()
    assert not caught, [str(w.message) for w in caught]
    graph = step.get_concrete_function(*args).graph
    kinds = {op.type for op in graph.get_operations()}
    assert {"KernelzooSimilarity", "KernelzooMex"} <= kinds, kinds
    assert library._build_info is not None and library._build_info.path == library.build()
    with ops.implementation("composite"):
        ref = step.python_function(*args).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    print("first call ok")
    """)


def _first_call_step():
    """Made when the job starts: the library is built first (as the `lib` fixture would), so the fresh
    process only loads it."""
    library.build()
    path = job_folder() / "first_call.py"  # a file: autograph converts only functions whose source it can read
    path.write_text(_FIRST_CALL_SCRIPT)
    return dict(args=[sys.executable, str(path)], timeout=300,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERNELZOO_OPS="auto"))


FIRST_CALL = background_job("custom ops first call in a tf.function", _first_call_step)


@FIRST_CALL.mark
def test_first_op_call_inside_tf_function(lib):
    """A fresh process whose first kernelzoo op call is traced by autograph (a user's tf.function).

    It runs the custom ops, warns nothing (no Python warning, no AutoGraph "could not transform"
    of the build's subprocess calls) and records the build info (autograph's loop rewrite of
    `library.build` once dropped it: 'NoneType' object has no attribute 'fell_back').
    """
    (result,) = FIRST_CALL.results()
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "first call ok" in result.stdout, output[-3000:]
    assert "AutoGraph" not in output and "Warning" not in output, output[-3000:]


def test_clean_removes_only_other_library_versions(tmp_path):
    keep = tmp_path / f"{library.LIB_PREFIX}current.so"
    stale = [tmp_path / f"{library.LIB_PREFIX}old{i}.so" for i in range(2)]
    other = tmp_path / "notes.txt"
    for path in [keep, other, *stale]:
        path.write_text("x")
    removed = library.remove_stale_libraries(str(keep))
    assert sorted(removed) == sorted(str(p) for p in stale)
    assert keep.exists() and other.exists() and not any(p.exists() for p in stale)
