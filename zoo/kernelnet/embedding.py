"""The extensible 2D embedding network of Muller 2018, Sec. 3.3 (Fig. 5/6).

A fully-connected network with one 2D RBF kernelNet layer in the middle: its
units sit fixed on a square grid in [0, 1]^2, its inputs' locations are
learned, and the sparsifying activation of Eq. 9 keeps a compact blob of
units active. The center of mass of that blob (Eq. 10) is the embedding.
The paper's layout is 784-2000-2000-2500-K1600-2000-2000-(10 | 784); the
default here is the smaller documented variant 784-256-256-256-K400-256-256-
(10 | 784), which trains in minutes on a CPU. The network takes raw 0-255
pixels (a saved Rescaling layer divides them by 255); the autoencoder
reconstructs them in [0, 1] (`pixel_crossentropy` compares with pixels / 255)
and centres its kernel layer (`center`), without which its embedding collapses;
`spread` and `common_share` measure that collapse.
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.layers.kernel_dense import KernelDense
from kernelzoo.layers.kernels import Grid2D, squared_distances
from kernelzoo.layers.sparsify import SparsifyingActivation
from kernelzoo.ops.checks import boolean, check_choice, int_in_range, positive_ints

OBJECTIVES = ("classifier", "autoencoder")
KERNEL_LAYER, SPARSIFY_LAYER, CENTER_LAYER = "kernel_embedding", "sparsify", "center"


def kernelnet_embedding(objective="classifier", encoder=(256, 256, 256), grid_side=20,
                        decoder=(256, 256), gamma=100.0, eta=0.5, image_size=28,
                        num_classes=10, center=None, seed=None):
    """Build the network on (image_size, image_size) raw pixels (0-255).

    classifier: softmax over num_classes; autoencoder: per-pixel sigmoid
    output in [0, 1] (trained with `pixel_crossentropy`), reshaped to the image.
    center: zero-mean kernel-layer activations over the data (its input features batch-normalised
    without offset, no bias), so that no landscape common to all images outweighs each image's
    own (without it the autoencoder's embedding collapses to one point: the card's diagnosis,
    `common_share`); None: on for the autoencoder, off for the classifier (its shipped weights).
    """
    objective = check_choice("objective", objective, OBJECTIVES)
    center = objective == "autoencoder" if center is None else boolean(center, "center")
    encoder = positive_ints(encoder, "encoder", allow_empty=True)
    decoder = positive_ints(decoder, "decoder", allow_empty=True)
    grid_side = int_in_range(grid_side, "grid_side", 2)
    image_size = int_in_range(image_size, "image_size", 1)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = keras.layers.Flatten(name="pixels")(x)
    for i, units in enumerate(encoder):
        x = keras.layers.Dense(units, activation="relu", name=f"encoder_{i + 1}")(x)
    if center:
        x = keras.layers.BatchNormalization(center=False, name=CENTER_LAYER)(x)
    x = KernelDense(
        grid_side * grid_side, kernel_function="rbf", dim=2, gamma=gamma,
        input_locations_initializer={"class_name": "RandomUniform",
                                     "config": {"minval": 0.0, "maxval": 1.0}},
        output_locations_initializer=Grid2D(grid_side, grid_side),
        output_locations_trainable=False, use_bias=not center, name=KERNEL_LAYER)(x)
    x = SparsifyingActivation(eta, name=SPARSIFY_LAYER)(x)
    for i, units in enumerate(decoder):
        x = keras.layers.Dense(units, activation="relu", name=f"decoder_{i + 1}")(x)
    if objective == "classifier":
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)
    else:
        x = keras.layers.Dense(image_size * image_size, activation="sigmoid", name="pixels_out")(x)
        outputs = keras.layers.Reshape((image_size, image_size), name="image_out")(x)
    return keras.Model(inputs, outputs, name=f"kernelnet_embedding_{objective}")


def embed(model, images, batch_size=1000):
    """Center of mass (Eq. 10) of the sparsified kernel-layer activations: (N, 2)."""
    probe = keras.Model(model.input, model.get_layer(SPARSIFY_LAYER).output)
    acts = probe.predict(images, batch_size=batch_size, verbose=0)
    grid = keras.ops.convert_to_numpy(model.get_layer(KERNEL_LAYER).output_locations)
    mass = np.maximum(acts.sum(axis=1, keepdims=True), 1e-12)
    return acts @ grid / mass


def spread(points, labels):
    """Non-collapse figures of (N, 2) embeddings of labelled images.

    "spread": the standard deviation of the points per axis; "between": the RMS distance of
    the class means to their mean; "separation": between over the RMS distance of the points
    to their class mean. On the [0, 1]^2 grid a collapsed embedding has between far below
    one grid spacing; the shipped autoencoder's test digits have about 2 (0.096, spacing 1/19).
    """
    points, labels = np.asarray(points, "float64"), np.asarray(labels)
    classes = np.unique(labels)
    if len(points) != len(labels) or len(classes) < 2:
        raise ValueError(f"labels must give one label per point, of 2 or more classes; got {len(labels)} labels "
                         f"of {len(classes)} classes for {len(points)} points")
    means = np.stack([points[labels == c].mean(axis=0) for c in classes])
    between = np.sqrt(np.mean(np.sum((means - means.mean(axis=0)) ** 2, axis=1)))
    within = np.sqrt(np.mean(np.sum((points - means[np.searchsorted(classes, labels)]) ** 2, axis=1)))
    return {"spread": float(np.sqrt(np.mean(points.var(axis=0)))), "between": float(between),
            "separation": float(between / max(within, 1e-12))}


def common_share(model, images, batch_size=1000):
    """Share of the kernel-layer activations' variation over the grid common to all `images`.

    var_j(mean_n y_nj) / mean_n var_j(y_nj) for the activations y (N, units) before Eq. 9: near 1,
    every image's landscape is the same one plus a small part of its own, so its peak, hence the
    embedding, hardly moves between images (the collapse); near 0, each image has its own.
    NaN when no image's activations vary over the grid: there is no variation to share.
    """
    probe = keras.Model(model.input, model.get_layer(KERNEL_LAYER).output)
    acts = probe.predict(images, batch_size=batch_size, verbose=0).astype("float64")
    variation = acts.var(axis=1).mean()
    return float(acts.mean(axis=0).var() / variation) if variation > 0 else float("nan")


def latent_walk(model, centers, width=None):
    """Decode artificial Gaussian bumps centred at `centers` (K, 2) (Fig. 6).

    The bump exp(-gamma ||v - c||^2) over the grid units (gamma of the kernel
    layer unless `width` is given as a gamma) is sparsified with Eq. 9 and
    fed to the layers after the kernel layer; returns their outputs.
    """
    kernel_layer = model.get_layer(KERNEL_LAYER)
    gamma = kernel_layer.gamma if width is None else float(width)
    centers = np.asarray(centers, "float32").reshape(-1, 2)
    bumps = ops.exp(-gamma * squared_distances(centers, kernel_layer.output_locations))
    x = model.get_layer(SPARSIFY_LAYER)(bumps)
    after = model.layers[[layer.name for layer in model.layers].index(SPARSIFY_LAYER) + 1:]
    for layer in after:
        x = layer(x)
    return keras.ops.convert_to_numpy(x)


@keras.saving.register_keras_serializable(package="kernelzoo")
def pixel_crossentropy(pixels, reconstruction):
    """Per-pixel binary cross-entropy of a [0, 1] reconstruction against raw 0-255 pixels."""
    return ops.mean(keras.losses.binary_crossentropy(_target(pixels, reconstruction), reconstruction), axis=-1)


@keras.saving.register_keras_serializable(package="kernelzoo")
def pixel_squared_error(pixels, reconstruction):
    """Per-image mean squared error of a [0, 1] reconstruction against raw 0-255 pixels / 255."""
    return ops.mean(ops.square(_target(pixels, reconstruction) - reconstruction), axis=(-2, -1))


def _target(pixels, reconstruction):
    """Raw 0-255 pixels as [0, 1] values of the reconstruction's dtype."""
    return ops.cast(pixels, reconstruction.dtype) / 255.0
