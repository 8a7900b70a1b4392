"""The extensible 2D embedding network of Muller 2018, Sec. 3.3 (Fig. 5/6).

A fully-connected network with one 2D RBF kernelNet layer in the middle: its
units sit fixed on a square grid in [0, 1]^2, its inputs' locations are
learned, and the sparsifying activation of Eq. 9 keeps a compact blob of
units active. The center of mass of that blob (Eq. 10) is the embedding.
The paper's layout is 784-2000-2000-2500-K1600-2000-2000-(10 | 784); the
default here is the smaller documented variant 784-256-256-256-K400-256-256-
(10 | 784), which trains in minutes on a CPU.
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.layers.kernel_dense import KernelDense
from kernelzoo.layers.kernels import Grid2D, squared_distances
from kernelzoo.layers.sparsify import SparsifyingActivation

OBJECTIVES = ("classifier", "autoencoder")
KERNEL_LAYER, SPARSIFY_LAYER = "kernel_embedding", "sparsify"


def kernelnet_embedding(objective="classifier", encoder=(256, 256, 256), grid_side=20,
                        decoder=(256, 256), gamma=100.0, eta=0.5, image_size=28,
                        num_classes=10, seed=None):
    """Build the network on (image_size, image_size) images in [0, 1].

    classifier: softmax over num_classes; autoencoder: per-pixel sigmoid
    output (trained with per-pixel cross-entropy), reshaped to the image.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    for name, sizes in (("encoder", encoder), ("decoder", decoder)):
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"{name} must be a sequence of positive ints, got {sizes!r}")
    if isinstance(grid_side, bool) or not isinstance(grid_side, int) or grid_side < 2:
        raise ValueError(f"grid_side must be an int >= 2, got {grid_side!r}")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size), name="image")
    x = keras.layers.Flatten(name="pixels")(inputs)
    for i, units in enumerate(encoder):
        x = keras.layers.Dense(units, activation="relu", name=f"encoder_{i + 1}")(x)
    x = KernelDense(
        grid_side * grid_side, kernel="rbf", dim=2, gamma=gamma,
        input_locations_initializer={"class_name": "RandomUniform",
                                     "config": {"minval": 0.0, "maxval": 1.0}},
        output_locations_initializer=Grid2D(grid_side, grid_side),
        output_locations_trainable=False, name=KERNEL_LAYER)(x)
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


def compile_embedding(model, learning_rate=1e-3):
    """Compile with the objective's loss (categorical / per-pixel cross-entropy)."""
    if model.name.endswith("autoencoder"):
        model.compile(keras.optimizers.Adam(learning_rate), "binary_crossentropy")
    else:
        model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return model


def fit_embedding(model, images, labels, epochs=5, batch_size=128, learning_rate=1e-3,
                  callbacks=None):
    """Train on images in [0, 1] (labels unused by the autoencoder)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    compile_embedding(model, learning_rate)
    target = images if model.name.endswith("autoencoder") else labels
    model.fit(images, target, batch_size=batch_size, epochs=epochs, verbose=2,
              callbacks=callbacks)
    return model
