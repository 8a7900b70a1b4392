"""The 2D-grid kernelNet image classifier of Muller 2018, Fig. 4 / Table 1.

The model takes raw 0-255 pixels (a saved Rescaling layer divides them by 255).
Pixels and hidden units live in [0, 1]^2. Each hidden layer is several 2D
grids of units in parallel (like the filters of a ConvNet layer); each grid
is one RBF `KernelDense` reading the whole layer below, with its own
per-input scales alpha. With `prior=True` the input locations are the pixel
positions (or the grid positions of the layer below) and the unit locations
a square grid, both fixed (Sec. 3.2); with `prior=False` all locations start
uniformly at random in [0, 1]^2 and are learned. A softmax layer is on top.
`dropout` (ours, not the paper's: a regulariser for long runs) drops hidden units after
each ReLU during training; 0 adds no layer (the shipped models). `weight_decay` is the L2 term the paper's
Adam runs were tuned with (Sec. 3.1: "learning rate and l2 regularization"), TensorFlow's
`weight_decay * tf.nn.l2_loss(w)` on the scales alpha and the softmax weights; 0 adds none (the shipped models).
`location_noise` (Sec. 3.2's "noise on a pixel's location"; a regulariser, 0 in the shipped models) moves every
input location by Gaussian noise of that standard deviation ([0, 1]^2 units) at each training step.
The grid counts and sizes are ours: the paper's supplement is not available.
"""
import keras
import numpy as np

from kernelzoo.layers.kernel_dense import KernelDense
from kernelzoo.layers.kernels import Grid2D
from kernelzoo.layers.regularizers import sgd_weight_decay
from kernelzoo.ops.checks import boolean, float_in_range, int_in_range, positive_float, positive_ints


def kernelnet_mnist(prior=True, grids=(16, 16), grid_sides=(14, 7), gammas=(100.0, 25.0),
                    image_size=28, num_classes=10, dropout=0.0, weight_decay=0.0, location_noise=0.0, seed=None):
    """Build the classifier on (image_size, image_size) raw pixels (0-255).

    Layer l has grids[l] parallel square grids of grid_sides[l]^2 units, RBF
    width gammas[l] (in the [0, 1]^2 coordinates), ReLU, then Dropout(dropout) when dropout > 0;
    `weight_decay` >= 0 is the L2 coefficient of the alphas and the softmax kernel; `location_noise` >= 0 the
    standard deviation of the training-time noise on the input locations.
    """
    prior = boolean(prior, "prior")
    grids, grid_sides = positive_ints(grids, "grids"), positive_ints(grid_sides, "grid_sides")
    gammas = _gammas(gammas)
    if not len(grids) == len(grid_sides) == len(gammas):
        raise ValueError(f"grids, grid_sides and gammas must have equal lengths, got "
                         f"{len(grids)}, {len(grid_sides)}, {len(gammas)}")
    image_size, num_classes = int_in_range(image_size, "image_size", 2), int_in_range(num_classes, "num_classes", 2)
    dropout = float_in_range(dropout, "dropout", 0.0, 1.0, "[)")
    decay = sgd_weight_decay(weight_decay)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = keras.layers.Flatten(name="pixels")(x)
    below = (1, image_size)  # (number of grids, side) of the layer below
    uniform = {"class_name": "RandomUniform", "config": {"minval": 0.0, "maxval": 1.0}}
    for l, (count, side, gamma) in enumerate(zip(grids, grid_sides, gammas)):
        branches = []
        for c in range(count):
            if prior:
                u_init = Grid2D(below[1], below[1], repeats=below[0])
                v_init = Grid2D(side, side)
            else:
                u_init = v_init = uniform
            branches.append(KernelDense(
                side * side, kernel_function="rbf", dim=2, gamma=gamma,
                input_locations_initializer=u_init, output_locations_initializer=v_init,
                input_locations_trainable=not prior, output_locations_trainable=not prior, alpha_regularizer=decay,
                location_noise=location_noise,
                name=f"kernel{l + 1}_grid{c + 1}")(x))
        x = branches[0] if count == 1 else keras.layers.Concatenate(name=f"grids{l + 1}")(branches)
        x = keras.layers.ReLU(name=f"relu{l + 1}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{l + 1}")(x)
        below = (count, side)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=decay, name="softmax")(x)
    name = "kernelnet_mnist_prior" if prior else "kernelnet_mnist_learned"
    return keras.Model(inputs, outputs, name=name)


def _gammas(gammas):
    """`gammas` as a tuple of positive floats (one RBF width per layer), else ValueError naming `gammas`."""
    if np.ndim(gammas) != 1:
        raise ValueError(f"`gammas` must be a sequence of positive numbers (one per layer), got {gammas!r}")
    return tuple(positive_float(gamma, "gammas") for gamma in gammas)
