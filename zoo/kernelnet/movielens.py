"""The item-based kernelNet autoencoder for MovieLens (Muller 2018, Sec. 3.5).

h(r) = f(W g(V r + mu) + b) (Eq. 13): the input is one item's vector of
ratings by all users (0 where unrated), two sigmoid hidden layers of 500 and
a linear output of n_users units. Weight matrices are either
"sparse_fc": A * K_fs(u, v) with d=5 (Eq. 16/17, `SparseKernelDense`), or
"kernel": alpha_i tanh(u_i . v_j) with d=50 (Eq. 14/15, `KernelDense`).
The loss is 0.5 * sum over observed ratings of the squared error plus the
regularisers, written as tf.nn.l2_loss-style halves like the paper's code:
lambda_2 / 2 * sum A^2 (or W^2) and lambda_0 / 2 * sum K^2.
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.layers.kernel_dense import KernelDense, SparseKernelDense
from kernelzoo.ops.checks import check_choice, nonnegative_float, positive_float, positive_int, positive_ints

VARIANTS = ("sparse_fc", "kernel")
SPARSE_FC_DEFAULTS = {"lambda_0": 0.006, "location_stddev": 1e-3}  # what the "kernel" variant has no use for


def kernelnet_movielens(n_users=943, variant="sparse_fc", hidden=(500, 500), dim=None,
                        lambda_2=20.0, lambda_0=SPARSE_FC_DEFAULTS["lambda_0"],
                        location_stddev=SPARSE_FC_DEFAULTS["location_stddev"], seed=None):
    """Build (uncompiled) the autoencoder; dim defaults to 5 (sparse_fc) / 50 (kernel).

    lambda_0, location_stddev: sparse_fc only (its finite-support kernel values K and their locations; the
    "kernel" variant refuses other values than the defaults rather than ignore them); its locations start from
    a truncated normal with std location_stddev (1e-3 as in the paper's code: every K_fs starts at ~1).
    """
    n_users = positive_int(n_users, "n_users")
    variant = check_choice("variant", variant, VARIANTS)
    hidden = positive_ints(hidden, "hidden")
    lambda_2 = nonnegative_float(lambda_2, "lambda_2")
    lambda_0 = nonnegative_float(lambda_0, "lambda_0")
    location_stddev = positive_float(location_stddev, "location_stddev")
    if variant == "kernel":
        _check_sparse_fc_defaults(lambda_0=lambda_0, location_stddev=location_stddev)
    dim = dim if dim is not None else (5 if variant == "sparse_fc" else 50)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    l2 = keras.regularizers.L2(lambda_2 / 2.0) if lambda_2 else None
    l0 = keras.regularizers.L2(lambda_0 / 2.0) if lambda_0 else None
    inputs = keras.Input((n_users,), name="item_ratings")
    x = inputs
    sizes = hidden + (n_users,)
    for i, units in enumerate(sizes):
        last = i == len(sizes) - 1
        name = "output" if last else f"hidden_{i + 1}"
        activation = None if last else "sigmoid"
        if variant == "sparse_fc":
            init = {"class_name": "TruncatedNormal",
                    "config": {"mean": 0.0, "stddev": float(location_stddev)}}
            layer = SparseKernelDense(units, dim=dim, activation=activation,
                                      input_locations_initializer=init,
                                      output_locations_initializer=init,
                                      kernel_regularizer=l2, kernel_values_regularizer=l0,
                                      name=name)
        else:
            std = float(dim) ** -0.25  # u . v has unit variance at start
            init = {"class_name": "RandomNormal", "config": {"stddev": std}}
            layer = KernelDense(units, kernel_function="tanh", dim=dim, activation=activation,
                                input_locations_initializer=init,
                                output_locations_initializer=init,
                                effective_regularizer=l2, name=name)
        x = layer(x)
    return keras.Model(inputs, x, name=f"kernelnet_movielens_{variant}")


def _check_sparse_fc_defaults(**values):
    """ValueError naming a sparse_fc-only argument given another value than its default for the "kernel" variant
    (its W = alpha tanh(u . v) has no finite-support kernel values to penalise, its locations their own init)."""
    for name, value in values.items():
        if value != SPARSE_FC_DEFAULTS[name]:
            raise ValueError(f"`{name}`={value!r}: only the sparse_fc variant uses it (the kernel variant would "
                             f"ignore it); leave it at {SPARSE_FC_DEFAULTS[name]!r} or use variant='sparse_fc'")


def average_models(models, name="kernelnet_movielens_ensemble"):
    """One model whose output is the mean of `models`' outputs (an ensemble: same input, members renamed
    member_0, member_1, ...)."""
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"`models`: an ensemble needs at least 2, got {len(models)}")
    inputs = keras.Input(models[0].input_shape[1:], name="item_ratings")
    outputs = [keras.Model(m.input, m.output, name=f"member_{i}")(inputs) for i, m in enumerate(models)]
    return keras.Model(inputs, keras.layers.Average(name="mean")(outputs), name=name)


def masked_squared_error(ratings, mask, predictions):
    """0.5 * sum of squared errors over observed ratings only (mask == 1)."""
    return 0.5 * ops.sum(mask * ops.square(ratings - predictions))


def predict_ratings(model, train_matrix, batch_size=4096, verbose=0):
    """Predicted item x user ratings from the training matrix, clipped to the rating scale: [1, 5], or [0.5, 5]
    when the training ratings hold half stars (tfds movielens/20m, 25m, latest-small)."""
    train_matrix = np.asarray(train_matrix, np.float32)
    pred = model.predict(train_matrix, batch_size=batch_size, verbose=verbose)
    return np.clip(pred, 0.5 if np.any(train_matrix % 1) else 1.0, 5.0)


def rmse(predictions, data):
    """RMSE (Eq. 11) of an item x user prediction matrix on a ratings dict."""
    err = predictions[data["items"], data["users"]] - data["ratings"]
    return float(np.sqrt(np.mean(np.square(err))))


@keras.saving.register_keras_serializable(package="kernelzoo")
def masked_rating_loss(y_true, y_pred):
    """Keras loss: squared error over observed ratings (y_true != 0) only."""
    mask = ops.cast(ops.not_equal(y_true, 0.0), y_pred.dtype)
    return 0.5 * ops.sum(mask * ops.square(y_true - y_pred), axis=-1)
