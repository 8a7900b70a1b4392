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


def fit_logistic(features, labels, num_classes, l2, *, start=None, max_iter=1000, tol=1e-7, loss="logistic",
                 overwrite_features=False):
    """(kernel (D, K), bias (K,), report): argmin mean loss + l2 / 2 ||kernel||^2 (bias free); the loss is
    the cross-entropy ("logistic") or the one-vs-rest squared hinge ("squared_hinge", module docstring).

    features (N, D) float32, labels (N,) ints in [0, K); `start` a previous (kernel, bias). L-BFGS
    runs on standardised features, (x - mean) / std per column, with the penalty rewritten for them:
    the same objective, better conditioned (fewer passes over the features). They are standardised in
    a copy, or, with `overwrite_features` and a writable float32 array, in `features` itself (its
    contents are then lost): the caller's copy of a large feature matrix is the only one.
    """
    in_place = overwrite_features and isinstance(features, np.ndarray) and features.dtype == np.float32 \
        and features.flags.writeable and features.flags.c_contiguous
    x = features if in_place else np.array(features, dtype="float32")  # standardised in place below
    y = np.asarray(labels, dtype="int64")
    k = positive_int(num_classes, "num_classes")
    l2 = nonnegative_float(l2, "l2")
    loss_name = check_choice("loss", loss, LOSSES)
    if x.ndim != 2 or y.shape != (len(x),) or not len(x) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"`features` (N, D) and `labels` (N,) in [0, {k}) expected, got {x.shape} and {y.shape}")
    d, rows = x.shape[1], np.arange(len(x))
    mean = x.mean(axis=0, dtype="float64")
    scale = 1.0 / np.maximum(x.std(axis=0, dtype="float64"), 1e-12)
    x -= mean.astype("float32")
    x *= scale.astype("float32")
    penalty = l2 * np.repeat(scale ** 2, k)  # l2 ||kernel||^2 with kernel = scale * v

    signs = -np.ones((len(x), k), "float32")
    signs[rows, y] = 1.0

    def objective(theta):
        logits = x @ theta[:d * k].reshape(d, k).astype("float32") + theta[d * k:].astype("float32")
        if loss_name == "squared_hinge":
            slack = np.maximum(1.0 - signs * logits, 0.0)
            loss = 0.5 * np.sum(np.square(slack, dtype="float64")) / len(x)
            residual = -signs * slack / len(x)
        else:
            logits -= logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(logits).sum(axis=1, dtype="float64"))
            loss = np.mean(log_norm - logits[rows, y])
            residual = np.exp(logits - log_norm[:, None].astype("float32"))
            residual[rows, y] -= 1.0
            residual /= len(x)
        loss += 0.5 * np.dot(penalty * theta[:d * k], theta[:d * k])
        grad = np.concatenate([(x.T @ residual).ravel() + penalty * theta[:d * k], residual.sum(axis=0)])
        return loss, grad.astype("float64")

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
    report = {"l2": l2, "loss": float(result.fun), "loss_function": loss_name, "iterations": int(result.nit), "converged": bool(result.success)}
    return kernel.astype("float32"), bias.astype("float32"), report


def accuracy(features, labels, kernel, bias):
    """The fraction of `labels` that argmax(features @ kernel + bias) gets right."""
    return float(np.mean(np.argmax(np.asarray(features, "float32") @ kernel + bias, axis=1) == labels))


@keras.saving.register_keras_serializable(package="kernelzoo")
def one_vs_rest_squared_hinge(y_true, y_pred):
    """Keras loss on logits and integer labels: the sum over the classes of 1/2 max(0, 1 - y_c f_c)^2, y_c = +1 for
    the label and -1 for the others (the module docstring's "squared_hinge"; Keras averages it over the batch)."""
    logits = ops.cast(y_pred, "float32")
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    signs = 2.0 * ops.one_hot(labels, logits.shape[-1]) - 1.0
    return 0.5 * ops.sum(ops.square(ops.relu(1.0 - signs * logits)), axis=-1)
