"""The similarity and MEX operators against direct NumPy references and the paper's special cases.

The tests taking the `impl` fixture run under each implementation (composite, and the custom TF op
when its library builds here); the bad-argument checks, which raise before either runs, run once
(two of them under each implementation too).
"""
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import gammaln

from kernelzoo import ops as kops
from kernelzoo.ops.shapes import pad_amounts


def similarity_reference(x, z, u, kind, p=None, strides=(1, 1), ignore_nan=False):
    """Direct float64 loops over patches ("valid" padding)."""
    x, z, u = (np.asarray(a, np.float64) for a in (x, z, u))
    n_img, height, width, _ = x.shape
    kh, kw, _, n = z.shape
    out_h, out_w = (height - kh) // strides[0] + 1, (width - kw) // strides[1] + 1
    zz, uu = z.reshape(-1, n), u.reshape(-1, n)
    pp = np.broadcast_to(np.asarray(2.0 if p is None else p, np.float64), (n,))
    out = np.zeros((n_img, out_h, out_w, n))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw].reshape(n_img, -1, 1)
            phi = {"linear": lambda: patch * zz, "l1": lambda: -np.abs(patch - zz),
                   "l2": lambda: -(patch - zz) ** 2, "lp": lambda: -np.abs(patch - zz) ** pp}[kind]()
            if ignore_nan:
                phi = np.where(np.isnan(patch), 0.0, phi)
            out[:, i, j] = (uu * phi).sum(1)
    return out


def mex_reference(values, xi):
    """MEX over the last axis in float64 (xi finite nonzero, 0, or +-inf)."""
    values = np.asarray(values, np.float64)
    if xi == 0:
        return values.mean(-1)
    if np.isinf(xi):
        return values.max(-1) if xi > 0 else values.min(-1)
    shift = values.max(-1, keepdims=True) if xi > 0 else values.min(-1, keepdims=True)
    return shift[..., 0] + np.log(np.mean(np.exp(xi * (values - shift)), -1)) / xi


def pool_blocks(x, size):
    """(N, H, W, C) -> (N, H/size, W/size, C, size*size) non-overlapping blocks."""
    n, h, w, c = x.shape
    return x.reshape(n, h // size, size, w // size, size, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, h // size, w // size, c, size * size)


@pytest.mark.parametrize("kind,p", [("linear", None), ("l1", None), ("l2", None), ("lp", 1.5),
                                    ("lp", [0.7, 1.0, 2.0, 3.1])])
@pytest.mark.parametrize("strides", [(1, 1), (2, 3)])
def test_similarity_matches_reference(impl, rng, kind, p, strides):
    x = rng.normal(size=(2, 9, 10, 3)).astype("float32")
    z = rng.normal(size=(3, 2, 3, 4)).astype("float32")
    u = rng.uniform(0.2, 2.0, size=z.shape).astype("float32")
    out = np.asarray(kops.similarity(x, z, u, similarity=kind, p=p, strides=strides))
    np.testing.assert_allclose(out, similarity_reference(x, z, u, kind, p, strides), rtol=1e-5, atol=1e-4)


def test_lp_of_entries_equal_to_the_template_is_zero(impl, rng):
    """|x - z|^p is 0 where an entry equals its template entry (small integers make many such pairs), for any p."""
    x = rng.integers(0, 3, size=(2, 4, 4, 2)).astype("float32")
    z = rng.integers(0, 3, size=(2, 2, 2, 3)).astype("float32")
    p = np.array([0.5, 1.5, 3.0], "float32")
    out = np.asarray(kops.similarity(x, z, similarity="lp", p=p))
    np.testing.assert_allclose(out, similarity_reference(x, z, np.ones(z.shape), "lp", p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_same_padding_pads_with_zeros(impl, rng, kind):
    x = rng.normal(size=(1, 5, 6, 2)).astype("float32")
    z = rng.normal(size=(3, 2, 2, 3)).astype("float32")
    u = rng.uniform(0.2, 2.0, size=z.shape).astype("float32")
    p = 1.3 if kind == "lp" else None
    # TF "same" with a 3x2 window, stride 1: one row before and after, one column after.
    padded = np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0)))
    out = np.asarray(kops.similarity(x, z, u, similarity=kind, p=p, padding="same"))
    np.testing.assert_allclose(out, similarity_reference(padded, z, u, kind, p), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mean", [50.0, 200.0])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_l2_is_accurate_for_inputs_with_a_large_mean(impl, rng, mean, padding):
    """Raw pixels: a template 0.01 from a patch is at l2 distance ~1e-3, which the expansion
    sum u x^2 - 2 sum u z x + sum u z^2 lost to cancellation (+0.008 at mean 50, 0 at 200)."""
    x = (mean + rng.normal(size=(2, 7, 7, 3))).astype("float32")
    z = (x[0, 1:4, 2:5, :, None] + 0.01 + rng.normal(size=(3, 3, 3, 4)) * [0.0, 1.0, 1.0, 1.0]).astype("float32")
    u = rng.uniform(0.2, 1.0, size=z.shape).astype("float32")
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "same" else x
    reference = similarity_reference(padded, z, u, "l2")
    out = np.asarray(kops.similarity(x, z, u, similarity="l2", padding=padding))
    near = (0, 1, 2, 0) if padding == "valid" else (0, 2, 3, 0)
    assert -3e-3 < reference[near] < 0
    assert abs(out[near] - reference[near]) < 2e-5  # float32 rounding of the O(1) centred terms
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_nan_entries_are_marginalised(impl, rng, kind):
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    x[rng.uniform(size=x.shape) < 0.2] = np.nan
    z = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    u = rng.uniform(0.2, 2.0, size=z.shape).astype("float32")
    p = 0.8 if kind == "lp" else None
    out = np.asarray(kops.similarity(x, z, u, similarity=kind, p=p, ignore_nan=True))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, similarity_reference(x, z, u, kind, p, ignore_nan=True), rtol=1e-5, atol=1e-4)
    # "same" padding with ignore_nan pads with NaN: the border counts as missing.
    same = np.asarray(kops.similarity(x, z, u, similarity=kind, p=p, padding="same", ignore_nan=True))
    nan_padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    np.testing.assert_allclose(same, similarity_reference(nan_padded, z, u, kind, p, ignore_nan=True),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_nan_propagates_without_ignore_nan(impl, rng, kind):
    """Exactly the outputs whose window holds the NaN are NaN (every template), all others finite."""
    x = rng.normal(size=(2, 4, 5, 2)).astype("float32")
    x[0, 1, 2, 1] = np.nan  # inside: 4 of the 3 x 4 windows of image 0 hold it, none of image 1
    z = rng.normal(size=(2, 2, 2, 3)).astype("float32")
    p = 1.5 if kind == "lp" else None
    out = np.asarray(kops.similarity(x, z, similarity=kind, p=p))
    nan_windows = similarity_reference(np.isnan(x), np.ones(z.shape), np.ones(z.shape), "linear") > 0
    assert nan_windows.sum() == 4 * 3
    np.testing.assert_array_equal(np.isnan(out), nan_windows)
    assert np.isfinite(out[~nan_windows]).all()


@pytest.mark.parametrize("impl", ["custom"], indirect=True)  # the composite against itself would check nothing
@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
@pytest.mark.parametrize("ignore_nan", [False, True])
def test_nan_input_same_as_composite(impl, rng, kind, ignore_nan):
    """The custom op gives the composite's output on one NaN-holding input: NaN where a patch
    holds a NaN, or (ignore_nan) the marginalised values and their gradients."""
    x = rng.normal(size=(2, 5, 5, 2)).astype("float32")
    x[0, 1, 1, 0] = x[1, 3, 2, 1] = np.nan
    z = rng.normal(size=(2, 2, 2, 3)).astype("float32")
    u = rng.uniform(0.5, 1.5, size=z.shape).astype("float32")
    p = [0.7, 1.5, 3.0] if kind == "lp" else None

    def value_and_grads():
        tensors = [tf.constant(a) for a in (x, z, u)]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            y = kops.similarity(*tensors, similarity=kind, p=p, ignore_nan=ignore_nan,
                                normalization_term=kind != "linear")
        return [y.numpy()] + [g.numpy() for g in tape.gradient(y, tensors)]
    got = value_and_grads()
    with kops.implementation("composite"):
        expected = value_and_grads()
    assert np.isnan(expected[0]).any() != ignore_nan
    # Without ignore_nan only the values: the gradients' NaN patterns differ (the composite's
    # patch extraction spreads a NaN over the input gradients of its neighbours; the custom
    # op's l1 gradient takes the sign of x - z = NaN as +-1).
    names = ["output", "grad inputs", "grad templates", "grad weights"][:4 if ignore_nan else 1]
    for name, a, b in zip(names, got, expected):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN pattern")
        np.testing.assert_allclose(a[~np.isnan(b)], b[~np.isnan(b)], rtol=1e-5, atol=1e-4, err_msg=name)


def test_normalization_term_is_generalised_gaussian_log_density(impl, rng):
    """With a 1x1 patch over one channel the output is log of the GG density (scipy's gennorm)."""
    from scipy.stats import gennorm
    x = rng.normal(size=(1, 3, 3, 1)).astype("float32")
    z = np.array([[[[0.3, -0.5]]]], "float32")
    u = np.array([[[[2.0, 0.5]]]], "float32")
    p = np.array([1.5, 2.5], "float32")
    out = np.asarray(kops.similarity(x, z, u, similarity="lp", p=p, normalization_term=True))
    for l in range(2):  # density p u^(1/p) / (2 Gamma(1/p)) exp(-u |x - z|^p)
        scale = u[0, 0, 0, l] ** (-1.0 / p[l])
        expected = gennorm.logpdf(x[..., 0], p[l], loc=z[0, 0, 0, l], scale=scale)
        np.testing.assert_allclose(out[..., l], expected, rtol=1e-5, atol=1e-5)


def test_normalization_term_with_a_zero_weight_stays_finite(impl, rng):
    """The layers' non_neg constraint can set a weight to 0: its log counts as log(float32 tiny), not -inf."""
    x = tf.constant(rng.normal(size=(1, 3, 3, 2)).astype("float32"))
    z = tf.constant(rng.normal(size=(2, 2, 2, 3)).astype("float32"))
    u = tf.Variable((rng.uniform(0.5, 2.0, size=(2, 2, 2, 3)) * [1.0, 0.0, 1.0]).astype("float32"))
    with tf.GradientTape() as tape:
        out = kops.similarity(x, z, u, similarity="l2", normalization_term=True)
        total = tf.reduce_sum(out)
    gradient = tape.gradient(total, u)
    assert np.isfinite(out.numpy()).all() and np.isfinite(gradient.numpy()).all()
    tiny = np.log(np.finfo(np.float32).tiny) / 2 * 8  # 8 entries of the zero template, p = 2
    assert np.all(out.numpy()[..., 1] < tiny + 1.0)


def test_normalization_term_counts_only_observed_entries(impl, rng):
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    x[0, 1, 1, 0] = np.nan
    z = rng.normal(size=(2, 2, 2, 3)).astype("float32")
    u = rng.uniform(0.5, 2.0, size=z.shape).astype("float32")
    out = np.asarray(kops.similarity(x, z, u, similarity="l2", normalization_term=True, ignore_nan=True))
    core = similarity_reference(x, z, u, "l2", ignore_nan=True)
    per_entry = np.log(2.0) + np.log(u) / 2 - np.log(2.0) - gammaln(0.5)  # (kh, kw, C, n)
    expected = np.zeros_like(core)
    for i in range(3):
        for j in range(3):
            observed = ~np.isnan(x[0, i:i + 2, j:j + 2, :])
            expected[0, i, j] = core[0, i, j] + (per_entry * observed[..., None]).sum((0, 1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2])
def test_linear_unweighted_similarity_is_conv2d(impl, rng, padding, strides):
    x = rng.normal(size=(2, 8, 7, 3)).astype("float32")
    kernel = rng.normal(size=(3, 3, 3, 5)).astype("float32")
    out = kops.similarity(x, kernel, similarity="linear", strides=strides, padding=padding)
    expected = tf.nn.conv2d(x, kernel, strides=strides, padding=padding.upper())
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xi", [0.0, 1.0, -2.5, 1e-5, -3e-4, 40.0, 1e6, -1e6, np.inf, -np.inf])
def test_mex_matches_reference(impl, rng, xi):
    x = rng.normal(size=(2, 6, 4, 3)).astype("float32") * 3
    expected = mex_reference(pool_blocks(x, 2), xi)
    for given in (xi, tf.constant(xi, tf.float32)):  # a fixed xi and a tensor xi take different paths
        out = np.asarray(kops.mex(x, given, pool_size=2, channel_block=1))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xi", [0.5, 0.0, np.inf, [0.5]])
def test_composite_mex_with_a_fixed_xi_builds_only_its_branch(xi):
    """A fixed xi (a number, or a list of numbers) takes the composite's one-branch path: a graph of at most two
    thirds the nodes of the same xi given as a tensor, whose branches are chosen at run time (what export traces)."""
    from kernelzoo.ops import implementation

    def nodes(given):
        with implementation("composite"):
            traced = tf.function(lambda x: kops.mex(x, given, pool_size=2, channel_block=1))
            graph = traced.get_concrete_function(tf.TensorSpec((2, 4, 4, 3), tf.float32)).graph
        return len(graph.as_graph_def().node)
    assert 3 * nodes(xi) <= 2 * nodes(tf.constant(xi, tf.float32))


def test_mex_channel_blocks_instances_offsets_and_c(impl, rng):
    """Overlapping 2x2 blocks, stride 1, two channel blocks of 2, three instances, region offsets, c."""
    x = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    offsets = rng.normal(size=(2, 3, 3, 2, 2, 2)).astype("float32")
    c = np.array([0.5, -1.0, 2.0], "float32")
    xi = np.array([1.5, -0.7, 0.0], "float32")
    out = np.asarray(kops.mex(x, xi, num_instances=3, pool_size=2, strides=1, channel_block=2,
                              offsets=offsets, c=c))
    assert out.shape == (2, 4, 4, 6)
    for i in range(4):
        for j in range(4):
            region = offsets[(i * 2) // 4, (j * 3) // 4]  # (K, bh, bw, bc)
            for block in range(2):
                patch = x[:, i:i + 2, j:j + 2, 2 * block:2 * block + 2]  # (N, 2, 2, 2)
                for k in range(3):
                    values = (patch + region[k]).reshape(2, -1)
                    values = np.concatenate([values, np.full((2, 1), c[k])], axis=1)
                    np.testing.assert_allclose(out[:, i, j, block * 3 + k], mex_reference(values, xi[k]),
                                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xi", [0.0, 1e-4, 1.5])
def test_mex_c_joins_blocks_that_reach_into_same_padding(impl, rng, xi):
    """With "same" padding c joins every block, those reaching into the padding too: MEX over the block's entries
    (the padding left out) and c, at xi = 0, in the series regime and beyond, fixed or a tensor."""
    x = rng.normal(size=(1, 3, 3, 1)).astype("float32")
    blocks = pool_blocks(_same_padded(x, (2, 2), (2, 2), np.nan), 2).reshape(4, 4)
    expected = [mex_reference(np.append(block[~np.isnan(block)], 2.0), xi) for block in blocks]
    for given in (xi, tf.constant(xi, tf.float32)):
        out = np.asarray(kops.mex(x, given, pool_size=2, padding="same", c=2.0))
        np.testing.assert_allclose(out.reshape(4), expected, rtol=1e-6)


def test_same_padding_with_strides_beyond_the_window_pads_nothing(impl, rng):
    """A 1x1 window at stride 4 over 6 entries: "same" gives 2 outputs per axis from entries 0 and 4, no padding."""
    x = rng.normal(size=(1, 6, 6, 2)).astype("float32")
    picked = x[:, ::4, ::4]
    np.testing.assert_allclose(kops.mex(x, np.inf, pool_size=1, channel_block=1, padding="same", strides=4), picked)
    z = np.ones((1, 1, 2, 1), "float32")
    out = kops.similarity(x, z, similarity="linear", padding="same", strides=4)
    np.testing.assert_allclose(out, picked.sum(-1, keepdims=True), rtol=1e-6)


def test_mex_unshared_offsets_follow_the_strides(impl, rng):
    """Overlapping 2x2 blocks at stride 1 on 5x5: a 4x4 offsets grid (one region per output position) is accepted."""
    x = rng.normal(size=(1, 5, 5, 2)).astype("float32")
    offsets = rng.normal(size=(4, 4, 1, 2, 2, 2)).astype("float32")
    out = np.asarray(kops.mex(x, 0.0, pool_size=2, strides=1, offsets=offsets))
    expected = [[np.mean(x[0, i:i + 2, j:j + 2] + offsets[i, j, 0]) for j in range(4)] for i in range(4)]
    np.testing.assert_allclose(out[0, ..., 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("tensor_xi", [False, True], ids=["fixed xi", "tensor xi"])
@pytest.mark.parametrize("xi_value", [2.0, -2.0])
def test_mex_softmax_mode_drops_the_mean(impl, rng, padding, tensor_xi, xi_value):
    """log sum exp(xi v) / xi over each block, for either sign of xi. "same" on 5 rows: the bottom row's blocks hold
    4 entries of 8, the sum runs over those (the log n the softmax adds back is their count, not the padded block's).
    A tensor xi (a learned one) takes the composite's general path, a fixed one its one-branch path."""
    x = rng.normal(size=(1, 5, 4, 2)).astype("float32")
    xi = tf.constant(xi_value) if tensor_xi else xi_value
    out = np.asarray(kops.mex(x, xi, pool_size=2, padding=padding, softmax_mode=True))
    padded = _same_padded(x, (2, 2), (2, 2), np.nan) if padding == "same" else x[:, :4]
    blocks = pool_blocks(padded.astype(np.float64), 2).reshape(1, -1, 2, 8)  # (1, rows, 2, channels x 4)
    expected = np.log(np.nansum(np.exp(xi_value * blocks), -1)) / xi_value
    assert out.shape == expected.shape + (1,)
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5)


@pytest.mark.parametrize("xi", [0.1, -0.1])
def test_mex_is_accurate_far_below_the_shift(impl, rng, xi):
    """One value leads the others by 6-20 / |xi|: mean exp ~ 1/400, which 1 + mean(expm1) would lose digits of.

    The error of that form, ~eps * 400 / |xi| = 2.4e-4, reached 4e-3 in the logits of a SimNet (xi1 = 0.1, 729
    positions); the tolerance is a few float32 spacings of the output (~60).
    """
    lead = rng.uniform(-5.0, 5.0, size=(8, 1))
    rest = lead + np.sign(xi) * rng.uniform(-200.0, -60.0, size=(8, 399))
    values = np.concatenate([lead, rest], axis=1).astype("float32")
    x = values.reshape(8, 1, 1, 400)
    expected = mex_reference(values, xi)
    for given in (xi, tf.constant(xi, tf.float32)):
        out = np.asarray(kops.mex(x, given, channel_block=400)).reshape(8)
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_mex_is_stable_for_huge_xi(impl):
    x = np.array([[[[1000.0, -1000.0, 3.0]]]], "float32")
    for xi, expected in [(1e6, 1000.0), (-1e6, -1000.0)]:
        out = np.asarray(kops.mex(x, xi, pool_size=1))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[0, 0, 0, 0], expected + np.log(1 / 3) / xi, rtol=1e-6)


def test_mex_relu_special_case(impl, rng):
    """1x1 blocks, c = 0, xi -> inf: ReLU (paper 000 Sec. 2)."""
    x = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    for xi in (np.inf, 1e6):
        out = np.asarray(kops.mex(x, xi, channel_block=1, c=0.0))
        np.testing.assert_allclose(out, np.maximum(x, 0), atol=1e-5)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_mex_max_min_and_average_pooling_special_cases(impl, rng, padding):
    """xi = +inf / 1e6, -inf (a tensor: the general path) and 0 pool like max, min and average pooling, padding left
    out; also with unequal strides per axis."""
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")

    def min_pool(v, *args):
        return -tf.nn.max_pool2d(-v, *args)
    for xi, pool in ((np.inf, tf.nn.max_pool2d), (1e6, tf.nn.max_pool2d), (0.0, tf.nn.avg_pool2d),
                     (tf.constant(-np.inf), min_pool)):
        out = kops.mex(x, xi, pool_size=2, channel_block=1, padding=padding)
        np.testing.assert_allclose(out, pool(x, 2, 2, padding.upper()), atol=1e-5)
    out = kops.mex(x, np.inf, pool_size=2, strides=(2, 1), channel_block=1, padding=padding)
    np.testing.assert_allclose(out, tf.nn.max_pool2d(x, 2, (2, 1), padding.upper()))


def test_mex_collapsing_property(impl, rng):
    """MEX{MEX{c_ij}_j}_i = MEX{c_ij}_ij (paper 000 Eq. 2)."""
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    for xi in (0.7, -1.3, 0.0):
        nested = kops.mex(kops.mex(x, xi, pool_size=2, channel_block=1), xi, pool_size=3, channel_block=1)
        direct = kops.mex(x, xi, pool_size=6, channel_block=1)
        np.testing.assert_allclose(nested, direct, rtol=1e-5, atol=1e-5)


def test_l2_similarity_then_mex_is_kernel_svm_rule(impl, rng):
    """Unweighted l2 similarity + MEX with offsets = sigma(sum_l alpha_rl K(x, z_l)) (paper 000 Eq. 4/6)."""
    n_templates, classes, xi = 6, 3, 0.4
    x = rng.normal(size=(5, 2, 2, 3)).astype("float32")
    z = rng.normal(size=(2, 2, 3, n_templates)).astype("float32")
    b = rng.normal(size=(classes, n_templates)).astype("float32")
    sim = kops.similarity(x, z, similarity="l2")  # (5, 1, 1, n)
    offsets = b.reshape(1, 1, classes, 1, 1, n_templates)
    h = np.asarray(kops.mex(sim, xi, num_instances=classes, offsets=offsets))[:, 0, 0]
    distances = ((x.reshape(5, -1, 1) - z.reshape(-1, n_templates)) ** 2).sum(1)  # (5, n)
    kernel = np.exp(-xi * distances.astype(np.float64))
    alpha = np.exp(xi * b.astype(np.float64))  # (classes, n)
    expected = np.log(kernel @ alpha.T / n_templates) / xi
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(h.argmax(1), (kernel @ alpha.T).argmax(1))


def _max_gradient_error(f, args):
    theoretical, numerical = tf.test.compute_gradient(f, args, delta=1e-2)
    return max(np.max(np.abs(t - n)) / (1.0 + np.max(np.abs(n))) for t, n in zip(theoretical, numerical))


@pytest.mark.parametrize("kind", ["linear", "l1", "l2", "lp"])
def test_similarity_gradients(impl, rng, kind):
    # x on a 0.5 grid, z halfway between: |x - z| >= 0.25 keeps finite differences off the l1 kink.
    x = rng.integers(-3, 4, size=(1, 4, 4, 2)) * 0.5
    z = rng.integers(-3, 3, size=(2, 2, 2, 3)) * 0.5 + 0.25
    u = rng.uniform(0.5, 1.5, size=z.shape)
    p = np.array([1.5, 2.5, 3.0])

    def f(x, z, u, p):
        p_arg = p if kind == "lp" else None
        return kops.similarity(x, z, u, similarity=kind, p=p_arg, strides=(1, 2), padding="same",
                               normalization_term=kind != "linear")
    args = [tf.constant(a) for a in (x, z, u, p)] if kind == "lp" else [tf.constant(a) for a in (x, z, u)]
    fn = f if kind == "lp" else (lambda x, z, u: f(x, z, u, None))
    assert _max_gradient_error(fn, args) < 2e-2


@pytest.mark.parametrize("impl,height,strides,padding,xi", [
    ("composite", 4, 1, "valid", [1.3, -0.6]), ("custom", 4, 1, "valid", [1.3, -0.6]),
    ("custom", 5, (1, 2), "same", [0.8, -2.5])], indirect=["impl"], ids=["composite", "custom", "custom-same"])
def test_mex_gradients(impl, rng, height, strides, padding, xi):
    """"same": the bottom row's blocks are partial (padded entries are left out of them). Not run on the
    composite (3 s of CI): its gradients are autodiff's, checked against the custom op's in
    test_custom_ops.py::test_mex_matches_composite, "same" padding included."""
    x = rng.normal(size=(1, height, 4, 2))
    offsets = rng.normal(size=(2, 1, 2, 2, 2, 1)) * 0.5
    c = np.array([0.3, -0.2])
    xi = np.array(xi)

    def f(x, offsets, c, xi):
        return kops.mex(x, xi, num_instances=2, pool_size=2, strides=strides, channel_block=1, padding=padding,
                        offsets=offsets, c=c)
    assert _max_gradient_error(f, [tf.constant(a) for a in (x, offsets, c, xi)]) < 2e-2


def test_mex_xi_gradient_is_continuous_at_zero(impl, rng):
    """d MEX / d xi = var / 2 at xi = 0 (and is continuous there)."""
    x = tf.constant(rng.normal(size=(1, 2, 2, 1)).astype("float32"))
    values = x.numpy().ravel().astype(np.float64)
    grads = []
    for xi0 in (0.0, 1e-4, -1e-4, 1e-2):
        xi = tf.Variable(xi0)
        with tf.GradientTape() as tape:
            out = kops.mex(x, xi, pool_size=2)
        grads.append(tape.gradient(out, xi).numpy())
    np.testing.assert_allclose(grads[0], values.var() / 2, rtol=1e-4)
    np.testing.assert_allclose(grads[1:3], [values.var() / 2] * 2, rtol=1e-2)
    finite_difference = (mex_reference(values, 1.01e-2) - mex_reference(values, 0.99e-2)) / 2e-4
    np.testing.assert_allclose(grads[3], finite_difference, rtol=1e-2)


@pytest.mark.parametrize("xi0", [2.5e-4, -4e-4, 0.004, 0.3])
def test_mex_xi_gradient_is_accurate_for_small_xi(impl, rng, xi0):
    """1e-3 < |xi| * range < 1: d MEX / d xi against float64 (E_w[v] - MEX) / xi."""
    x = (rng.normal(size=(1, 9, 9, 1)) * 2).astype("float32")
    xi = tf.Variable(xi0)
    with tf.GradientTape() as tape:
        out = kops.mex(x, xi, pool_size=9)
    grad = tape.gradient(out, xi).numpy()
    values = x.ravel().astype(np.float64)
    weights = np.exp(xi0 * (values - values.max()))
    weights /= weights.sum()
    expected = (weights @ values - mex_reference(values, xi0)) / xi0
    np.testing.assert_allclose(grad, expected, rtol=1e-4)


@pytest.mark.parametrize("xi0", [9e-5, 9e-3])
def test_mex_xi_gradient_is_accurate_on_a_skewed_set(impl, xi0):
    """|xi| * range just under the series threshold (1e-3) and above it: d MEX / d xi against float64, on a set whose
    skew (mu3) and kurtosis are large: the series' skew term and its threshold both matter."""
    values = np.array([0.0] * 8 + [10.0])
    xi = tf.Variable(xi0)
    with tf.GradientTape() as tape:
        out = kops.mex(values.reshape(1, 3, 3, 1).astype("float32"), xi, pool_size=3)
    weights = np.exp(xi0 * (values - values.max()))
    expected = (weights @ values / weights.sum() - mex_reference(values, xi0)) / xi0
    np.testing.assert_allclose(tape.gradient(out, xi).numpy(), expected, rtol=1e-4)


def test_mex_gradient_at_infinite_xi_goes_to_the_max(impl):
    x = tf.constant(np.array([[[[1.0], [3.0]], [[2.0], [-1.0]]]], "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = kops.mex(x, np.inf, pool_size=2)
    np.testing.assert_allclose(tape.gradient(out, x).numpy().ravel(), [0, 1, 0, 0])


# Refused before the op runs, whatever the implementation (before the API refused them, both implementations
# returned -inf / NaN for p = inf and inf for a softmax xi = 0).
P_INF = (lambda x, z: kops.similarity(x, z, similarity="lp", p=np.inf), "`p`")
SOFTMAX_ZERO_XI = (lambda x, z: kops.mex(x, [1.0, 0.0], num_instances=2, softmax_mode=True), "`xi`")
BAD_CALLS = [
    (lambda x, z: kops.similarity(x[0], z), "4D"),
    (lambda x, z: kops.similarity(x, z[:, :, :1]), "channels"),
    (lambda x, z: kops.similarity(x, z, similarity="cosine"), "`similarity`"),
    (lambda x, z: kops.similarity(x, z, similarity="lp", p=0.0), "`p`"),
    (lambda x, z: kops.similarity(x, z, similarity="lp"), "`p`"),
    (lambda x, z: kops.similarity(x, z, similarity="lp", p=[1.0, 2.0]), "`p`"),
    P_INF,
    (lambda x, z: kops.similarity(x, z, similarity="lp", p=-np.inf), "`p`"),
    (lambda x, z: kops.similarity(x, z, similarity="lp", p=np.float32(np.inf)), "`p`"),
    (lambda x, z: kops.similarity(x, z, similarity="lp", p=[1.0, np.inf, 2.0]), "`p`"),
    (lambda x, z: kops.similarity(x, z, similarity="lp", p=np.array([np.inf], "float32")), "`p`"),
    (lambda x, z: kops.similarity(x, z, -np.ones_like(z)), "`weights`"),
    (lambda x, z: kops.similarity(x, z, np.where(np.arange(z.size).reshape(z.shape) == 5, np.nan, 1.0)),
     "`weights`"),
    (lambda x, z: kops.similarity(x, z, tf.fill(z.shape, np.nan)), "`weights`"),
    (lambda x, z: kops.similarity(x, z, np.full_like(z, np.inf)), "`weights`"),
    (lambda x, z: kops.similarity(x, z, np.ones((1, 1, 2, 2))), "`weights`"),
    (lambda x, z: kops.similarity(x, z, padding="full"), "`padding`"),
    (lambda x, z: kops.similarity(x, z, strides=0), "`strides`"),
    (lambda x, z: kops.similarity(x, np.ones((9, 9, 2, 3))), "larger than the input"),
    (lambda x, z: kops.similarity(x, z, similarity="linear", normalization_term=True), "`normalization_term`"),
    (lambda x, z: kops.mex(x, 1.0, pool_size=9), "larger than the input"),
    (lambda x, z: kops.mex(x, 1.0, channel_block=3), "`channel_block`"),
    (lambda x, z: kops.mex(x, [1.0, 2.0, 3.0], num_instances=2), "`xi`"),
    (lambda x, z: kops.mex(x, np.nan), "`xi`"),
    (lambda x, z: kops.mex(x, 0.0, softmax_mode=True), "`xi`"),
    SOFTMAX_ZERO_XI,
    (lambda x, z: kops.mex(x, np.float32(0.0), softmax_mode=True), "`xi`"),
    (lambda x, z: kops.mex(x, [0.0], softmax_mode=True), "`xi`"),
    (lambda x, z: kops.mex(x, 0, softmax_mode=True), "`xi`"),
    (lambda x, z: kops.mex(x, tf.constant([2.0, 0.0]), num_instances=2, softmax_mode=True), "`xi`"),
    (lambda x, z: kops.mex(x, 1.0, num_instances=0), "`num_instances`"),
    (lambda x, z: kops.mex(x, 1.0, offsets=np.zeros((1, 1, 1, 2, 2, 2))), "`offsets`"),
    (lambda x, z: kops.mex(x, 1.0, offsets=np.zeros((9, 1, 1, 1, 1, 2))), "`offsets`"),
    (lambda x, z: kops.mex(x, 1.0, offsets=np.zeros((1, 9, 1, 1, 1, 2))), "`offsets`"),
    (lambda x, z: kops.mex(x, 1.0, c=[1.0, 2.0]), "`c`"),
    (lambda x, z: kops.mex(x, 1.0, c=np.nan), "`c`"),
    (lambda x, z: kops.mex(x, 1.0, num_instances=2, c=np.array([0.5, np.nan], "float32")), "`c`"),
    (lambda x, z: kops.mex(x[..., :0], 1.0, pool_size=2), "`inputs`"),
    (lambda x, z: kops.mex(x[:, :, :0], 1.0, pool_size=2, padding="same"), "`inputs`"),
    (lambda x, z: kops.similarity(x[:, :0], z, padding="same"), "`inputs`"),
    (lambda x, z: kops.mex(x, 1.0, pool_size=(1.7, 2)), "`pool_size`"),
    (lambda x, z: kops.mex(x, 1.0, pool_size=("2", "2")), "`pool_size`"),
    (lambda x, z: kops.similarity(x, z, strides=(True, 1)), "`strides`"),
    (lambda x, z: kops.similarity(x, z[:0]), "`templates`"),
    (lambda x, z: kops.similarity(x, z[:, :0], padding="same"), "`templates`"),
    (lambda x, z: kops.similarity(x, z[..., :0]), "`templates`"),
]


def _bad_call(call, message):
    x = np.zeros((1, 5, 5, 2), "float32")
    z = np.zeros((2, 2, 2, 3), "float32")
    with pytest.raises(ValueError, match=message):
        call(x, z)


@pytest.mark.parametrize("call,message", BAD_CALLS)
def test_bad_input_raises_value_error_naming_the_argument(monkeypatch, call, message):
    """Every check raises in ops/api.py before the dispatch to an implementation (which would fail the test)."""
    from kernelzoo.ops import api

    def no_kernel(*args, **kwargs):
        raise AssertionError("an implementation ran: the argument was not checked before the dispatch")
    monkeypatch.setattr(api, "_core", no_kernel)
    _bad_call(call, message)


@pytest.mark.parametrize("call,message", [P_INF, SOFTMAX_ZERO_XI], ids=["similarity", "mex"])
def test_bad_input_raises_under_each_implementation(impl, call, message):
    _bad_call(call, message)


def test_log_gamma_matches_scipy():
    x = np.array([0.05, 0.3, 0.5, 1.0, 2.0, 7.5, 40.0])
    np.testing.assert_allclose(np.asarray(kops.log_gamma(x)), gammaln(x), rtol=1e-6, atol=1e-6)
    large = np.array([1 / 3e-7, 1e9], "float32")  # 1/p of a tiny lp exponent, in the op's float32
    np.testing.assert_allclose(np.asarray(kops.log_gamma(large)), gammaln(large.astype(float)), rtol=1e-6)


def test_implementation_override_is_validated():
    with pytest.raises(ValueError, match="implementation"):
        with kops.implementation("cuda"):
            pass


def test_implementation_override_takes_any_case():
    with kops.implementation("Composite"):
        assert kops.selected_implementation("mex") == "composite"


def test_nested_implementation_override_restores_the_outer_one(monkeypatch):
    """Leaving an inner `implementation` block restores the outer block's choice, not $KERNELZOO_OPS."""
    monkeypatch.setenv("KERNELZOO_OPS", "custom")
    with kops.implementation("composite"):
        with kops.implementation("composite"):
            pass
        assert kops.selected_implementation("mex") == "composite"


def test_a_list_of_variables_is_a_learned_xi(impl):
    """Only a list of numbers is a fixed xi; variables in a list keep their gradients."""
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 4, 4, 1)).astype("float32"))
    a, b = tf.Variable(0.5), tf.Variable(1.5)
    with tf.GradientTape() as tape:
        out = kops.mex(x, [a, b], num_instances=2, pool_size=2)
    grads = tape.gradient(out, [a, b])
    assert all(g is not None and np.isfinite(g) and g != 0 for g in grads)


@pytest.mark.parametrize("xi", [1e-39, -1e-39, 1e-25, -1e-21])
def test_mex_at_a_tiny_fixed_xi_is_the_mean(impl, xi):
    """xi * (v - shift) below float32's smallest normal number (flushed to 0 on CPUs): still the mean."""
    x = tf.constant(np.array([0.0, 1.0, 2.0, 10.0], "float32").reshape(1, 2, 2, 1))
    np.testing.assert_allclose(np.asarray(kops.mex(x, xi, pool_size=2)).ravel(), [3.25], rtol=1e-6)


@pytest.mark.parametrize("p", [1e-46, 1e39, [1e-46], [1e39]])
def test_p_is_checked_as_float32(p):
    """1e-46 is 0 and 1e39 inf in float32, the op's dtype: refused by the API's own check, scalar or list."""
    x, z = np.ones((1, 2, 2, 1), "float32"), np.zeros((2, 2, 1, 1), "float32")
    with pytest.raises(ValueError, match="`p`.* must be > 0 and finite"):
        kops.similarity(x, z, similarity="lp", p=p)


# Batches of >= 2 one-channel images with a width stride > 1 and a trailing column no window reads, or
# an output one column wide: TF 2.21's oneDNN Conv2D returned wrong values there (composite `_conv`).
ONE_CHANNEL_STRIDED = [((2, 6, 3, 1), (2, 2), (1, 2)), ((2, 4, 4, 1), (2, 2), (1, 3)),
                       ((2, 3, 3, 1), (2, 3), (1, 2)), ((2, 3, 2, 1), (2, 2), (1, 3))]


def _same_padded(x, window, strides, value=0.0):
    """x with the zero (or NaN) border "same" padding adds (the references take "valid" windows)."""
    pads = [pad_amounts(size, k, s, "same") for size, k, s in zip(x.shape[1:3], window, strides)]
    return np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=value)


@pytest.mark.parametrize("kind,p", [("linear", None), ("l1", None), ("l2", None), ("lp", [0.7, 1.5, 3.0])])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("shape,window,strides", ONE_CHANNEL_STRIDED)
def test_similarity_of_one_channel_batches_with_width_strides(impl, rng, kind, p, padding, shape, window, strides):
    x = rng.normal(size=shape).astype("float32")
    z = rng.normal(size=window + (1, 3)).astype("float32")
    u = rng.uniform(0.2, 2.0, size=z.shape).astype("float32")
    out = np.asarray(kops.similarity(x, z, u, similarity=kind, p=p, strides=strides, padding=padding))
    padded = _same_padded(x, window, strides) if padding == "same" else x
    np.testing.assert_allclose(out, similarity_reference(padded, z, u, kind, p, strides), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind,p", [("linear", None), ("l1", None)])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("shape,window,strides", ONE_CHANNEL_STRIDED)
def test_similarity_of_one_channel_batches_with_width_strides_traced_without_sizes(impl, rng, kind, p, padding,
                                                                                   shape, window, strides):
    """The same shapes in a function traced for any image size (None spatial dimensions)."""
    x = rng.normal(size=shape).astype("float32")
    z = rng.normal(size=window + (1, 3)).astype("float32")
    u = rng.uniform(0.2, 2.0, size=z.shape).astype("float32")
    traced = tf.function(lambda t: kops.similarity(t, z, u, similarity=kind, p=p, strides=strides, padding=padding),
                         input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
    padded = _same_padded(x, window, strides) if padding == "same" else x
    np.testing.assert_allclose(traced(x), similarity_reference(padded, z, u, kind, p, strides), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("shape,window,strides", ONE_CHANNEL_STRIDED)
def test_normalization_term_of_one_channel_batches_with_width_strides(impl, rng, padding, shape, window, strides):
    """The observed-entry count of `ignore_nan` (composite.valid_sum, both implementations) on those shapes."""
    x = rng.normal(size=shape).astype("float32")
    x[x > 1.0] = np.nan
    z = rng.normal(size=window + (1, 3)).astype("float32")
    u = rng.uniform(0.5, 2.0, size=z.shape).astype("float32")
    out = np.asarray(kops.similarity(x, z, u, similarity="l1", strides=strides, padding=padding,
                                     normalization_term=True, ignore_nan=True))
    padded = _same_padded(x, window, strides, np.nan) if padding == "same" else x
    per_entry = np.log(u) - np.log(2.0)  # log p + log(u) / p - log 2 - lgamma(1 / p) at p = 1
    observed = similarity_reference(~np.isnan(padded), per_entry, np.ones_like(u), "linear", strides=strides)
    expected = similarity_reference(padded, z, u, "l1", strides=strides, ignore_nan=True) + observed
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


EMPTY_BATCH_CALLS = {  # name: (fn(x, parameter), parameter, output shape for x of shape (0, 4, 4, 2))
    "l1": (lambda x, z: kops.similarity(x, z, similarity="l1"), (2, 2, 2, 3), (0, 3, 3, 3)),
    "l2 same strides 2": (lambda x, z: kops.similarity(x, z, strides=2, padding="same"), (2, 2, 2, 3), (0, 2, 2, 3)),
    "linear": (lambda x, z: kops.similarity(x, z, similarity="linear"), (3, 2, 2, 3), (0, 2, 3, 3)),
    "lp ignore_nan normalization_term": (
        lambda x, z: kops.similarity(x, z, similarity="lp", p=1.5, ignore_nan=True, normalization_term=True),
        (2, 2, 2, 3), (0, 3, 3, 3)),
    "mex": (lambda x, xi: kops.mex(x, xi, num_instances=2, pool_size=2, channel_block=1), (2,), (0, 2, 2, 4)),
    "mex offsets c": (lambda x, c: kops.mex(x, 0.5, num_instances=2, pool_size=2, strides=1, padding="same",
                                            offsets=np.ones((1, 1, 2, 2, 2, 2), "float32"), c=c), (2,), (0, 4, 4, 2)),
}


@pytest.mark.parametrize("name", list(EMPTY_BATCH_CALLS))
def test_empty_batch_traced_without_a_batch_size(impl, name):
    """A function traced for any batch size (None) gets the same shapes for an empty batch and a full one."""
    fn, parameter_shape, expected = EMPTY_BATCH_CALLS[name]
    parameter = np.full(parameter_shape, 0.5, "float32")
    traced = tf.function(lambda x: fn(x, parameter), input_signature=[tf.TensorSpec((None, 4, 4, 2), tf.float32)])
    assert tuple(traced(tf.zeros((0, 4, 4, 2))).shape) == expected
    assert tuple(traced(tf.ones((3, 4, 4, 2))).shape) == (3,) + expected[1:]


@pytest.mark.parametrize("name", list(EMPTY_BATCH_CALLS))
def test_empty_batch_gives_empty_outputs_and_gradients(impl, name):
    fn, parameter_shape, expected = EMPTY_BATCH_CALLS[name]
    x = tf.zeros((0, 4, 4, 2))
    parameter = tf.Variable(np.full(parameter_shape, 0.5, "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x, parameter)
    grad_x, grad_parameter = tape.gradient(out, [x, parameter])
    assert tuple(out.shape) == expected
    assert tuple(grad_x.shape) == tuple(x.shape)
    np.testing.assert_array_equal(grad_parameter, np.zeros(parameter_shape))


@pytest.mark.parametrize("channels,channel_block", [(1, 1), (16, 1), (4, 2)])
@pytest.mark.parametrize("infinity", [np.inf, -np.inf])
def test_mex_of_a_set_holding_an_infinity(impl, channels, channel_block, infinity):
    """xi = 0: the mean, that infinity; xi of its sign: it; the other sign: the finite values' MEX (exp(-inf) = 0).

    The gradients are those limits': 1/n each; all to the infinite entries (split among ties), d/dxi = 0; the
    finite entries' softmax weights (the infinite one 0), d/dxi = (E_w[v] - MEX) / xi. d/dxi at xi = 0 is
    undefined (not checked). One channel and channel blocks > 1 take the custom op's scalar path, 16 channels
    its SIMD lanes; a fixed xi and a tensor (learned) xi take different paths in the composite.
    """
    block = np.array([1.0, 2.0, infinity, 4.0])
    x = tf.constant(np.repeat(block.reshape(1, 2, 2, 1), channels, axis=-1).astype("float32"))
    sign = np.sign(infinity)
    weights = np.where(np.isfinite(block), np.exp(-sign * 0.5 * np.where(np.isfinite(block), block, 0.0)), 0.0)
    finite = np.log(weights.sum() / 4) / (-sign * 0.5)
    softmax = weights / weights.sum()
    cases = [(0.0, infinity, np.full(4, 0.25), None),
             (sign * 0.5, infinity, np.isinf(block).astype(float), 0.0),
             (-sign * 0.5, finite, softmax, (softmax[np.isfinite(block)] @ block[np.isfinite(block)] - finite)
              / (-sign * 0.5))]
    sets = channels // channel_block  # each set holds channel_block copies of the block
    for xi, expected, expected_grad, expected_xi_grad in cases:
        for given in (xi, tf.Variable(xi)):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = kops.mex(x, given, pool_size=2, channel_block=channel_block)
            grad_x, grad_xi = tape.gradient(out, [x, given] if isinstance(given, tf.Variable) else [x, x])
            np.testing.assert_allclose(out, np.full(out.shape, expected), rtol=1e-6, err_msg=f"xi={given!r}")
            expected_x = np.repeat((expected_grad / channel_block).reshape(1, 2, 2, 1), channels, axis=-1)
            np.testing.assert_allclose(grad_x, expected_x, rtol=1e-5, atol=1e-7, err_msg=f"xi={given!r}")
            if isinstance(given, tf.Variable) and expected_xi_grad is not None:
                np.testing.assert_allclose(grad_xi, sets * expected_xi_grad, rtol=1e-5, err_msg=f"xi={given!r}")


@pytest.mark.parametrize("xi", [1e20, -1e20, 3e38])
def test_mex_of_equal_values_at_a_huge_tensor_xi(impl, xi):
    """All-equal and one-element sets are their value at any xi, each entry's gradient 1/n and d/dxi = 0."""
    x = tf.constant(np.full((1, 2, 2, 3), 3.0, "float32"))
    learned = tf.Variable(xi, dtype=tf.float32)
    for pool in (2, 1):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = kops.mex(x, learned, pool_size=pool, channel_block=1)
        grad_x, grad_xi = tape.gradient(out, [x, learned])
        np.testing.assert_array_equal(out, 3.0)
        np.testing.assert_allclose(grad_x, 1.0 / pool ** 2)
        assert grad_xi == 0.0


@pytest.mark.parametrize("kind,p", [("l1", 1), ("l2", 2.0), ("l2", np.float32(2.0))])
def test_p_equal_to_the_fixed_exponent_is_accepted(rng, kind, p):
    """l1 with p=1 and l2 with p=2 (as a layer may pass them) give the plain l1 / l2 similarity."""
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    z = rng.normal(size=(2, 2, 2, 3)).astype("float32")
    np.testing.assert_array_equal(kops.similarity(x, z, similarity=kind, p=p), kops.similarity(x, z, similarity=kind))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_give_outputs_of_their_dtype(impl, rng, dtype):
    """float16 / bfloat16 activations come back in their dtype from both ops (the composite computes in float32)."""
    x = tf.cast(rng.normal(size=(1, 4, 4, 2)), dtype)
    z = rng.normal(size=(2, 2, 2, 3)).astype("float32")
    assert kops.similarity(x, z, similarity="l1").dtype.name == dtype
    assert kops.mex(x, 1.0, pool_size=2).dtype.name == dtype


def test_lp_p_of_shape_one_is_shared_like_xi_and_c(impl, rng):
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    z = rng.normal(size=(2, 2, 2, 3)).astype("float32")
    shared = kops.similarity(x, z, similarity="lp", p=np.array([1.5], "float32"))
    np.testing.assert_array_equal(shared, kops.similarity(x, z, similarity="lp", p=1.5))
