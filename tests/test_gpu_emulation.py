"""The GPU kernels (ops/cc/*_gpu.h), run by host emulation, against the CPU kernels.

`ops/capi.py` builds `cc/kernels_capi.cu` with the host compiler: the CUDA kernel bodies run
block by block, each phase for every thread in turn (`cc/gpu_shim.h`), with the grid capped
at a few blocks and odd thread counts so that every grid-stride loop wraps. This checks the
kernels' index math and numerics over the custom-op test grid (odd sizes, padding, strides,
NaN inputs, xi from -inf to inf, offsets by region, long sets); it cannot check concurrency
(races), which `ops/gpu_check.py` checks on a GPU with compute-sanitizer.
"""
import itertools

import ml_dtypes  # noqa: F401 (numpy's "bfloat16")
import numpy as np
import pytest

from kernelzoo.ops import capi, library
from kernelzoo.ops.shapes import output_size

if library._compiler() is None:
    pytest.skip("no C++ compiler: neither the CPU kernels nor the emulation can be built", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from kernelzoo.ops import composite, custom  # noqa: E402
from test_custom_ops import XI_EDGE, _rel_close  # noqa: E402

# Grids of 3 blocks: the tiled forward loops over its tiles, the per-item kernels over
# items in strides of 3 x 37 (a thread count that divides nothing).
LAUNCH = (0, 3, 37)


# The patch-gradient workspace (floats) of the emulation build: similarity_gpu.h's KZ_PATCH_GRAD_FLOATS,
# a compile-time constant (2^24 as shipped), lowered so that one build (~8 s of g++) serves every test: the
# input gradients of the SIM_GRID and half-activation shapes (at most 2 x 11 x 10 x 18 = 3,960 floats) fit
# in one batch, as every batch does with the shipped size, and test_similarity_emulation_input_gradient_in_
# image_batches needs several (a ragged last one included).
PATCH_GRAD_FLOATS = 4096


def _patch_grad_batches(x_shape, z_shape, strides, padding):
    """The images of each input-gradient batch in this build (similarity_gpu.h's PatchGradImages)."""
    n, h, w, c = x_shape
    kh, kw = z_shape[:2]
    per_image = output_size(h, kh, strides[0], padding) * output_size(w, kw, strides[1], padding) * kh * kw * c
    images = min(max(PATCH_GRAD_FLOATS // per_image, 1), n)
    return [min(images, n - first) for first in range(0, n, images)]


def _poisoned(shape, dtype):
    """Outputs and workspaces filled with NaN (0xFF bytes): an entry the kernels do not write cannot pass
    for a right one (np.empty may hand back a freed array holding the very values expected)."""
    return np.full(shape, 0xFF if dtype == "uint8" else np.nan, dtype)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The CUDA kernels built once for the CPU emulation (in a pytest temporary folder, not the user's
    cache), launched with LAUNCH (the op library loaded)."""
    library.load()
    folder = tmp_path_factory.mktemp("capi")
    return capi.Kernels(capi.build(str(folder), defines=(f"KZ_PATCH_GRAD_FLOATS={PATCH_GRAD_FLOATS}",)),
                        empty=_poisoned, launch=LAUNCH)


def _cpu_value_and_grads(fn, tensors, seed=0):
    """Output, output gradient (of the output's dtype) and gradients of the CPU op, as numpy."""
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = fn(*tensors)
    g = np.random.default_rng(seed).normal(size=y.shape).astype(y.dtype.as_numpy_dtype)
    grads = tape.gradient(y, tensors, output_gradients=tf.constant(g))
    return y.numpy(), g, [None if v is None else v.numpy() for v in grads]


SIM_GRID = list(itertools.product(["linear", "l1", "l2", "lp"], [(1, 1), (2, 3)], ["valid", "same"],
                                  [False, True]))


@pytest.mark.parametrize("kind,strides,padding,ignore_nan", SIM_GRID)
def test_similarity_emulation_matches_cpu(emulated, kind, strides, padding, ignore_nan):
    rng = np.random.default_rng(7)
    # 70 templates: two template tiles (64 + 6); 2 x 9 x 8 positions: more than one position tile.
    x = rng.normal(size=(2, 11, 10, 3)).astype("float32")
    if ignore_nan:
        x[0, 1, 2, 0] = x[1, 4, 4, 2] = np.nan
    z = rng.normal(size=(3, 2, 3, 70)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = (rng.uniform(0.6, 2.5, size=70) if kind == "lp" else np.full(70, {"l1": 1.0}.get(kind, 2.0))).astype("float32")
    kw = dict(similarity=kind, strides=strides, padding=padding, ignore_nan=ignore_nan)
    assert _patch_grad_batches(x.shape, z.shape, strides, padding) == [2]  # one batch, as with the shipped size
    y, g, grads = _cpu_value_and_grads(lambda *t: custom.similarity(*t, **kw), [x, z, u, p])
    y_emu = emulated.similarity(x, z, u, p, **kw)
    _rel_close(y_emu, y, 1e-5, "output")
    for name, got, want in zip(["input", "templates", "weights", "p"], emulated.similarity_grad(x, z, u, p, g, **kw),
                               grads):
        if name == "p" and kind != "lp":
            assert not np.any(got), "grad p must be zero unless lp"
            continue
        _rel_close(got, want, 1e-4, f"grad {name}")


def test_similarity_emulation_lp_gradients_skip_the_positions_past_a_split(emulated):
    """The parameters' gradients stage positions in chunks of 16: one past the split (x = 0, gradient 0) gave
    0 * |0 - z|^p = NaN where |z|^p overflows float (z = 10, p = 40); 3 positions: 13 past it. As the CPU op."""
    x = np.array([10.5, 10.0, 10.0], "float32").reshape(1, 3, 1, 1)
    z, u, p = np.full((1, 1, 1, 1), 10.0, "float32"), np.ones((1, 1, 1, 1), "float32"), np.array([40.0], "float32")
    kw = dict(similarity="lp", strides=(1, 1), padding="valid", ignore_nan=False)
    _, g, grads = _cpu_value_and_grads(lambda *t: custom.similarity(*t, **kw), [x, z, u, p])
    for name, got, want in zip(["input", "templates", "weights", "p"], emulated.similarity_grad(x, z, u, p, g, **kw),
                               grads):
        assert np.all(np.isfinite(got)), name
        _rel_close(got, want, 1e-4, f"grad {name}")


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_similarity_emulation_input_gradient_in_image_batches(emulated, kind):
    """The workspace of PATCH_GRAD_FLOATS = 4,096 floats holds three images of 5 x 7 positions x 36 = 1,260
    floats: five images in batches of three and two."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 7, 9, 4)).astype("float32")
    z = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = np.full(5, {"l1": 1.0, "l2": 2.0}[kind], "float32")
    kw = dict(similarity=kind, strides=(1, 1), padding="valid", ignore_nan=False)
    assert _patch_grad_batches(x.shape, z.shape, (1, 1), "valid") == [3, 2]
    y, g, grads = _cpu_value_and_grads(lambda *t: custom.similarity(*t, **kw), [x, z, u, p])
    _rel_close(emulated.similarity_grad(x, z, u, p, g, **kw)[0], grads[0], 1e-4, "grad input")


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_similarity_emulation_skips_the_input_gradient(emulated, kind):
    """A null grad_input (the op's input_grad=False): no patch-gradient kernels, the same parameters' gradients."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")
    z = rng.normal(size=(2, 2, 3, 9)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = rng.uniform(0.6, 2.5, size=9).astype("float32")
    g = rng.normal(size=(2, 6, 5, 9)).astype("float32")
    kw = dict(similarity=kind, strides=(1, 1), padding="valid", ignore_nan=False)
    full = emulated.similarity_grad(x, z, u, p, g, **kw)
    partial = emulated.similarity_grad(x, z, u, p, g, input_grad=False, **kw)
    assert partial[0] is None
    for name, a, b in zip(["templates", "weights", "p"], partial[1:], full[1:]):
        np.testing.assert_array_equal(a, b, err_msg=name)


def _windows_holding(x_shape, pixels, window, strides, padding):
    """(N, H', W') mask of the output positions whose window (padding included) holds one of `pixels`
    ((image, row, column) triples)."""
    n, h, w, _ = x_shape
    sizes = [output_size(size, k, s, padding) for size, k, s in zip((h, w), window, strides)]
    pads = [max((out - 1) * s + k - size, 0) // 2 if padding == "same" else 0
            for size, out, k, s in zip((h, w), sizes, window, strides)]
    mask = np.zeros((n,) + tuple(sizes), bool)
    for image, row, col in pixels:
        for i, j in np.ndindex(*sizes):
            top, left = i * strides[0] - pads[0], j * strides[1] - pads[1]
            mask[image, i, j] |= top <= row < top + window[0] and left <= col < left + window[1]
    return mask


@pytest.mark.parametrize("padding,strides", [("valid", (1, 1)), ("same", (2, 1))])
@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_similarity_emulation_propagates_nan_without_ignore_nan(emulated, kind, padding, strides):
    """NaN in the outputs whose window holds the NaN pixel, for every template, and only there (a corner
    pixel of image 0, an inner one of image 1); elsewhere the CPU op's values."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 7, 2)).astype("float32")
    x[0, 0, 0, 1] = x[1, 3, 4, 0] = np.nan
    z = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = (rng.uniform(0.6, 2.5, size=4) if kind == "lp" else np.full(4, {"l1": 1.0}.get(kind, 2.0))).astype("float32")
    kw = dict(similarity=kind, strides=strides, padding=padding, ignore_nan=False)
    y = emulated.similarity(x, z, u, p, **kw)
    want = np.broadcast_to(_windows_holding(x.shape, [(0, 0, 0), (1, 3, 4)], (3, 3), strides, padding)[..., None],
                           y.shape)
    assert 0 < want.sum() < want.size / 2  # some windows hold a NaN, most do not
    np.testing.assert_array_equal(np.isnan(y), want, err_msg="NaN mask")
    assert np.isfinite(y[~want]).all()
    _rel_close(y, custom.similarity(x, z, u, p, **kw).numpy(), 1e-5, "output")


def _mex_tensors(rng, x_shape, k, pool, channel_block, regions, use_c, xi):
    offsets = None if regions is None else rng.normal(size=regions + (k,) + pool + (channel_block,)).astype("float32")
    c = rng.normal(size=k).astype("float32") if use_c else None
    return rng.normal(size=x_shape).astype("float32"), np.asarray(xi, "float32"), offsets, c


def _check_mex(emulated, x, xi, offsets, c, kw, rtol_xi=2e-4, rtol=1e-5):
    tensors = [t for t in (x, xi, offsets, c) if t is not None]

    def fn(*t):
        it = iter(t[2:])
        return custom.mex(t[0], t[1], next(it) if offsets is not None else None,
                          next(it) if c is not None else None, gemm=False, **kw)
    y, g, grads = _cpu_value_and_grads(fn, tensors)
    k = kw["num_instances"]
    y_emu = emulated.mex(x, xi, offsets, c, **kw)
    y, y_emu = y.reshape(-1, k), y_emu.reshape(-1, k)
    assert y_emu.dtype == y.dtype
    for i in range(k):  # per instance: each has its own scale
        _rel_close(y_emu[:, i], y[:, i], rtol, f"output xi={xi[i]}")
    got = dict(zip(["inputs", "xi", "offsets", "c"], emulated.mex_grad(x, xi, offsets, c, g, **kw)))
    want = dict(zip(["inputs", "xi"] + (["offsets"] if offsets is not None else []) + (["c"] if c is not None else []),
                    grads))
    for name, ref in want.items():
        if name == "xi":
            finite = np.isfinite(ref)
            scale = np.max(np.abs(ref[finite])) if finite.any() else 1.0
            np.testing.assert_allclose(got[name], ref, rtol=rtol_xi, atol=1e-6 * scale, err_msg="grad xi")
        else:
            assert got[name].dtype == ref.dtype, name
            _rel_close(got[name], ref, max(rtol, 1e-4), f"grad {name}")


MEX_GRID = list(itertools.product([(2, 2), (3, 2)], [(2, 2), (1, 2)], ["valid", "same"], [1, 2],
                                  ["none", "shared", "regions", "unshared"], [False, True], [False, True]))


@pytest.mark.parametrize("pool,strides,padding,channel_block,offsets_mode,use_c,softmax", MEX_GRID)
def test_mex_emulation_matches_cpu(emulated, pool, strides, padding, channel_block, offsets_mode, use_c, softmax):
    rng = np.random.default_rng(5)
    oh, ow = output_size(7, pool[0], strides[0], padding), output_size(6, pool[1], strides[1], padding)
    regions = {"none": None, "shared": (1, 1), "regions": (2, 2), "unshared": (oh, ow)}[offsets_mode]
    xi = [0.7, -2.5, 1e-5 if not softmax else 4.0]
    tensors = _mex_tensors(rng, (2, 7, 6, 6), 3, pool, channel_block, regions, use_c, xi)
    _check_mex(emulated, *tensors, dict(num_instances=3, pool_size=pool, channel_block=channel_block,
                                        strides=strides, padding=padding, softmax_mode=softmax))


@pytest.mark.parametrize("padding,use_c,softmax", list(itertools.product(["valid", "same"], [False, True],
                                                                         [False, True])))
def test_mex_emulation_xi_edge_values(emulated, padding, use_c, softmax):
    """xi = 0, tiny, large and +-inf; ties at the max / min."""
    rng = np.random.default_rng(3)
    k = len(XI_EDGE)
    x, xi, offsets, c = _mex_tensors(rng, (2, 5, 5, 4), k, (2, 2), 2, (1, 1), use_c, XI_EDGE)
    x[0, 0, 0, :] = x[0, 0, 1, :]
    _check_mex(emulated, x, xi, offsets, c, dict(num_instances=k, pool_size=(2, 2), channel_block=2, strides=(2, 2),
                                                 padding=padding, softmax_mode=softmax))


@pytest.mark.parametrize("softmax", [False, True])
def test_mex_emulation_long_class_wise_sets(emulated, softmax):
    """The SimNet's class-wise MEX (1x1, 80 channels a block, offsets by region): on the CPU a GEMM, here direct."""
    rng = np.random.default_rng(11)
    xi = [0.7, -2.5, 40.0, 0.05, 1e-6] + ([] if softmax else [0.0])
    k = len(xi)
    tensors = _mex_tensors(rng, (2, 5, 4, 160), k, (1, 1), 80, (2, 2), True, xi)
    _check_mex(emulated, *tensors, dict(num_instances=k, pool_size=(1, 1), channel_block=80, strides=(1, 1),
                                        padding="valid", softmax_mode=softmax))


def test_mex_emulation_skips_the_xi_gradient(emulated):
    """A null grad_xi (the op's xi_grad=False): not written, the other gradients the same."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 5, 4, 6)).astype("float32")
    xi = np.array([0.7, -1.5], "float32")
    off = rng.normal(size=(2, 2, 2, 1, 1, 3)).astype("float32")
    c = rng.normal(size=2).astype("float32")
    kw = dict(num_instances=2, pool_size=(1, 1), channel_block=3, strides=(1, 1))
    g = rng.normal(size=(2, 5, 4, 4)).astype("float32")
    full = emulated.mex_grad(x, xi, off, c, g, **kw)
    partial = emulated.mex_grad(x, xi, off, c, g, xi_grad=False, **kw)
    assert partial[1] is None and full[1].shape == (2,)
    for name, a, b in zip(["input", "offsets", "c"], partial[::2] + partial[3:], full[::2] + full[3:]):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_mex_emulation_propagates_nan(emulated):
    x = np.zeros((1, 4, 4, 1), "float32")
    x[0, 1, 1, 0] = np.nan
    y = emulated.mex(x, np.array([1.0], "float32"), num_instances=1, pool_size=(2, 2), channel_block=1)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 1, 1, 0])


# float16 / bfloat16 activations: the kernels load them as float and round their outputs to them; the
# CPU op computes in float32 on the same values. Outputs and input gradients differ by float rounding
# and then T's (up to one step of T); the parameters' gradients are float32 on both sides.
HALF = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}  # the relative step of T


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("kind,strides,padding,ignore_nan", [("linear", (1, 1), "valid", False),
                                                              ("l2", (2, 3), "same", True),
                                                              ("lp", (1, 1), "same", False)])
def test_similarity_emulation_half_activations(emulated, dtype, kind, strides, padding, ignore_nan):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 11, 10, 3)).astype(dtype)
    if ignore_nan:
        x[0, 1, 2, 0] = x[1, 4, 4, 2] = np.nan
    z = rng.normal(size=(3, 2, 3, 70)).astype("float32")
    u = rng.uniform(0.2, 1.5, size=z.shape).astype("float32")
    p = (rng.uniform(0.6, 2.5, size=70) if kind == "lp" else np.full(70, 2.0)).astype("float32")
    kw = dict(similarity=kind, strides=strides, padding=padding, ignore_nan=ignore_nan)
    y, g, grads = _cpu_value_and_grads(lambda *t: custom.similarity(*t, **kw), [x, z, u, p])
    y_emu = emulated.similarity(x, z, u, p, **kw)
    assert y_emu.dtype == y.dtype == x.dtype
    _rel_close(y_emu, y, HALF[dtype], "output")
    got = emulated.similarity_grad(x, z, u, p, g, **kw)
    assert [a.dtype for a in got] == [a.dtype for a in grads] == [x.dtype] + [np.float32] * 3
    for name, a, b in zip(["input", "templates", "weights", "p"], got, grads):
        _rel_close(a, b, HALF[dtype] if name == "input" else 1e-4, f"grad {name}")


@pytest.mark.parametrize("dtype", list(HALF))
@pytest.mark.parametrize("pool,strides,padding,channel_block,offsets_mode,use_c,softmax", [
    ((2, 2), (2, 2), "same", 2, "regions", True, False),
    ((3, 2), (1, 2), "valid", 1, "unshared", False, True)])
def test_mex_emulation_half_activations(emulated, dtype, pool, strides, padding, channel_block, offsets_mode,
                                        use_c, softmax):
    rng = np.random.default_rng(5)
    regions = {"regions": (2, 2), "unshared": (5, 3)}[offsets_mode]
    x, xi, offsets, c = _mex_tensors(rng, (2, 7, 6, 6), 3, pool, channel_block, regions, use_c,
                                     [0.7, -2.5, 1e-5 if not softmax else 4.0])
    _check_mex(emulated, x.astype(dtype), xi, offsets, c,
               dict(num_instances=3, pool_size=pool, channel_block=channel_block, strides=strides,
                    padding=padding, softmax_mode=softmax), rtol=HALF[dtype])


@pytest.mark.parametrize("dtype", list(HALF))
def test_mex_emulation_half_activations_long_sets(emulated, dtype):
    """80-entry sets (read in place, not copied): the class-wise MEX with offsets and c."""
    rng = np.random.default_rng(11)
    x, xi, offsets, c = _mex_tensors(rng, (2, 5, 4, 160), 3, (1, 1), 80, (2, 2), True, [0.7, -2.5, 40.0])
    _check_mex(emulated, x.astype(dtype), xi, offsets, c,
               dict(num_instances=3, pool_size=(1, 1), channel_block=80, strides=(1, 1), padding="valid",
                    softmax_mode=False), rtol=HALF[dtype])


@pytest.mark.parametrize("dtype", list(HALF))
def test_emulation_rounds_like_numpy(emulated, dtype):
    """The kernels' float <-> T conversions: every T value through a one-entry MEX (the identity), and
    float32 sums x + offset (normal, subnormal, overflowing, inf, NaN) rounded to T as numpy rounds them."""
    every = np.arange(2 ** 16, dtype=np.uint16).view(np.dtype(dtype)).reshape(1, 256, 256, 1)
    one = dict(num_instances=1, pool_size=(1, 1), channel_block=1)
    y = emulated.mex(every, np.ones(1, "float32"), **one)
    assert y.dtype == every.dtype
    np.testing.assert_array_equal(y.astype("float32"), every.astype("float32"))  # NaN where NaN; -0 == 0
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(1, 64, 64, 1)) * 4).astype(dtype)
    offsets = (rng.normal(size=(64, 64, 1, 1, 1, 1)) * np.logspace(-30, 6, 64 * 64).reshape(64, 64, 1, 1, 1, 1))
    step = HALF[dtype]  # ties (to even) at 1 and at float16's smallest subnormal 2^-24
    ties = [1 + step / 2, 1 + 3 * step / 2, -1 - step / 2, 2.0 ** -25, 3 * 2.0 ** -25]
    offsets.flat[:10] = [65519.0, 65520.0, np.inf, -np.inf, np.nan] + ties
    x.flat[:10] = 0
    offsets = offsets.astype("float32")
    with np.errstate(over="ignore"):
        want = (x.astype("float32") + offsets.reshape(1, 64, 64, 1)).astype(dtype)
    y = emulated.mex(x, np.ones(1, "float32"), offsets, **one)
    np.testing.assert_array_equal(y.astype("float32"), want.astype("float32"))


def test_capi_rejects_a_bad_configuration(emulated):
    x = np.zeros((1, 3, 3, 2), "float32")
    z = np.zeros((5, 5, 2, 1), "float32")  # a 5x5 patch does not fit 3x3 with 'valid'
    with pytest.raises(RuntimeError, match="invalid similarity configuration"):
        emulated._call("kz_similarity_forward", emulated.similarity_config(x.shape, z.shape, "l2", 1, "valid", False),
                       emulated.launch, *[None] * 5)


def test_gpu_check_harness_on_the_emulation(emulated, tmp_path):
    """ops/gpu_check.py end to end here: the CPU kernels' reference (float32, float16 and bfloat16 cases),
    then `check` with the emulated kernels in place of the GPU build: every comparison passes, and a
    reference value moved by 1e-3 of its scale is reported."""
    from kernelzoo.ops import gpu_check

    reference = gpu_check.make_reference(str(tmp_path / "ref.npz"))
    rows = gpu_check.check(emulated, reference)
    assert {c["dtype"] for c in gpu_check.cases()} == {"float32", "float16", "bfloat16"}
    assert len(rows) > 1000 and all(ok for *_, ok in rows), [r for r in rows if not r[4]][:5]
    saved = dict(np.load(reference))
    key = "sim-l2-s11-valid-nan0/output"
    saved[key] = saved[key] + 1e-3 * np.abs(saved[key]).max() * (np.arange(saved[key].size) == 7).reshape(
        saved[key].shape)
    np.savez(tmp_path / "bad.npz", **saved)
    failed = [r[:2] for r in gpu_check.check(emulated, str(tmp_path / "bad.npz")) if not r[4]]
    assert failed == [("sim-l2-s11-valid-nan0", "output")]


def test_gpu_check_relative_error_is_entry_by_entry():
    """Each entry relative to itself, down to a floor of RELATIVE_FLOOR x the largest: a small entry that is
    badly wrong fails (against max |b| alone, 1e-3 wrong by 100% was an error of 1e-5); float rounding of an
    entry below the floor (a sum that cancels) does not."""
    from kernelzoo.ops import gpu_check

    expected = np.array([100.0, -40.0, 1e-3, 2.5, 1e-9, np.inf, np.nan])
    assert gpu_check.relative_error(expected, expected) == 0.0
    wrong = expected.copy()
    wrong[2] = 2e-3  # 100% off, 1e-5 of the largest entry
    assert abs(np.max(np.abs(wrong[:5] - expected[:5])) / 100.0 - 1e-5) < 1e-12  # what the old formula reported
    assert gpu_check.relative_error(wrong, expected) == pytest.approx(1e-3)  # 1e-3 / max(1e-3, 1e-2 * 100)
    assert gpu_check.relative_error(wrong, expected) > gpu_check.TOLERANCE["grad"]
    rounded = expected * (1 + 1e-7)
    rounded[4] = 1e-9 + 1e-7 * 100  # 1e-7 of the largest: rounding in a sum that cancels, below the floor
    assert gpu_check.relative_error(rounded, expected) < gpu_check.TOLERANCE["output"]
    wrong = expected.copy()
    wrong[1] *= 1 + 1e-3  # a large entry off by 1e-3 of itself
    assert gpu_check.relative_error(wrong, expected) == pytest.approx(1e-3)
    for pattern in ([100.0, -40.0, 1e-3, 2.5, 1e-9, np.nan, np.nan], [100.0, -40.0, 1e-3, 2.5, 1e-9, -np.inf, np.nan]):
        assert gpu_check.relative_error(np.array(pattern), expected) == np.inf


def test_gpu_check_names_a_missing_reference(emulated, tmp_path):
    from kernelzoo.ops import gpu_check
    with pytest.raises(FileNotFoundError, match="gpu_check reference"):
        gpu_check.check(emulated, str(tmp_path / "absent.npz"))


@pytest.mark.parametrize("infinity", [np.inf, -np.inf])
def test_mex_emulation_of_sets_holding_an_infinity(emulated, infinity):
    """xi = 0: the mean, that infinity (the shared MexSetForward); other xi as the CPU kernels."""
    x = np.tile(np.array([1.0, 2.0, infinity, 4.0], "float32").reshape(1, 2, 2, 1), (2, 2, 2, 4))
    xi = np.array([0.0, 0.5, -0.5], "float32")
    kw = dict(num_instances=3, pool_size=(2, 2), channel_block=2, strides=(2, 2), padding="valid", softmax_mode=False)
    y = emulated.mex(x, xi, None, None, **kw).reshape(-1, 3)
    np.testing.assert_array_equal(y[:, 0], infinity)
    _check_mex(emulated, x, xi, None, None, kw)


# ------------------------------------------------- non-finite inputs (GPU, CPU, composite) --
# A NaN (ignore_nan=False) or +-inf input entry, at a corner of image 0 (one window) and inside image 1 (six
# windows), "valid", stride 1: the emulated GPU kernels against the CPU op, entry by entry (NaN and inf
# patterns included), and both against the composite where it is a reference (see each test).
NONFINITE_X, NONFINITE_WINDOW, NONFINITE_AT = (2, 5, 6, 2), (2, 3), [(0, 0, 0, 1), (1, 2, 3, 0)]


def _nonfinite_case(kind, weighted, bad):
    rng = np.random.default_rng(12)
    x = rng.normal(size=NONFINITE_X).astype("float32")
    for at in NONFINITE_AT:
        x[at] = bad
    z = rng.normal(size=NONFINITE_WINDOW + (NONFINITE_X[-1], 5)).astype("float32")
    u = (rng.uniform(0.2, 1.5, size=z.shape) if weighted else np.ones(z.shape)).astype("float32")
    p = (np.array([0.7, 1.0, 1.5, 2.0, 2.5]) if kind == "lp" else np.full(5, {"l1": 1.0}.get(kind, 2.0)))
    return x, z, u, p.astype("float32")


def _entries_seen(x_mask, window):
    """(D,) bool: patch entry d of some window ("valid", stride 1) is one of the masked input entries."""
    n, h, w, c = x_mask.shape
    kh, kw = window
    return np.array([x_mask[:, a:a + h - kh + 1, b:b + w - kw + 1, ch].any()
                     for a in range(kh) for b in range(kw) for ch in range(c)])


def _three_ways(emulated, x, z, u, p, kw):
    """(output, grads) of the CPU op, of the emulated GPU kernels and of the composite (same output gradient)."""
    y, g, grads = _cpu_value_and_grads(lambda *t: custom.similarity(*t, **kw), [x, z, u, p])
    y_ref, _, grads_ref = _cpu_value_and_grads(lambda *t: composite.similarity(*t, **kw), [x, z, u, p])
    emu = (emulated.similarity(x, z, u, p, **kw), list(emulated.similarity_grad(x, z, u, p, g, **kw)))
    if grads_ref[3] is None:  # the composite does not use p
        grads_ref[3] = np.zeros_like(p)
    return (y, grads), emu, (y_ref, grads_ref)


NAMES = ["output", "grad input", "grad templates", "grad weights", "grad p"]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_similarity_emulation_nan_without_ignore_nan_gradients(emulated, kind, weighted):
    """NaN propagates as IEEE arithmetic gives it entry by entry: dphi/dx and dphi/dz are NaN at a NaN x
    (sign(NaN) = NaN for l1, as |t|^(p-1) for lp and t for l2), so the input gradient is NaN at the NaN
    entries only (linear: u z, finite) and the parameters' gradients at the patch entries that see one.
    The composite is NaN there too; it is NaN at more entries (its one-hot patch convolution multiplies the
    NaN by 0 into every entry of the window, for l1 and lp), and equal elsewhere."""
    x, z, u, p = _nonfinite_case(kind, weighted, np.nan)
    kw = dict(similarity=kind, strides=(1, 1), padding="valid", ignore_nan=False)
    (y, grads), (y_emu, grads_emu), (y_ref, grads_ref) = _three_ways(emulated, x, z, u, p, kw)
    seen = np.broadcast_to(_entries_seen(np.isnan(x), NONFINITE_WINDOW).reshape(NONFINITE_WINDOW + (-1, 1)), z.shape)
    want_nan = [None, np.isnan(x) if kind != "linear" else np.zeros(x.shape, bool), seen, seen,
                np.full(p.shape, kind == "lp")]
    for name, cpu, emu, ref, nan in zip(NAMES, [y] + grads, [y_emu] + grads_emu, [y_ref] + grads_ref, want_nan):
        if nan is not None:
            np.testing.assert_array_equal(np.isnan(cpu), nan, err_msg=f"CPU {name}: NaN entries")
        _rel_close(emu, cpu, 1e-5 if name == "output" else 1e-4, f"GPU vs CPU {name}")
        assert np.isnan(ref[np.isnan(cpu)]).all(), f"composite {name}: a number where the op gives NaN"
        finite = np.isfinite(ref)
        _rel_close(cpu[finite], ref[finite], 1e-5 if name == "output" else 1e-4, f"CPU vs composite {name}")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_nan", [False, True])
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_similarity_emulation_infinite_inputs(emulated, kind, bad, ignore_nan, weighted):
    """+-inf inputs: the GPU kernels equal the CPU op entry by entry. linear and l2 equal the composite
    (l2 is its expanded form -(u x^2 - 2 u z x + u z^2), with ignore_nan too: NaN where u z x > 0 at the inf
    entry, else -inf; its weights' gradient likewise), except l2's input gradient at an inf entry in several
    windows: the kernels sum -2 (x sum g u - sum g u z) window by window (inf - inf = NaN), the composite sums
    over the windows first (+-inf). l1 and lp: -inf in the windows holding an inf (the composite is NaN
    there: its one-hot patch convolution gives inf * 0)."""
    x, z, u, p = _nonfinite_case(kind, weighted, bad)
    kw = dict(similarity=kind, strides=(1, 1), padding="valid", ignore_nan=ignore_nan)
    (y, grads), (y_emu, grads_emu), (y_ref, grads_ref) = _three_ways(emulated, x, z, u, p, kw)
    for name, cpu, emu in zip(NAMES, [y] + grads, [y_emu] + grads_emu):
        _rel_close(emu, cpu, 1e-5 if name == "output" else 1e-4, f"GPU vs CPU {name}")
    if kind in ("l1", "lp"):
        inf = _windows_holding(x.shape, [at[:3] for at in NONFINITE_AT], NONFINITE_WINDOW, (1, 1), "valid")
        np.testing.assert_array_equal(y[inf], -np.inf)
        assert np.isfinite(y[~inf]).all()
        _rel_close(y[~inf], y_ref[~inf], 1e-5, "CPU vs composite output")
        return
    several = np.isinf(x) & ~np.isin(np.arange(x.size).reshape(x.shape), np.ravel_multi_index(NONFINITE_AT[0],
                                                                                              x.shape))
    for name, cpu, ref in zip(NAMES, [y] + grads, [y_ref] + grads_ref):
        if name == "grad input" and kind == "l2":
            assert np.isnan(cpu[several]).all() and np.isinf(ref[several]).all()
            cpu, ref = cpu[~several], ref[~several]
        _rel_close(cpu, ref, 1e-5 if name == "output" else 1e-4, f"CPU vs composite {name}")
