"""Self-check of the custom op kernels on one device against the composite keras.ops implementation.

The GPU kernels are verified by host emulation in the test suite, not on every GPU
and driver a user may have, so the dispatcher (`api.selected_implementation`) runs
`check(device)` once per device and process before it first sends an op to the GPU
kernels: a few small configurations of each op, forward and gradients, custom and
composite placed on `device`, well under 0.1 s. An op whose kernel disagrees (or
fails) warns once (RuntimeWarning naming the op and the configuration) and runs the
composite for the rest of the process (`routed_to_composite()`).

The check is device-parametric: `check("/CPU:0")` runs it on the CPU kernels, which is
how the tests exercise it on a machine without a GPU. Test hook: `_fault(op, values)`
receives the custom op's forward value and gradients (numpy arrays) before they are
compared and returns them unchanged; a test monkeypatches it to perturb one op.
"""
import threading
import warnings

import numpy as np

__all__ = ["check", "routed_to_composite", "OPS"]

OPS = ("similarity", "mex")
# |custom - composite| <= TOLERANCE * max(1, max |composite|), per output.
TOLERANCE = 1e-3

_lock = threading.Lock()
_checked = {}      # device -> {op: mismatch description or None}
_routed = set()    # ops sent to the composite for the rest of the process


def _fault(op, values):
    """Test hook (see the module docstring): the custom `op`'s outputs, as compared."""
    return values


def _similarity_cases(rng):
    x = rng.normal(size=(2, 6, 5, 3)).astype("float32")
    x_nan = x.copy()
    x_nan[0, 2, 1, 0] = np.nan
    z = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    u = rng.uniform(0.5, 1.5, size=z.shape).astype("float32")
    p = np.linspace(0.8, 2.2, 4).astype("float32")
    ones = np.ones(4, "float32")
    return [
        ("l2, valid", (x, z, u, 2 * ones), dict(similarity="l2", strides=(1, 1), padding="valid", ignore_nan=False)),
        ("l1, same, strides 2", (x, z, u, ones),
         dict(similarity="l1", strides=(2, 2), padding="same", ignore_nan=False)),
        ("linear, valid", (x, z, u, ones), dict(similarity="linear", strides=(1, 1), padding="valid",
                                               ignore_nan=False)),
        ("lp, same, ignore_nan", (x_nan, z, u, p),
         dict(similarity="lp", strides=(1, 1), padding="same", ignore_nan=True)),
    ]


def _mex_cases(rng):
    x = rng.normal(size=(2, 5, 6, 6)).astype("float32")
    offsets = rng.normal(scale=0.3, size=(2, 1, 2, 2, 2, 6)).astype("float32")
    return [
        ("pool 2x2, 2 instances, offsets, c", (x, np.array([0.5, -1.0], "float32"), offsets,
                                               np.array([0.2, -0.3], "float32")),
         dict(num_instances=2, pool_size=(2, 2), channel_block=6, strides=(2, 2), padding="valid",
              softmax_mode=False)),
        ("channel_block 3, xi (2, 0, -3), pool 3x3 same", (x, np.array([2.0, 0.0, -3.0], "float32"), None, None),
         dict(num_instances=3, pool_size=(3, 3), channel_block=3, strides=(2, 2), padding="same",
              softmax_mode=False)),
        ("softmax_mode, pool 2x2", (x, np.array([1.5], "float32"), None, None),
         dict(num_instances=1, pool_size=(2, 2), channel_block=1, strides=(1, 1), padding="valid",
              softmax_mode=True)),
    ]


def _run(fn, args, kwargs, seed):
    """Forward value and the gradients of sum(out * g) (g random) w.r.t. every array argument."""
    import tensorflow as tf

    tensors = [None if a is None else tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        for t in tensors:
            if t is not None:
                tape.watch(t)
        out = fn(*tensors, **kwargs)
        weight = tf.constant(np.random.default_rng(seed).normal(size=out.shape).astype("float32"))
        loss = tf.reduce_sum(out * weight)
    grads = tape.gradient(loss, [t for t in tensors if t is not None])
    return [out.numpy()] + [np.zeros(t.shape, "float32") if g is None else np.asarray(g) for g, t in
                            zip(grads, [t for t in tensors if t is not None])]


def _mismatch(custom, reference):
    """A description of the first output that differs, or None."""
    names = ["output"] + [f"gradient {i}" for i in range(len(reference) - 1)]
    for name, a, b in zip(names, custom, reference):
        if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
            return f"{name}: shape or NaN pattern differs"
        scale = max(1.0, float(np.nanmax(np.abs(b), initial=0.0)))
        error = float(np.nanmax(np.abs(a - b), initial=0.0))
        if not error <= TOLERANCE * scale:
            return f"{name}: max |custom - composite| = {error:.3g} (tolerance {TOLERANCE * scale:.3g})"
    return None


def _check_op(op, device):
    """The first failing configuration of `op` on `device`, described, or None."""
    import tensorflow as tf

    from kernelzoo.ops import composite, custom

    rng = np.random.default_rng(17)
    cases = _similarity_cases(rng) if op == "similarity" else _mex_cases(rng)
    for seed, (name, args, kwargs) in enumerate(cases):
        results = []
        for label, module in (("the custom op", custom), ("the composite reference", composite)):
            try:
                with tf.device(device):
                    results.append(_run(getattr(module, op), args, kwargs, seed))
            except Exception as error:  # noqa: BLE001 - a kernel that fails is a failed check
                return f"{name}: {label} raised {type(error).__name__}: {str(error).strip().splitlines()[0]}"
        problem = _mismatch(_fault(op, results[0]), results[1])
        if problem:
            return f"{name}: {problem}"
    return None


def check(device):
    """Runs the self-check on `device` (e.g. "/GPU:0") once per process; {op: problem or None}.

    Ops with a problem warn once and join `routed_to_composite()`. Runs eagerly even when
    called while a tf.function is traced.
    """
    with _lock:
        if device in _checked:
            return _checked[device]
        import tensorflow as tf

        with tf.init_scope():
            results = {op: _check_op(op, device) for op in OPS}
        _checked[device] = results
        for op, problem in results.items():
            if problem and op not in _routed:
                _routed.add(op)
                warnings.warn(f"kernelzoo: the custom {op} kernel on {device} disagrees with the composite "
                              f"keras.ops implementation ({problem}); `{op}` runs the composite for the rest of "
                              "this process. Please report this with `kernelzoo build-ops` and "
                              "`nvidia-smi` output.", RuntimeWarning, stacklevel=3)
        return results


def routed_to_composite():
    """Ops that a failed self-check sent to the composite in this process."""
    return frozenset(_routed)
