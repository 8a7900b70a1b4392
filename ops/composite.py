"""Composite implementation of the SimNets operators in `keras.ops`.

This is the reference the custom TensorFlow ops are tested against, the
fallback on every Keras backend (JAX included), and what export traces: it uses
only convolutions, slicing, elementwise maths and reductions, all of which
tf2onnx maps to standard ONNX ops.

Both functions take arguments already validated and normalised by
`kernelzoo.ops.api` (float32 tensors, tuples, lower-case padding).
"""
import functools
import math

import numpy as np
from keras import ops

from kernelzoo.ops import blockwise
from kernelzoo.ops.shapes import output_size, pad_amounts, same_overhang

# Below |xi| * (max - min) < this, MEX uses its cumulant series (stable at xi -> 0).
SERIES_THRESHOLD = 1e-3
# Below this |xi| (not 0) xi * (v - shift) can fall under float32's smallest normal number for differences
# v - shift ~1e-18 and up, which the CPU flushes to 0 (log1p(0) / xi would then be the shift, or NaN).
_FIXED_XI_MIN = 1e-20
# Copies of the largest intermediate (patch x templates slab per patch, block values x instances per
# image) alive while one block's gradient is computed: the block size is the memory budget over this.
# Measured with TF's allocator peak (slope over budgets, docs/benchmarks.md): l1 4.6, lp 7.4, MEX 13.4.
_LIVE_COPIES = {"l1": 5, "lp": 8, "mex": 14}


def handles_empty_batch(fn):
    """`fn(inputs, ...)` that also takes a batch holding no images: run on one zero image, sliced to none.

    TF's Conv2D returns an empty input unchanged (not the output's shape) and keras.ops.max refuses an
    empty tensor; the slice keeps the output's shape and the (empty, zero) gradients connected. A batch
    size unknown when traced gets the same at run time (max(1 - N, 0) zero images appended, N rows kept).
    The zeros are concatenated, not padded: oneDNN fuses a Pad into the next Conv2D, and the fused op
    passes an empty batch through unchanged too.
    """
    @functools.wraps(fn)
    def wrapper(inputs, *args, **kwargs):
        if inputs.shape[0] not in (None, 0):
            return fn(inputs, *args, **kwargs)
        count = ops.shape(inputs)[0]
        extra = 1 if inputs.shape[0] == 0 else ops.maximum(1 - count, 0)
        filler = ops.zeros((extra, *ops.shape(inputs)[1:]), dtype=inputs.dtype)
        return fn(ops.concatenate([inputs, filler], axis=0), *args, **kwargs)[:count]
    return wrapper


def _conv(inputs, kernel, strides, padding):
    """`ops.conv` (NHWC), clear of a TensorFlow 2.21 CPU bug.

    TF 2.21's oneDNN Conv2D (the CPU default, TF_ENABLE_ONEDNN_OPTS=1) returns wrong values for a
    batch of >= 2 one-channel images with a width stride > 1 when the windows leave a trailing input
    column unread or the output is one column wide. The same convolution on the zero-padded input
    ("same"), cropped to the extent the windows read, with stride 1 along an axis of one output, is
    right. Spatial sizes unknown when traced take `_conv_dynamic`.
    """
    sizes, window = inputs.shape[1:3], kernel.shape[:2]
    if None in sizes:
        return _conv_dynamic(inputs, kernel, strides, padding)
    pads = [pad_amounts(size, k, s, padding) for size, k, s in zip(sizes, window, strides)]
    if any(sum(pads, ())):
        inputs = ops.pad(inputs, [(0, 0), *pads, (0, 0)])
    outs = [output_size(size, k, s, padding) for size, k, s in zip(sizes, window, strides)]
    extents = tuple((out - 1) * s + k for out, k, s in zip(outs, window, strides))
    if extents != tuple(inputs.shape[1:3]):
        inputs = inputs[:, :extents[0], :extents[1]]
    strides = tuple(s if out > 1 else 1 for out, s in zip(outs, strides))
    return ops.conv(inputs, kernel, strides=strides, padding="valid")


def _conv_dynamic(inputs, kernel, strides, padding):
    """`_conv` for spatial sizes unknown when traced: a one-channel input with a width stride > 1 (the case
    of the oneDNN bug) is padded explicitly, convolved at width stride 1 and every strides[1]-th column kept."""
    if inputs.shape[-1] != 1 or strides[1] == 1:
        return ops.conv(inputs, kernel, strides=strides, padding=padding)
    if padding == "same":
        pads = []
        for size, k, s in zip(ops.shape(inputs)[1:3], kernel.shape[:2], strides):
            total = ops.maximum(same_overhang(size, k, s), 0)
            pads.append((total // 2, total - total // 2))
        inputs = ops.pad(inputs, [(0, 0), *pads, (0, 0)])
    out = ops.conv(inputs, kernel, strides=(strides[0], 1), padding="valid")
    return out[:, :, ::strides[1], :]


@handles_empty_batch
def similarity(inputs, templates, weights, p, *, similarity, strides, padding, ignore_nan):
    """sum_d u[d, l] * phi(x_ij[d], z[d, l]) for every patch x_ij and template l.

    inputs (N, H, W, C); templates and weights (kh, kw, C, n); p (n,) used by "lp".
    Output (N, H', W', n). See `kernelzoo.ops.similarity` for the semantics.
    """
    x, valid = _split_nan(inputs) if ignore_nan else (inputs, None)
    conv = lambda t, k: _conv(t, k, strides, padding)  # noqa: E731
    if similarity == "linear":
        return conv(x, weights * templates)
    if similarity == "l2":
        # -sum u (x - z)^2 = -(sum u x^2 - 2 sum u z x + sum u z^2): three convolutions.
        uz = weights * templates
        const = conv(valid, uz * templates) if ignore_nan else ops.sum(uz * templates, axis=(0, 1, 2))
        return 2.0 * conv(x, uz) - conv(ops.square(x), weights) - const
    return _lp_similarity(x, valid, templates, weights, p, similarity, strides, padding)


@handles_empty_batch
def valid_sum(inputs, kernel, *, strides, padding):
    """sum_d kernel[d, l] over the non-NaN entries of each patch (NaN padding for "same")."""
    return _conv(_split_nan(inputs)[1], kernel, strides, padding)


def _split_nan(inputs):
    """(inputs with NaN -> 0, 1.0 where the entry is a number else 0.0)."""
    missing = ops.isnan(inputs)
    return ops.where(missing, 0.0, inputs), ops.cast(ops.logical_not(missing), inputs.dtype)


def _lp_similarity(x, valid, templates, weights, p, similarity, strides, padding):
    """l1 / lp similarity on patches taken by a one-hot convolution, in blocks of patches (bounded memory).

    An inf input makes its patches NaN (inf * 0 in that convolution): the output there is NaN,
    where the custom op gives -inf.
    """
    kh, kw, channels, n = templates.shape
    depth = kh * kw * channels
    one_hot = ops.convert_to_tensor(np.eye(depth, dtype="float32").reshape(kh, kw, channels, depth))
    patches = _conv(x, one_hot, strides, padding)  # (N, H', W', D)
    rows = [ops.reshape(patches, (-1, depth))]
    if valid is not None:
        rows.append(ops.reshape(_conv(valid, one_hot, strides, padding), (-1, depth)))
    shared = [ops.reshape(templates, (depth, n)), ops.reshape(weights, (depth, n))]
    if similarity == "lp":
        shared.append(p)
    fn = _lp_distance(similarity, valid is not None)
    out = _patch_rows_by_templates(fn, rows, shared, depth * _LIVE_COPIES[similarity])
    return ops.reshape(out, tuple(ops.shape(patches)[:3]) + (n,))


def _lp_distance(similarity, masked):
    """fn(x, [valid], z, u, [p]): -sum_d u |x - z|^p (x rows (b, D), z and u (D, t), p (t,)) -> (b, t)."""
    def fn(x, *args):
        valid, (z, u, *p) = (args[0], args[1:]) if masked else (None, args)
        distance = ops.abs(x[:, :, None] - z)
        if p:
            distance = _safe_pow(distance, p[0])
        term = u * distance
        if valid is not None:
            term = term * valid[:, :, None]
        return -ops.sum(term, axis=1)
    return fn


def _patch_rows_by_templates(fn, rows, shared, pair_elements):
    """fn over blocks of patch rows against all templates; also in chunks of templates if one row is too big.

    shared = (z, u[, p]) with templates on the last axis; pair_elements: live elements per
    (row, template) pair. When one row against all n templates exceeds the budget, blocks of b
    rows meet chunks of t templates with b = t = sqrt(what fits).
    """
    n = shared[0].shape[-1]
    pairs = blockwise.rows_per_block(pair_elements)
    if pairs >= n:
        return blockwise.blockwise(fn, rows, shared, elements_per_row=pair_elements * n)
    side = pair_elements * max(1, math.isqrt(pairs))

    def row_block(*args):
        row_args, template_args = args[:len(rows)], args[len(rows):]

        def template_chunk(*chunk_args):
            chunk, block = chunk_args[:len(template_args)], chunk_args[len(template_args):]
            return ops.transpose(fn(*block, *(ops.transpose(t) for t in chunk)))
        by_template = [ops.transpose(t) for t in template_args]  # (t, D) and (t,)
        return ops.transpose(blockwise.blockwise(template_chunk, by_template, row_args, elements_per_row=side))
    return blockwise.blockwise(row_block, rows, shared, elements_per_row=side)


def _safe_pow(base, exponent):
    """base ** exponent for base >= 0, with finite gradients (0) at base == 0; NaN stays NaN."""
    nonzero = base != 0  # True for NaN, so NaN propagates (as in the custom op)
    safe = ops.where(nonzero, base, 1.0)
    return ops.where(nonzero, ops.exp(exponent * ops.log(safe)), 0.0)


@handles_empty_batch
def mex(inputs, xi, offsets, c, *, num_instances, pool_size, channel_block, strides, padding, softmax_mode):
    """MEX over blocks of pool_size x channel_block entries, for each of num_instances instances.

    inputs (N, H, W, C); xi (K,); offsets None or (Rh, Rw, K, bh, bw, bc); c None or (K,).
    Output (N, H', W', nb * K), channel j * K + k for channel block j and instance k.
    Runs over groups of images (`blockwise`): one image's largest intermediate is its
    H' x W' x nb x K x (block size + 1) values.
    """
    _, height, width, channels = inputs.shape
    size = pool_size[0] * pool_size[1] * channel_block
    positions = (output_size(height, pool_size[0], strides[0], padding)
                 * output_size(width, pool_size[1], strides[1], padding))
    params = {"xi": xi, "offsets": offsets, "c": c}
    tensors = [name for name, value in params.items() if value is not None and not isinstance(value, np.ndarray)]

    def images(x, *values):
        return _mex_images(x, **dict(params, **dict(zip(tensors, values))), num_instances=num_instances,
                           pool_size=pool_size, channel_block=channel_block, strides=strides, padding=padding,
                           softmax_mode=softmax_mode)
    elements = positions * channels // channel_block * num_instances * (size + 1) * _LIVE_COPIES["mex"]
    return blockwise.blockwise(images, [inputs], [params[name] for name in tensors], elements_per_row=elements)


def _mex_images(inputs, xi, offsets, c, *, num_instances, pool_size, channel_block, strides, padding, softmax_mode):
    """`mex` on one group of images, all at once."""
    k = num_instances
    bh, bw = pool_size
    nb = inputs.shape[-1] // channel_block
    blocks, valid = _extract_blocks(inputs, pool_size, strides, padding)  # (N, H', W', bh*bw, C)
    out_h, out_w = blocks.shape[1], blocks.shape[2]
    size = bh * bw * channel_block
    values = ops.reshape(blocks, (-1, out_h, out_w, bh * bw, nb, channel_block))
    values = ops.reshape(ops.transpose(values, (0, 1, 2, 4, 3, 5)), (-1, out_h, out_w, nb, 1, size))
    if offsets is not None:
        values = values + _offsets_per_position(offsets, out_h, out_w, k, size)
    elif k > 1 or c is not None:
        values = values + ops.zeros((k, 1), dtype=values.dtype)
    if valid is not None:
        valid = np.repeat(valid, channel_block, axis=-1).reshape(1, out_h, out_w, 1, 1, size)
    if c is not None:
        c_column = ops.zeros_like(values[..., :1]) + ops.reshape(c, (k, 1))
        values = ops.concatenate([values, c_column], axis=-1)
        if valid is not None:
            valid = np.concatenate([valid, np.ones(valid.shape[:-1] + (1,), bool)], axis=-1)
    xi = xi.reshape(k, 1) if isinstance(xi, np.ndarray) else ops.reshape(xi, (k, 1))  # a fixed xi stays NumPy
    out = mex_reduce(values, xi, valid, softmax_mode)
    return ops.reshape(out, (-1, out_h, out_w, nb * k))


def mex_reduce(values, xi, valid=None, softmax_mode=False):
    """MEX_xi over the last axis of `values` (keepdims=False), entries where `valid` is False excluded.

    Stable for any xi in [-inf, inf]: shifted log-mean-exp (`_log_mean_exp`), the
    cumulant series mean + xi var / 2 + xi^2 mu3 / 6 when |xi| * range is tiny
    (so xi = 0 is exactly the mean with d/dxi = var / 2), max / min at +-inf.
    A set holding +-inf gets the custom op's value and input gradients: its max (xi > 0) / min (xi < 0)
    where that is infinite, its mean at xi = 0, else the MEX with exp(-inf) = 0 for those entries; its
    d/dxi at xi = 0 (undefined) is 0 here and NaN in the custom op.
    A fixed xi (a NumPy array, one value for all instances) builds only the branch it needs, unless it is
    below `_FIXED_XI_MIN` (not 0): that one takes the general path, whose moment series needs no exponent.
    """
    if valid is None:
        count = float(values.shape[-1])
        masked = lambda t, fill: t  # noqa: E731
    else:
        valid = ops.convert_to_tensor(np.asarray(valid, bool))
        count = ops.sum(ops.cast(valid, values.dtype), axis=-1, keepdims=True)
        masked = lambda t, fill: ops.where(valid, t, fill)  # noqa: E731
    if isinstance(xi, np.ndarray) and np.all(xi == xi.flat[0]) and not 0 < abs(xi.flat[0]) < _FIXED_XI_MIN:
        fixed = float(xi.flat[0])
        out = _mex_fixed_xi(values, fixed, count, masked)
        if softmax_mode:
            out = ops.full_like(out, np.inf) if fixed == 0 else out + _log(count) / fixed
        return ops.squeeze(out, axis=-1)
    vmax = ops.max(masked(values, -np.inf), axis=-1, keepdims=True)
    vmin = ops.min(masked(values, np.inf), axis=-1, keepdims=True)
    mean = ops.sum(masked(values, 0.0), axis=-1, keepdims=True) / count

    finite = ops.logical_and(ops.isfinite(xi), ops.not_equal(xi, 0.0))
    xi_safe = ops.where(finite, xi, 1.0)
    # xi = 0 is small even for a set holding +-inf (0 * inf range is NaN).
    small = ops.abs(ops.where(finite, xi, 0.0)) * (vmax - vmin) < SERIES_THRESHOLD
    small = ops.logical_or(ops.logical_and(small, finite), ops.equal(xi, 0.0))
    extreme = ops.where(xi > 0, vmax, vmin)
    at_extreme = ops.logical_or(ops.isinf(xi), ops.logical_and(ops.isinf(extreme), ops.not_equal(xi, 0.0)))

    # The result does not depend on the shift. Around the max / min no exponent overflows; around the
    # mean (safe while |xi| * range < 1) the xi-gradient avoids cancelling two terms of size range / xi.
    moderate = ops.abs(xi_safe) * (vmax - vmin) < 1.0
    shift = ops.where(moderate, mean, ops.where(xi_safe > 0, vmax, vmin))
    general_sets = ops.logical_not(ops.logical_or(small, at_extreme))
    general = _shifted_mex(values, shift, xi_safe, count, masked, moderate, general_sets)
    out = ops.where(small, _mex_series(values, ops.where(small, xi, 0.0), mean, count, masked), general)
    out = ops.where(at_extreme, extreme, out)
    if softmax_mode:
        xi_nonzero = ops.where(ops.equal(xi, 0.0), 1.0, xi)
        out = ops.where(ops.equal(xi, 0.0), np.inf, out + _log(count) / xi_nonzero)
    return ops.squeeze(out, axis=-1)


def _mex_series(values, xi, mean, count, masked):
    """mean + xi var / 2 + xi^2 mu3 / 6 (keepdims); an infinite mean (a set holding +-inf, at xi = 0) is the result.

    xi^2 is taken of xi clipped to +-1e19: beyond, it overflows float32 (times the zero mu3 of an all-equal
    set, NaN in the value or its gradients), and there the series' |xi| * range < 1e-3 leaves mu3 = 0 anyway.
    The moments of a set with an infinite mean are taken as 0, so that no NaN reaches the gradients.
    """
    centred = masked(ops.where(ops.isfinite(mean), values - mean, 0.0), 0.0)
    var = ops.sum(ops.square(centred), axis=-1, keepdims=True) / count
    mu3 = ops.sum(centred * ops.square(centred), axis=-1, keepdims=True) / count
    series = mean + xi * var / 2.0 + ops.square(ops.clip(xi, -1e19, 1e19)) * mu3 / 6.0
    return ops.where(ops.isfinite(mean), series, mean)


def _shifted_mex(values, shift, xi, count, masked, moderate, selected):
    """shift + log mean exp(xi (values - shift)) / xi (keepdims) for the sets where `selected`, 0 elsewhere.

    A selected set's infinite entries lie beyond its shift on the side exp(-inf) = 0 (an infinite extreme of
    xi's sign is not selected): they leave the sums, not the count. What is not selected is replaced by
    zeros before any exp, so no NaN or inf reaches the gradients through the `ops.where` that drops it.
    """
    shift = ops.where(selected, shift, 0.0)
    finite = ops.isfinite(values)
    dropped = ops.logical_and(ops.logical_not(finite), selected)
    masked_kept = lambda t, fill: masked(ops.where(dropped, fill, t), fill)  # noqa: E731
    scaled = masked_kept(xi * (ops.where(ops.logical_and(finite, selected), values, 0.0) - shift), 0.0)
    return shift + _log_mean_exp(scaled, count, masked_kept, moderate) / xi


def _log_mean_exp(scaled, count, masked, moderate):
    """log mean exp(scaled) over the last axis (keepdims), as the C++ op evaluates it.

    Where `moderate` (|xi| * range < 1: every exponent small) as log1p(mean(expm1)), exact
    for results near 0; elsewhere as log(mean(exp)): there mean(exp) can be ~1 / n, and
    forming it as 1 + mean(expm1) would lose its low digits to the cancellation against 1
    (the error, divided by xi, reached 4e-3 in the logits of a SimNet with xi = 0.1).
    """
    near = ops.log1p(ops.sum(masked(ops.expm1(scaled), 0.0), axis=-1, keepdims=True) / count)
    far = ops.log(ops.sum(masked(ops.exp(scaled), 0.0), axis=-1, keepdims=True) / count)
    return ops.where(moderate, near, far)


def _log(count):
    """log of a block size: a Python float (keeps the input dtype) or a tensor of counts."""
    return math.log(count) if isinstance(count, float) else ops.log(count)


def _mex_fixed_xi(values, xi, count, masked):
    """MEX for one known xi (keepdims): mean, max, min, or the shifted log-mean-exp."""
    if xi == 0:
        return ops.sum(masked(values, 0.0), axis=-1, keepdims=True) / count
    vmax = ops.max(masked(values, -np.inf), axis=-1, keepdims=True)
    if xi == np.inf:
        return vmax
    vmin = ops.min(masked(values, np.inf), axis=-1, keepdims=True)
    if xi == -np.inf:
        return vmin
    shift = vmax if xi > 0 else vmin
    at_extreme = ops.isinf(shift)  # a set holding +inf (xi > 0) / -inf (xi < 0): that extreme
    out = _shifted_mex(values, shift, xi, count, masked, abs(xi) * (vmax - vmin) < 1.0, ops.logical_not(at_extreme))
    return ops.where(at_extreme, shift, out)


def _extract_blocks(inputs, pool_size, strides, padding):
    """(N, H', W', bh*bw, C) blocks in (a, b) row-major order, and a static validity mask.

    The mask, (H', W', bh*bw) bool, is None when no block reaches into "same" padding.
    Non-overlapping "valid" blocks use a reshape; others one strided slice per offset.
    """
    _, height, width, channels = inputs.shape
    (bh, bw), (sh, sw) = pool_size, strides
    out_h, out_w = output_size(height, bh, sh, padding), output_size(width, bw, sw, padding)
    pads = (pad_amounts(height, bh, sh, padding), pad_amounts(width, bw, sw, padding))
    valid = None
    if any(pads[0] + pads[1]):
        inputs = ops.pad(inputs, ((0, 0), pads[0], pads[1], (0, 0)))
        mask = np.pad(np.ones((height, width), bool), pads)
        valid = np.stack([mask[a:a + sh * (out_h - 1) + 1:sh, b:b + sw * (out_w - 1) + 1:sw]
                          for a in range(bh) for b in range(bw)], axis=-1)
    if (bh, bw) == (sh, sw):
        cropped = inputs[:, :out_h * bh, :out_w * bw, :]
        blocks = ops.reshape(cropped, (-1, out_h, bh, out_w, bw, channels))
        blocks = ops.reshape(ops.transpose(blocks, (0, 1, 3, 2, 4, 5)), (-1, out_h, out_w, bh * bw, channels))
    else:
        blocks = ops.stack([inputs[:, a:a + sh * (out_h - 1) + 1:sh, b:b + sw * (out_w - 1) + 1:sw, :]
                            for a in range(bh) for b in range(bw)], axis=3)
    return blocks, valid


def _offsets_per_position(offsets, out_h, out_w, k, size):
    """Offsets (Rh, Rw, K, bh, bw, bc) -> (1, H', W', 1, K, bh*bw*bc), region by region."""
    regions_h, regions_w = offsets.shape[0], offsets.shape[1]
    flat = ops.reshape(offsets, (regions_h, regions_w, k, size))
    rows = (np.arange(out_h) * regions_h) // out_h
    cols = (np.arange(out_w) * regions_w) // out_w
    per_position = ops.take(ops.take(flat, rows, axis=0), cols, axis=1)
    return ops.reshape(per_position, (1, out_h, out_w, 1, k, size))
