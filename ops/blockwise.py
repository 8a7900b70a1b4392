"""Bounded memory for the composite ops: a row-wise function applied block by block, both directions.

The composite l1/lp similarity and MEX build intermediates much larger than their
inputs (N x positions x patch x templates, N x positions x instances x channels).
`blockwise` runs such a function over blocks of rows in a sequential loop, and gives
it a gradient that recomputes each block and takes its vector-Jacobian product in a
second loop, so only one block's intermediates are alive at a time, forward and
backward. The block size comes from a memory budget: `memory_budget(nbytes)`, else
the environment variable KERNELZOO_COMPOSITE_MEMORY_MB, else 512 MiB.

The loops are written once in `keras.ops`; per backend there is only a sequential
scan and a VJP (TensorFlow and JAX). Other backends call the function unblocked.
"""
import contextlib
import os
import threading

import keras
import numpy as np
from keras import ops

BUDGET_ENV = "KERNELZOO_COMPOSITE_MEMORY_MB"
DEFAULT_BUDGET_MB = 512
_BACKENDS = ("tensorflow", "jax")
_override = threading.local()


@contextlib.contextmanager
def memory_budget(nbytes):
    """Bytes one block of the composite l1/lp similarity or MEX may use, inside a `with` block.

    Read when a function is traced: set it around the first call (e.g. `model.fit`).
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise ValueError(f"`nbytes` must be a positive int, got {nbytes!r}")
    previous = getattr(_override, "nbytes", None)
    _override.nbytes = int(nbytes)
    try:
        yield
    finally:
        _override.nbytes = previous


def budget_bytes():
    """The memory budget in force: `memory_budget`, else $KERNELZOO_COMPOSITE_MEMORY_MB, else 512 MiB."""
    nbytes = getattr(_override, "nbytes", None)
    if nbytes is not None:
        return nbytes
    megabytes = os.environ.get(BUDGET_ENV, "")
    try:
        value = float(megabytes or DEFAULT_BUDGET_MB)
    except ValueError:
        value = -1.0
    if not (value > 0 and np.isfinite(value)):
        raise ValueError(f"${BUDGET_ENV} must be a positive, finite number of MiB, got {megabytes!r}")
    return int(value * 2**20)


def rows_per_block(elements_per_row, dtype="float32"):
    """Rows whose intermediates (`elements_per_row` each) fit the budget; at least 1."""
    itemsize = np.dtype(keras.backend.standardize_dtype(dtype)).itemsize
    return max(1, budget_bytes() // (int(elements_per_row) * itemsize))


def blockwise(fn, rows, shared=(), *, elements_per_row):
    """fn(*row_blocks, *shared) over blocks of the leading axis of `rows`, concatenated.

    Args:
      fn: maps blocks (b, ...) of every tensor in `rows` (same b) and the `shared` tensors to one
        (b, ...) tensor of the rows' dtype, each output row depending only on its input rows.
        Constants (NumPy masks, fixed parameters) go in through its closure.
      rows: tensors with the same leading size, which may be dynamic (None).
      shared: tensors every block uses; their gradients are summed over the blocks.
      elements_per_row: elements of fn's intermediates alive at once per row while its gradient is
        computed (the block size is the budget over this).
    Rows are split into equal blocks (zero-padded at the end); a static row count that fits one
    block calls fn directly.
    """
    rows = [ops.convert_to_tensor(r) for r in rows]
    shared = [ops.convert_to_tensor(s) for s in shared]  # custom gradients take tensors, not variables
    block = rows_per_block(elements_per_row, rows[0].dtype)
    count = rows[0].shape[0]
    if (count is not None and count <= block) or keras.backend.backend() not in _BACKENDS:
        return fn(*rows, *shared)
    return _blocked(fn, len(rows), block)(*rows, *shared)


def _blocked(fn, num_rows, block):
    """fn over blocks of at most `block` rows with a recomputing custom gradient."""
    @ops.custom_gradient
    def run(*args):
        rows, shared = list(args[:num_rows]), list(args[num_rows:])
        count = ops.shape(rows[0])[0]
        blocks = [_split(r, count, block) for r in rows]

        def forward(carry, xs):
            return carry, [fn(*xs, *shared)]
        _, (out,) = _scan(forward, (), blocks, [rows[0].dtype])

        def grad(upstream):
            def backward(sums, xs):
                grads = _vjp(fn, xs[:-1] + shared, xs[-1])
                return [s + g for s, g in zip(sums, grads[num_rows:])], grads[:num_rows]
            sums, row_grads = _scan(backward, [ops.zeros_like(s) for s in shared],
                                    blocks + [_split(upstream, count, block)], [r.dtype for r in rows])
            return tuple(_merge(g, count) for g in row_grads) + tuple(sums)
        return _merge(out, count), grad
    return run


def _split(tensor, count, block):
    """(count, ...) -> (blocks, size, ...): equal blocks of size <= block, zero rows appended."""
    num_blocks = count // block + 1  # >= 1 even for no rows; non-negative operands (ONNX's Div truncates)
    size = (count + num_blocks - 1) // num_blocks
    padded = ops.pad(tensor, [(0, num_blocks * size - count)] + [(0, 0)] * (len(tensor.shape) - 1))
    return ops.reshape(padded, (num_blocks, size) + tuple(ops.shape(tensor)[1:]))


def _merge(blocks, count):
    """(blocks, size, ...) -> the first `count` rows of (blocks * size, ...)."""
    return ops.reshape(blocks, (-1,) + tuple(ops.shape(blocks)[2:]))[:count]


def _scan(step, carry, xs, y_dtypes):
    """step(carry, x) -> (carry, [y...]) over the leading axis of the tensors xs, one step at a time.

    Returns (final carry, [stacked y...]). TF: a while loop with parallel_iterations=1
    (tf.map_fn and keras.ops.map run up to 10 steps at once in graphs; keras.ops.scan wants
    outputs shaped like the carry). JAX: lax.scan.
    """
    if keras.backend.backend() == "jax":
        import jax
        return jax.lax.scan(step, carry, xs)
    import tensorflow as tf
    length = tf.shape(xs[0])[0]

    def body(i, carry, arrays):
        carry, ys = step(carry, [x[i] for x in xs])
        return i + 1, carry, [a.write(i, y) for a, y in zip(arrays, ys)]
    arrays = [tf.TensorArray(dtype, size=length) for dtype in y_dtypes]
    _, carry, arrays = tf.while_loop(lambda i, *_: i < length, body, (0, carry, arrays),
                                     parallel_iterations=1)
    return carry, [a.stack() for a in arrays]


def _vjp(fn, primals, cotangent):
    """Gradients of sum(fn(*primals) * cotangent) with respect to every primal (zeros if unused)."""
    if keras.backend.backend() == "jax":
        import jax
        return list(jax.vjp(fn, *primals)[1](cotangent))
    import tensorflow as tf
    with tf.GradientTape() as tape:
        tape.watch(primals)
        out = fn(*primals)
    grads = tape.gradient(out, primals, output_gradients=cotangent,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [tf.convert_to_tensor(g) for g in grads]  # gathers give IndexedSlices
