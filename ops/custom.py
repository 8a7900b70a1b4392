"""Thin wrapper over the C++ custom ops (`library.load()`), with their gradients.

Same core signatures as `composite.py`; arguments arrive validated and
normalised by the dispatcher (`api.py`). Activations (inputs, output and their
gradients) are float32, float16 or bfloat16 (the ops' attr T); parameters float32. The gradient ops are C++ kernels
(`KernelzooSimilarityGrad`, `KernelzooMexGrad`) registered here for the
forward ops with `tf.RegisterGradient`.
"""
import tensorflow as tf

from kernelzoo.ops import library

__all__ = ["similarity", "mex"]


def _ops():
    return library.load()


def _f32(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def _activations(x):
    """The ops' T: float32, float16 and bfloat16 as they are, other dtypes cast to float32."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype in (tf.float16, tf.bfloat16) else _f32(x)


def _pair(v):
    if isinstance(v, int):
        return [int(v), int(v)]
    return [int(a) for a in v]


@tf.autograph.experimental.do_not_convert
def similarity(inputs, templates, weights, p, *, similarity, strides, padding,
               ignore_nan):
    """Similarity core: sum_d u[d,l] phi(x_ij[d], z[d,l]), NHWC, no normalisation."""
    return _ops().kernelzoo_similarity(
        _activations(inputs), _f32(templates), _f32(weights), _f32(p),
        similarity=str(similarity), strides=_pair(strides),
        padding=str(padding).lower(), ignore_nan=bool(ignore_nan))


_EMPTY_SHAPE = (0,)


@tf.autograph.experimental.do_not_convert
def mex(inputs, xi, offsets, c, *, num_instances, pool_size, channel_block, strides,
        padding, softmax_mode, gemm=True):
    """MEX core over blocks (pool_size x channel_block) with offsets and c (or None).

    gemm: the op's attr, kept by its gradient: False runs the direct loop where the
    class-wise MEX would take its GEMM form (tests, `kernelzoo bench ops`).
    """
    use_offsets = offsets is not None
    use_c = c is not None
    empty = tf.zeros(_EMPTY_SHAPE, tf.float32)
    return _ops().kernelzoo_mex(
        _activations(inputs), _f32(xi), _f32(offsets) if use_offsets else empty,
        _f32(c) if use_c else empty,
        num_instances=int(num_instances), pool_size=_pair(pool_size),
        channel_block=int(channel_block), strides=_pair(strides),
        padding=str(padding).lower(), softmax_mode=bool(softmax_mode),
        use_offsets=use_offsets, use_c=use_c, gemm=bool(gemm))


def _unneeded_inputs(op):
    """The indices of op's inputs whose gradient nothing uses: a GradientTape lists those no watched source
    reaches (e.g. the images under a first layer, a fixed xi); tf.gradients' ops have no such list (none)."""
    return getattr(op, "skip_input_indices", None) or ()


def _similarity_grad(op, grad):
    input_grad = 0 not in _unneeded_inputs(op)
    grads = _ops().kernelzoo_similarity_grad(
        op.inputs[0], op.inputs[1], op.inputs[2], op.inputs[3], grad,
        similarity=op.get_attr("similarity"), strides=op.get_attr("strides"),
        padding=op.get_attr("padding"), ignore_nan=op.get_attr("ignore_nan"), input_grad=input_grad)
    return [grads[0] if input_grad else None] + list(grads[1:])


def _mex_grad(op, grad):
    use_offsets = op.get_attr("use_offsets")
    use_c = op.get_attr("use_c")
    xi_grad = 1 not in _unneeded_inputs(op)  # a fixed xi (not learned) needs none
    gi, gxi, goff, gc = _ops().kernelzoo_mex_grad(
        op.inputs[0], op.inputs[1], op.inputs[2], op.inputs[3], grad,
        num_instances=op.get_attr("num_instances"), pool_size=op.get_attr("pool_size"),
        channel_block=op.get_attr("channel_block"), strides=op.get_attr("strides"),
        padding=op.get_attr("padding"), softmax_mode=op.get_attr("softmax_mode"),
        use_offsets=use_offsets, use_c=use_c, gemm=op.get_attr("gemm"), xi_grad=xi_grad)
    return [gi, gxi if xi_grad else None, goff if use_offsets else None, gc if use_c else None]


def _register(name, fn):
    try:
        tf.RegisterGradient(name)(fn)
    except KeyError:  # already registered (module imported twice)
        pass


_register("KernelzooSimilarity", _similarity_grad)
_register("KernelzooMex", _mex_grad)
