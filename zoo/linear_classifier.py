"""A linear classifier on fixed features: L2-regularised multinomial logistic regression, or one-vs-rest
squared hinge (an L2-SVM, as Coates et al. and the CKN reference's MISO SVM: mean of
1/2 max(0, 1 - y_c f_c(x))^2 over the examples, summed over the classes, y_c = +-1).

Fitted with L-BFGS on fixed features (frozen layers below), which is exact and far cheaper than SGD
epochs through the network; `kernelzoo.zoo.frozen_features` walks the L2 strength down a grid with it.
`one_vs_rest_squared_hinge` is the squared hinge as a Keras loss, for SGD through the network (supervised CKN).
"""
import keras
import numpy as np
import scipy.optimize
from keras import ops

from kernelzoo.ops.checks import check_choice, nonnegative_float, positive_int


LOSSES = ("logistic", "squared_hinge")
# A float32 chunk of the features: 8 MiB, which stays in the caches between its standardisation and the two
# products (one thread, 18,000 x 8,000 float32 features: 0.5-0.7 s per objective evaluation in 8 MiB chunks,
# 1.0-1.1 s in 128 MiB ones).
CHUNK_BYTES = 8 << 20


def fit_logistic(features, labels, num_classes, l2, *, rows=None, start=None, max_iter=1000, tol=1e-7,
                 loss="logistic", chunk_rows=None):
    """(kernel (D, K), bias (K,), report): argmin mean loss + l2 / 2 ||kernel||^2 (bias free); the loss is
    the cross-entropy ("logistic") or the one-vs-rest squared hinge ("squared_hinge", module docstring).

    features (N, D) of any dtype cast to float32 (float16, Keras's bfloat16...; a read-only np.memmap too),
    labels (N,) ints in [0, K); `rows`
    the indices of the rows to fit on (default all; sorted ones read a memory map in order); `start` a
    previous (kernel, bias). L-BFGS runs on standardised features, (x - mean) / std per column (a constant column
    only centred: `_scales`), with the penalty rewritten for them: the same objective, better conditioned (fewer
    passes over the features).
    The features are never copied whole: one float64 pass for the column means and deviations, then each
    objective evaluation is one pass over `chunk_rows` rows at a time (default: CHUNK_BYTES of float32),
    each cast to float32 and standardised on the fly, so the memory used is O(chunk_rows D + D K) whatever N.
    """
    k = positive_int(num_classes, "num_classes")
    x, y, rows, chunk_rows = _inputs(features, labels, k, rows, chunk_rows)
    l2 = nonnegative_float(l2, "l2")
    loss_name = check_choice("loss", loss, LOSSES)
    data_term = {"logistic": _cross_entropy, "squared_hinge": _squared_hinge}[loss_name]
    d = x.shape[1]
    count, mean, std = _column_moments(x, rows, chunk_rows)
    scale = _scales(std)
    penalty = l2 * np.repeat(scale ** 2, k)  # l2 ||kernel||^2 with kernel = scale * v

    def objective(theta):
        kernel, bias = theta[:d * k].reshape(d, k).astype("float32"), theta[d * k:].astype("float32")
        value, grad = 0.0, np.zeros((d + 1, k))  # the kernel's gradient, then the bias's
        for part, block in _blocks(x, rows, chunk_rows, standardise=(mean, scale)):
            part_value, residual = data_term(block @ kernel + bias, y[part], count)
            value += part_value
            grad[:d] += block.T @ residual
            grad[d] += residual.sum(axis=0)
        value += 0.5 * np.dot(penalty * theta[:d * k], theta[:d * k])
        grad[:d] += (penalty * theta[:d * k]).reshape(d, k)
        return value, grad.ravel()

    theta = np.zeros(d * k + k)
    if start is not None:
        kernel, bias = (np.asarray(a, "float64") for a in start)
        theta = np.concatenate([(kernel / scale[:, None]).ravel(), bias + mean @ kernel])
    result = scipy.optimize.minimize(objective, theta, jac=True, method="L-BFGS-B",
                                     options={"maxiter": positive_int(max_iter, "max_iter"), "ftol": tol,
                                              "gtol": 1e-6, "maxcor": 20})
    v = result.x[:d * k].reshape(d, k)
    kernel = v * scale[:, None]
    bias = result.x[d * k:] - mean @ kernel
    report = {"l2": l2, "loss": float(result.fun), "loss_function": loss_name,
              "iterations": int(result.nit), "converged": bool(result.success)}
    return kernel.astype("float32"), bias.astype("float32"), report


def _scales(std):
    """1 / std per column, but 1 for a column (nearly) constant, its std below 1e-4 of the columns' RMS: its
    penalty, l2 / std^2 on the standardised weight, would make the problem too ill-conditioned for L-BFGS, which
    then stops at once far from the optimum and reports convergence (a dead ReLU feature did that)."""
    floor = 1e-4 * np.sqrt(np.mean(std ** 2))
    constant = std <= floor
    return np.where(constant, 1.0, 1.0 / np.where(constant, 1.0, std))


def accuracy(features, labels, kernel, bias, *, rows=None, chunk_rows=None):
    """The fraction of `labels` (of `rows`, default all) that argmax(features @ kernel + bias) gets right;
    `features` and `labels` as `fit_logistic`'s, read `chunk_rows` rows at a time."""
    x, y, rows, chunk_rows = _inputs(features, labels, len(bias), rows, chunk_rows, labels_in_range=False)
    right, count = 0, 0
    for part, block in _blocks(x, rows, chunk_rows):
        right += int(np.sum(np.argmax(block @ kernel + bias, axis=1) == y[part]))
        count += len(block)
    return right / count


def _column_moments(features, rows, chunk_rows):
    """(rows, mean, std): the number of rows and the per-column float64 mean and standard deviation of
    `features[rows]` (all rows if None), in one pass of `chunk_rows` rows at a time (Chan et al.'s pairwise
    update of the blocks' means and sums of squared deviations: no cancellation)."""
    count, mean, squares = 0, 0.0, 0.0
    for _, block in _blocks(features, rows, chunk_rows):
        size, block_mean = len(block), block.mean(axis=0, dtype="float64")
        delta = block_mean - mean
        squares = squares + size * block.var(axis=0, dtype="float64") + delta ** 2 * count * size / (count + size)
        mean = mean + delta * size / (count + size)
        count += size
    return count, mean, np.sqrt(squares / count)


def _inputs(features, labels, num_classes, rows, chunk_rows, labels_in_range=True):
    """(features, labels, rows, chunk_rows) checked, as arrays (`rows` None for all of them), `chunk_rows`
    the rows of CHUNK_BYTES of float32 if None. ValueError naming the bad one."""
    x, y = np.asarray(features), np.asarray(labels, dtype="int64")
    if x.ndim != 2 or not np.can_cast(x.dtype, "float32", "same_kind") or y.shape != (len(x),) or not len(x) or (
            labels_in_range and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"`features` (N, D) and `labels` (N,) in [0, {num_classes}) expected, got {x.dtype} "
                         f"{x.shape} and {y.shape}")
    rows = None if rows is None else np.asarray(rows)
    if rows is not None and (rows.ndim != 1 or not len(rows) or rows.dtype.kind not in "iu" or rows.min() < 0
                             or rows.max() >= len(x)):
        raise ValueError(f"`rows` must be a non-empty 1D array of row indices in [0, {len(x)}), got {rows!r}")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (4 * x.shape[1]))
    return x, y, rows, positive_int(chunk_rows, "chunk_rows")


def _blocks(features, rows, chunk_rows, standardise=None):
    """(indices, float32 block) for consecutive `chunk_rows` of `rows` (all rows if None, read as slices):
    `features[indices]`, or with `standardise` = (mean, scale) (features[indices] - mean) * scale, cast and
    centred in one pass. Every block lies in the same buffer (valid until the next), the rows of `rows`
    gathered into it (or, for other dtypes than float32, into a second one): nothing is allocated per block."""
    count = len(features) if rows is None else len(rows)
    buffer = np.empty((min(chunk_rows, count), features.shape[1]), "float32")
    gathered = buffer if rows is None or features.dtype == buffer.dtype else np.empty(buffer.shape, features.dtype)
    shift, factor = (np.float32(0), None) if standardise is None else (a.astype("float32") for a in standardise)
    for start in range(0, count, chunk_rows):
        size = min(chunk_rows, count - start)
        if rows is None:
            part, source = slice(start, start + size), features[start:start + size]
        else:
            part = rows[start:start + size]
            source = np.take(features, part, axis=0, out=gathered[:size])
        block = np.subtract(source, shift, out=buffer[:size])
        if factor is not None:
            block *= factor
        yield part, block


def _cross_entropy(logits, labels, count):
    """(sum over the rows of the cross-entropy / count, its gradient in the logits / count)."""
    rows = np.arange(len(labels))
    logits -= logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1, dtype="float64"))
    loss = np.sum(log_norm - logits[rows, labels]) / count
    residual = np.exp(logits - log_norm[:, None].astype("float32"))
    residual[rows, labels] -= 1.0
    residual /= count
    return loss, residual


def _squared_hinge(logits, labels, count):
    """(sum over the rows and classes of 1/2 max(0, 1 - y_c f_c)^2 / count, its gradient in the logits / count)."""
    signs = -np.ones_like(logits)
    signs[np.arange(len(labels)), labels] = 1.0
    slack = np.maximum(1.0 - signs * logits, 0.0)
    return 0.5 * np.sum(np.square(slack, dtype="float64")) / count, -signs * slack / count


@keras.saving.register_keras_serializable(package="kernelzoo")
def one_vs_rest_squared_hinge(y_true, y_pred):
    """Keras loss on logits and integer labels: the sum over the classes of 1/2 max(0, 1 - y_c f_c)^2, y_c = +1 for
    the label and -1 for the others (the module docstring's "squared_hinge"; Keras averages it over the batch)."""
    logits = ops.cast(y_pred, "float32")
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    signs = 2.0 * ops.one_hot(labels, logits.shape[-1]) - 1.0
    return 0.5 * ops.sum(ops.square(ops.relu(1.0 - signs * logits)), axis=-1)
