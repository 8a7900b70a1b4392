"""Public SimNets operators: argument checks, the normalisation term, and dispatch.

`similarity` and `mex` validate everything before any kernel runs, then call the
custom TensorFlow op (TF backend with the op library built) or the composite
`keras.ops` implementation. `KERNELZOO_OPS=auto|custom|composite` or the
`implementation(...)` context manager force a path.

On a GPU, "auto" picks the custom op only when the library has GPU kernels for it,
`KERNELZOO_GPU_KERNELS` is not "0" and the op passed the once-per-process self-check
against the composite (`kernelzoo.ops.selfcheck`); otherwise the composite.

Activations (`inputs` and the output) are float32, or float16 / bfloat16 as Keras mixed
precision computes: those reach the custom op as they are (it accumulates in float32 and rounds
its output to their dtype), the composite computes on a float32 copy and casts its output back,
so both return the input's dtype. Other input dtypes are cast to float32, as are all parameters.
"""
import contextlib
import functools
import math
import os
import threading

import keras
import numpy as np
from keras import ops

from kernelzoo.ops import composite
from kernelzoo.ops.checks import (check_choice, normalize_padding, normalize_tuple, positive_float, positive_int,
                                  window_fits)
from kernelzoo.ops.shapes import output_size, pad_amounts

SIMILARITIES = ("linear", "l1", "l2", "lp")
IMPLEMENTATIONS = ("auto", "custom", "composite")
# The TF ops behind each operator (forward, gradient).
_TF_OPS = {"similarity": ("KernelzooSimilarity", "KernelzooSimilarityGrad"),
           "mex": ("KernelzooMex", "KernelzooMexGrad")}
GPU_DEVICE = "/GPU:0"
_FIXED_P = {"l1": 1.0, "l2": 2.0}
ACTIVATION_DTYPES = ("float32", "float16", "bfloat16")
_override = threading.local()


def _outside_autograph(fn):
    """`fn`, called as is (not converted) by TF's autograph inside a user's `tf.function`.

    `similarity` and `mex` are host-side Python (argument checks, dispatch, the op library's
    build and load, the composite's explicit loops) with no tensor-dependent control flow.
    Converted, they warned about the build's subprocess calls, and autograph's rewrite of
    `library.build`'s loop dropped its assignment to the module's build info.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf
    return tf.autograph.experimental.do_not_convert(fn)


@contextlib.contextmanager
def implementation(name):
    """Force "custom", "composite" or "auto" inside a `with` block (this thread only)."""
    name = check_choice("implementation", name, IMPLEMENTATIONS)
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous


def _mode():
    mode = getattr(_override, "name", None) or os.environ.get("KERNELZOO_OPS", "auto")
    return check_choice("KERNELZOO_OPS", mode, IMPLEMENTATIONS)


def selected_implementation(op=None):
    """The implementation the next call of `op` ("similarity", "mex") will use: "custom" or "composite".

    op=None: "custom" when both operators use it.
    """
    ops_asked = _check_op_name(op)
    mode = _mode()
    if mode == "composite":
        return "composite"
    tensorflow_backend = keras.backend.backend() == "tensorflow"
    if mode == "custom":
        if not tensorflow_backend:
            raise RuntimeError("KERNELZOO_OPS=custom needs the TensorFlow Keras backend, "
                               f"not {keras.backend.backend()!r}")
        from kernelzoo.ops import library
        library.load()  # raises with the build error
        return "custom"
    if not tensorflow_backend:
        return "composite"
    if not _gpu_visible():
        from kernelzoo.ops import library
        return "custom" if library.available() else "composite"
    return "composite" if any(_gpu_composite_reason(name) for name in ops_asked) else "custom"


def _check_op_name(op):
    if op is None:
        return tuple(_TF_OPS)
    return (check_choice("op", op, tuple(_TF_OPS)),)


def _gpu_composite_reason(op):
    """Why `op` runs the composite on this GPU machine ("auto" mode), or None when it runs the GPU kernels.

    The first call that finds GPU kernels runs the self-check on GPU_DEVICE.
    """
    from kernelzoo.ops import library, selfcheck

    if os.environ.get("KERNELZOO_GPU_KERNELS", "").strip() == "0":
        return "KERNELZOO_GPU_KERNELS=0"
    if not library.available():
        return f"the op library is unavailable ({(library.failure_reason() or 'unknown').strip().splitlines()[0]})"
    missing = [name for name in _TF_OPS[op] if name not in library.gpu_kernel_ops()]
    if missing:
        return (f"the op library has no GPU kernel for {', '.join(missing)} "
                f"(GPU kernels: {library.build_info().gpu_status})")
    problem = selfcheck.check(GPU_DEVICE).get(op)
    if problem or op in selfcheck.routed_to_composite():
        return f"its GPU kernel failed the self-check against the composite: {problem}"
    return None


def describe_implementation():
    """Which implementation the ops use here and why, as printable lines (demo, bug reports)."""
    chosen = {op: selected_implementation(op) for op in _TF_OPS}
    summary = (chosen["mex"] if len(set(chosen.values())) == 1
               else ", ".join(f"{op}: {c}" for op, c in chosen.items()))
    lines = [f"kernelzoo ops implementation: {summary} (Keras backend: {keras.backend.backend()})"]
    mode = _mode()
    gpu = keras.backend.backend() == "tensorflow" and _gpu_visible()
    if "custom" in chosen.values():
        from kernelzoo.ops import library
        info = library.build_info()
        lines += [f"  op library: {info.path}",
                  f"  target: {info.variant} ({' '.join(info.arch_flags) or 'no -march'})"
                  + (" after failed builds with " + "; ".join(" ".join(f) for _, f, _ in info.failed)
                     if info.fell_back else ""),
                  f"  GPU kernels: {info.gpu_status}",
                  "  kernels: " + ", ".join(f"{name} ({device})" for name, device in library.kernels())]
    if mode == "composite":
        lines.append("  reason: forced by KERNELZOO_OPS=composite or kernelzoo.ops.implementation('composite')")
    elif keras.backend.backend() != "tensorflow":
        lines.append("  reason: the custom ops are TensorFlow ops; this Keras backend runs the composite")
    elif gpu and mode == "auto":
        for op in _TF_OPS:
            reason = _gpu_composite_reason(op)
            lines.append(f"  {op} on the GPU: " + (f"composite, because {reason}" if reason else
                                                   f"GPU kernels (self-check on {GPU_DEVICE} passed)"))
    elif "composite" in chosen.values():
        from kernelzoo.ops import library
        reason = (library.failure_reason() or "unknown").strip().splitlines()
        first_error = next((line.strip() for line in reason[1:] if "error" in line.lower()), "")
        lines.append(f"  reason (FALLBACK): {reason[0]}" + (f"\n    {first_error}" if first_error else ""))
        lines.append("  run `kernelzoo build-ops` to see the compiler output")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def _core(op, inputs, *args, **kwargs):
    """`op` of the implementation selected: the custom op on `inputs` as they are, or the composite on a
    float32 copy with its output cast to the dtype of `inputs`."""
    if selected_implementation(op) == "custom":
        from kernelzoo.ops import custom
        return getattr(custom, op)(inputs, *args, **kwargs)
    out = getattr(composite, op)(ops.cast(inputs, "float32"), *args, **kwargs)
    return ops.cast(out, inputs.dtype)


@_outside_autograph
def similarity(inputs, templates, weights=None, *, similarity="l2", p=None, strides=(1, 1), padding="valid",
               normalization_term=False, ignore_nan=False):
    """SimNets similarity layer output: out[i, j, l] = sum_d u[d, l] * phi(x_ij[d], z[d, l]).

    Args:
      inputs: (N, H, W, C) images or feature maps (NHWC).
      templates: (kh, kw, C, n), laid out like a Conv2D kernel.
      weights: same shape as `templates`, finite and >= 0; None means all ones (unweighted).
      similarity: "linear" (phi = x z), "l1" (-|x - z|), "l2" (-(x - z)^2) or "lp" (-|x - z|^p).
      p: for "lp": a scalar or per-template (n,) tensor, finite and > 0 (differentiable).
      strides, padding: as Conv2D. "same" pads with zeros, or NaN with `ignore_nan`.
      normalization_term: (l1/l2/lp) add sum_d [log p + log(u_d)/p - log 2 - lgamma(1/p)],
        the log-normaliser of the weighted generalised-Gaussian density, so the output is a
        log-likelihood (paper 000 Sec. 5). With `ignore_nan` only observed entries count.
      ignore_nan: NaN entries contribute 0 (they are marginalised out).

    Returns:
      (N, H', W', n), float16 / bfloat16 for inputs of that dtype, else float32.
    """
    kind = check_choice("similarity", similarity, SIMILARITIES)
    strides = normalize_tuple(strides, "strides")
    padding = normalize_padding(padding)
    inputs = _activations(inputs, "inputs")
    templates = _float32(templates, "templates")
    _check_images(inputs)
    _check_rank(templates, 4, "templates", "(kernel_h, kernel_w, channels, n)")
    kh, kw, channels, n = templates.shape
    if 0 in templates.shape:
        raise ValueError(f"`templates` must have no empty axis (kh, kw, C, n >= 1), got shape {tuple(templates.shape)}")
    if inputs.shape[-1] != channels:
        raise ValueError(f"`inputs` has {inputs.shape[-1]} channels but `templates` expects {channels} "
                         f"(templates shape {tuple(templates.shape)})")
    window_fits(inputs.shape[1:3], (kh, kw), padding, "templates spatial size")
    if weights is None:
        weights = ops.ones_like(templates)
    else:
        weights = _float32(weights, "weights")
        if tuple(weights.shape) != tuple(templates.shape):
            raise ValueError(f"`weights` must have the shape of `templates` {tuple(templates.shape)}, "
                             f"got {tuple(weights.shape)}")
        _check_concrete(weights, "weights", (lambda w: np.all((w >= 0) & np.isfinite(w)),
                                             "must be finite and >= 0 (negative, NaN or infinite weights passed "
                                             "to the op)"))
    p_vector = _similarity_p(kind, p, n)
    if normalization_term and kind == "linear":
        raise ValueError("`normalization_term` applies to the l1/l2/lp similarities, not 'linear'")

    core_inputs, core_templates, core_padding = inputs, templates, padding
    if kind == "l2":
        core_inputs, core_templates, core_padding = _centred(inputs, templates, strides, padding, ignore_nan)
    core = _core("similarity", core_inputs, core_templates, weights, p_vector, similarity=kind, strides=strides,
                 padding=core_padding, ignore_nan=bool(ignore_nan))
    if not normalization_term:
        return core
    # A zero weight (allowed by the layers' non_neg constraint) counts as the smallest normal float32
    # there: log u = -87, finite with finite gradients, instead of -inf poisoning the loss.
    log_weights = ops.log(ops.maximum(weights, float(np.finfo(np.float32).tiny)))
    log_normaliser = (ops.log(p_vector) + log_weights / p_vector - math.log(2.0)
                      - log_gamma(1.0 / p_vector))  # (kh, kw, C, n)
    if ignore_nan:
        term = composite.valid_sum(ops.cast(inputs, "float32"), log_normaliser, strides=strides, padding=padding)
    else:
        term = ops.sum(log_normaliser, axis=(0, 1, 2))
    return ops.cast(ops.cast(core, "float32") + term, inputs.dtype)


@_outside_autograph
def mex(inputs, xi, *, num_instances=1, pool_size=(1, 1), channel_block=None, strides=None, padding="valid",
        offsets=None, c=None, softmax_mode=False):
    """SimNets MEX layer output: MEX_xi{inp(s) + b[region, instance, s] for s in block, c[instance]}.

    MEX_xi{c_1..c_n} = (1/xi) log((1/n) sum_i exp(xi c_i)): max as xi -> +inf, mean at
    xi = 0, min as xi -> -inf (paper 000 Eq. 1).

    Args:
      inputs: (N, H, W, C).
      xi: scalar or per-instance (num_instances,); any real, 0 (but not with softmax_mode) and +-inf included.
      num_instances: MEX instances per block (e.g. one per class).
      pool_size: spatial block size; strides default to pool_size (like MaxPool2D).
      channel_block: channels per block (C must be a multiple); None = all channels.
      padding: "valid" or "same" (padded entries are left out of the block).
      offsets: None or (R_h, R_w, num_instances, bh, bw, channel_block): offsets b per region
        of a R_h x R_w grid over the output positions (1x1 = shared, output size = unshared).
      c: None, scalar or (num_instances,), not NaN: an extra element joining each block.
      softmax_mode: log-sum-exp without the 1/n.

    Returns:
      (N, H', W', num_blocks * num_instances), channel j * num_instances + k; float16 / bfloat16
      for inputs of that dtype, else float32.
    """
    inputs = _activations(inputs, "inputs")
    _check_images(inputs)
    channels = inputs.shape[-1]
    if not channels:
        raise ValueError(f"`inputs` must have a known, nonzero number of channels, got shape {tuple(inputs.shape)}")
    k = positive_int(num_instances, "num_instances")
    pool_size = normalize_tuple(pool_size, "pool_size")
    strides = pool_size if strides is None else normalize_tuple(strides, "strides")
    padding = normalize_padding(padding)
    channel_block = channels if channel_block is None else positive_int(channel_block, "channel_block")
    if channels % channel_block:
        raise ValueError(f"`channel_block`={channel_block} must divide the number of input channels ({channels})")
    window_fits(inputs.shape[1:3], pool_size, padding, "pool_size")
    if None in inputs.shape[1:3]:
        raise ValueError(f"mex needs static spatial dimensions in `inputs`, got shape {tuple(inputs.shape)}")
    static_xi = xi
    xi = _one_or_each(xi, k, "xi", "instance")
    xi_checks = [(_has_no_nan, "must not be NaN")]
    if softmax_mode:  # every spelling: 0, np.float32(0), [1.0, 0.0], a tensor
        xi_checks.append((lambda v: np.all(v != 0), "must not be 0 with softmax_mode=True (log(n)/0 = inf)"))
    _check_concrete(xi, "xi", *xi_checks)
    if _is_number(static_xi) or _numbers_only(static_xi):
        # a fixed xi (numbers only: a list of variables is learned) lets the composite drop the branches it does
        # not need
        xi = np.broadcast_to(np.asarray(static_xi, "float32").reshape(-1), (k,))
    if c is not None:
        c = _one_or_each(c, k, "c", "instance")
        _check_concrete(c, "c", (_has_no_nan, "must not be NaN"))
    if offsets is not None:
        offsets = _float32(offsets, "offsets")
        _check_offsets(offsets, inputs, k, pool_size, channel_block, strides, padding)
    return _core("mex", inputs, xi, offsets, c, num_instances=k, pool_size=pool_size, channel_block=channel_block,
                 strides=strides, padding=padding, softmax_mode=bool(softmax_mode))


def log_gamma(x):
    """log Gamma(x) for x > 0 in keras.ops (differentiable; keras.ops has no lgamma).

    Shifts x up by 6 with Gamma(x + 1) = x Gamma(x), then Stirling's series
    (absolute error < 1e-10 for arguments >= 6). The shift's log is a sum of logs: their product
    overflows float32 for x above ~2.6e6 (p below ~4e-7 in the lp normalisation).
    """
    shift = sum(ops.log(x + float(i)) for i in range(6))
    z = x + 6.0
    inv = 1.0 / z
    inv2 = inv * inv
    series = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 / 1680)))
    return (z - 0.5) * ops.log(z) - z + 0.5 * math.log(2 * math.pi) + series - shift


def _similarity_p(kind, p, n):
    """Per-template exponent (n,) float32: fixed for l1/l2/linear, given for lp."""
    if kind != "lp":
        if p is not None and not (kind in _FIXED_P and _is_number(p) and float(p) == _FIXED_P[kind]):
            raise ValueError(f"`p` is only used with similarity='lp' (got p={p!r} with similarity={kind!r})")
        return ops.full((n,), _FIXED_P.get(kind, 1.0), dtype="float32")
    if p is None:
        raise ValueError("similarity='lp' needs `p` (a scalar or one value per template), got None")
    if _is_number(p):
        with np.errstate(over="ignore"):
            single = np.float32(positive_float(p, "p"))
        if not 0 < single < np.inf:  # the op takes float32: 1e-46 is 0 there, 1e39 inf
            raise ValueError(f"`p`={p!r} must be > 0 and finite in float32, where it is {single}")
        return ops.full((n,), single, dtype="float32")
    p = _one_or_each(p, n, "p", "template")
    _check_concrete(p, "p", (lambda v: np.all(np.isfinite(v) & (v > 0)), "must be > 0 and finite"))
    return p


def _check_offsets(offsets, inputs, k, pool_size, channel_block, strides, padding):
    out_h = output_size(inputs.shape[1], pool_size[0], strides[0], padding)
    out_w = output_size(inputs.shape[2], pool_size[1], strides[1], padding)
    expected_tail = (k, pool_size[0], pool_size[1], channel_block)
    shape = tuple(offsets.shape)
    if len(shape) != 6 or shape[2:] != expected_tail:
        raise ValueError("`offsets` must have shape (R_h, R_w, num_instances, pool_h, pool_w, channel_block) = "
                         f"(R_h, R_w) + {expected_tail}, got {shape}")
    if not (1 <= shape[0] <= out_h and 1 <= shape[1] <= out_w):
        raise ValueError(f"`offsets` region grid {shape[:2]} must lie between (1, 1) and the output size "
                         f"({out_h}, {out_w})")


def _centred(inputs, templates, strides, padding, ignore_nan):
    """(inputs, templates, padding) for the l2 similarity, both shifted by the templates' mean per channel.

    -sum u (x - z)^2 depends on x - z only, but both implementations expand it into three terms
    (sum u x^2 - 2 sum u z x + sum u z^2) that cancel when x and z share a large offset (raw 0-255
    pixels: a distance of 0.003 came out as +0.008). Shifting both by the same constant (outside the
    gradient: the derivatives are those of x - z) removes the offset. "same" padding is made explicit
    first (zeros, or NaN with `ignore_nan`, of the unshifted input); with an unknown spatial size it is
    left to the op and the input is not shifted.
    """
    kh, kw = templates.shape[:2]
    if padding == "same":
        if None in inputs.shape[1:3]:
            return inputs, templates, padding
        pads = [pad_amounts(size, k, s, "same") for size, k, s in zip(inputs.shape[1:3], (kh, kw), strides)]
        if any(before or after for before, after in pads):
            inputs = ops.pad(inputs, [(0, 0), *pads, (0, 0)], constant_values=float("nan") if ignore_nan else 0.0)
        padding = "valid"
    shift = ops.cast(ops.cast(ops.stop_gradient(ops.mean(templates, axis=(0, 1, 3))), inputs.dtype), "float32")
    return inputs - ops.cast(shift, inputs.dtype), templates - ops.reshape(shift, (1, 1, -1, 1)), padding


def _one_or_each(value, count, name, item):
    """`value` as a float32 (count,) tensor: a scalar or (1,) shared by every `item`, or one per `item`."""
    value = _float32(value, name)
    if tuple(value.shape) not in ((), (1,), (count,)):
        raise ValueError(f"`{name}` must be a scalar or have shape ({count},) (one per {item}), "
                         f"got {tuple(value.shape)}")
    return ops.broadcast_to(ops.reshape(value, (-1,)), (count,)) if tuple(value.shape) != (count,) else value


def _float32(value, name):
    return ops.cast(_numeric(value, name), "float32")


def _activations(value, name):
    """float32, float16 and bfloat16 tensors as they are, other numeric ones cast to float32."""
    tensor = _numeric(value, name)
    return tensor if keras.backend.standardize_dtype(tensor.dtype) in ACTIVATION_DTYPES else ops.cast(tensor, "float32")


def _numeric(value, name):
    if isinstance(value, (list, tuple)) and _numbers_only(value):
        value = np.asarray(value, "float64")  # TF would guess float32 and call 1e39 "out of range for a double"
    try:
        tensor = ops.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a tensor or array, got {type(value).__name__}: {error}") from None
    if not keras.backend.is_float_dtype(tensor.dtype) and not keras.backend.is_int_dtype(tensor.dtype):
        raise ValueError(f"`{name}` must be numeric, got dtype {tensor.dtype}")
    return tensor


def _check_images(inputs):
    """`inputs` of rank 4 (N, H, W, C) with no empty spatial axis (a 'same' window over none gives no output)."""
    _check_rank(inputs, 4, "inputs", "(batch, height, width, channels)")
    if 0 in inputs.shape[1:3]:
        raise ValueError(f"`inputs` must have a height and width of at least 1, got shape {tuple(inputs.shape)}")


def _check_rank(tensor, rank, name, layout):
    if len(tensor.shape) != rank:
        raise ValueError(f"`{name}` must be a {rank}D tensor {layout}, got shape {tuple(tensor.shape)}")


def _is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _numbers_only(value):
    """Whether `value` is a list, tuple or array of numbers only (no tensors or variables in it)."""
    return isinstance(value, (list, tuple, np.ndarray)) and all(
        _is_number(v) for v in np.ravel(np.asarray(value, dtype=object)))


def _has_no_nan(values):
    return not np.any(np.isnan(values))


def _check_concrete(tensor, name, *checks):
    """Check a tensor's values against `(predicate, requirement)` pairs when they are known now (eager).

    Symbolic tensors (inside a tf.function, Keras tracing) pass unchecked: neither implementation checks
    them at run time, so e.g. negative or NaN weights, p <= 0 or inf, a NaN xi or c, or xi = 0 with
    softmax_mode give NaN, inf or meaningless outputs there.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        if not tf.executing_eagerly():  # converting would only raise (after a numpy 2 DeprecationWarning)
            return
    try:
        values = ops.convert_to_numpy(tensor)
    except Exception:  # symbolic (another backend's tracing): no values to check
        return
    for predicate, requirement in checks:
        if not predicate(values):
            raise ValueError(f"`{name}` {requirement}")
