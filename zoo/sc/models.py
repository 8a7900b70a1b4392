"""The three networks of paper 002, Table 4 (after Lin et al. 2013 and Rasmus et al. 2015's ConvLarge/ConvSmall).

Every builder returns an uncompiled keras.Model that takes raw 0-255 pixels:

    augment (RandomShiftFlip: training only) -> normalize (per-channel mean / std, constants) -> the
    table's layers -> "logits" (float32, also under mixed precision)

and names the layer the spatial contrasting criterion reads "sc_features" (the table's "Spatial
contrasting criterion" row: after the second pooling + BN for CIFAR-10 and MNIST, after the third
block for STL-10). Batch normalization is `kernelzoo.layers.FusedBatchNormalization` (Keras's, trained
through TF's fused op). What the table leaves open and we chose: "same" padding up to the SC layer, then
the first 3x3 convolution "valid" (ConvLarge / ConvSmall); LeakyReLU slope 0.1 (Rasmus et al.); no
conv bias before a BN; the 3x3 max-pooling of the STL-10 network "same"-padded (96 -> 48 -> 24 -> 12).
The last layer of the CIFAR-10 and MNIST networks is the table's "1x1 conv 10 BN (Leaky)ReLU, global
average pooling": the model outputs logits (the softmax is in the loss).

`weight_decay` (default 0, as the paper states none) is Torch7's SGD weight decay (the gradient gains
weight_decay * w; the L2 term is part of the model, so it acts in the SC stage and the fine-tuning alike)
on the kernels only. A BN network's function does not change with the scale of a kernel that feeds a BN,
and without decay SGD lets such kernels grow, which shrinks their effective learning rate by the square of
the growth. The paper does not say what its runs used; the first author's Torch7 training code of the time
(eladhoffer/ConvNet-torch) decays every weight by 1e-4 by default.
"""
import keras
import numpy as np

from kernelzoo.layers import FusedBatchNormalization
from kernelzoo.layers.regularizers import sgd_weight_decay
from kernelzoo.ops.checks import (check_choice, image_shape, nonnegative_float, nonnegative_int, positive_int,
                                  positive_ints)
from kernelzoo.zoo.augment import RandomShiftFlip

SC_LAYER = "sc_features"
BN_MOMENTUM = 0.9  # Torch7's BatchNormalization momentum 0.1 (the paper's framework): Keras's 0.9
ACTIVATIONS = ("relu", "leaky_relu")
# Per-channel mean and standard deviation of the training images, in 0-255 pixel units.
CIFAR10_MEAN, CIFAR10_STD = (125.31, 122.95, 113.87), (62.99, 62.09, 66.70)
MNIST_MEAN, MNIST_STD = (33.32,), (78.57,)
STL10_MEAN, STL10_STD = (114.06, 112.23, 103.62), (66.40, 65.41, 68.98)


def _preprocessing(inputs, mean, std, shift, flip, fill, seed):
    channels = inputs.shape[-1]
    mean, std = np.asarray(mean, "float32"), np.asarray(std, "float32")
    if mean.shape != (channels,) or std.shape != (channels,) or np.any(std <= 0):
        raise ValueError(f"`mean` and `std` must hold {channels} values (one per channel, std > 0), got "
                         f"{mean.tolist()} and {std.tolist()}")
    x = RandomShiftFlip(shift, flip, fill, seed, dtype="float32", name="augment")(inputs)
    return keras.layers.Normalization(mean=mean, variance=np.square(std), name="normalize")(x)


def _activation(kind, slope, name):
    if kind == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=slope, name=name)
    return keras.layers.ReLU(name=name)


def _batch_norm(name):
    return FusedBatchNormalization(momentum=BN_MOMENTUM, name=name)


def _conv_bn(x, filters, size, name, activation, slope, decay, padding="same", batch_norm=True):
    x = keras.layers.Conv2D(filters, size, padding=padding, use_bias=not batch_norm, kernel_regularizer=decay,
                            name=name)(x)
    if batch_norm:
        x = _batch_norm(f"{name}_bn")(x)
    return _activation(activation, slope, f"{name}_act")(x)


def _common(input_shape, num_classes, activation, slope, shift, seed):
    return (image_shape(input_shape), positive_int(num_classes, "num_classes"),
            check_choice("activation", activation, ACTIVATIONS), nonnegative_float(slope, "negative_slope"),
            nonnegative_int(shift, "shift"), nonnegative_int(seed, "augment_seed"))


def sc_cifar10(widths=(96, 192), head_width=192, num_classes=10, input_shape=(32, 32, 3), activation="leaky_relu",
               negative_slope=0.1, mean=CIFAR10_MEAN, std=CIFAR10_STD, shift=2, flip=True, augment_seed=0,
               block_depth=3, weight_decay=0.0, name=None):
    """Table 4, CIFAR-10 column: 3x [3x3 conv w1 BN LeakyReLU], 2x2 max-pool, BN, 3x [3x3 conv w2 BN
    LeakyReLU], 2x2 max-pool, BN ("sc_features": 8x8x192), 3x3 conv head_width (valid) BN LeakyReLU,
    1x1 conv head_width BN LeakyReLU, 1x1 conv num_classes BN LeakyReLU, global average pooling.

    ~0.4 GMAC per 32x32 image forward at the paper's widths (96, 192). `block_depth`: the 3x3
    convolutions per block (3 in the paper; fewer for quick tests). `weight_decay`: SGD weight decay of
    the convolution kernels (see the module docstring).
    """
    shape, num_classes, activation, slope, shift, seed = _common(input_shape, num_classes, activation,
                                                                 negative_slope, shift, augment_seed)
    widths = positive_ints(widths, "widths")
    decay = sgd_weight_decay(weight_decay)
    if len(widths) != 2:
        raise ValueError(f"`widths` must be 2 positive ints (the two blocks), got {widths!r}")
    head_width = positive_int(head_width, "head_width")
    depth = positive_int(block_depth, "block_depth")
    inputs = keras.Input(shape, name="image")
    x = _preprocessing(inputs, mean, std, shift, flip, "reflect", seed)
    for block, width in enumerate(widths, 1):
        for index in range(1, depth + 1):
            x = _conv_bn(x, width, 3, f"conv{block}_{index}", activation, slope, decay)
        x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = _batch_norm(SC_LAYER if block == 2 else f"pool{block}_bn")(x)
    x = _conv_bn(x, head_width, 3, "conv3_1", activation, slope, decay, padding="valid")
    x = _conv_bn(x, head_width, 1, "conv3_2", activation, slope, decay)
    x = _conv_bn(x, num_classes, 1, "conv3_3", activation, slope, decay)
    outputs = keras.layers.GlobalAveragePooling2D(dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "sc_cifar10")


def sc_mnist(widths=(32, 64, 128), num_classes=10, input_shape=(28, 28, 1), activation="relu", negative_slope=0.1,
             mean=MNIST_MEAN, std=MNIST_STD, shift=2, flip=False, augment_seed=0, weight_decay=0.0, name=None):
    """Table 4, MNIST column: 5x5 conv w1 ReLU, 2x2 max-pool, BN, 2x [3x3 conv w2 BN ReLU], 2x2 max-pool,
    BN ("sc_features": 7x7x64), 3x3 conv w3 (valid) BN ReLU, 1x1 conv num_classes BN ReLU, global
    average pooling. No flips (digits are not mirror-symmetric); shifts fill with zeros (background).
    `weight_decay`: SGD weight decay of the convolution kernels.
    """
    shape, num_classes, activation, slope, shift, seed = _common(input_shape, num_classes, activation,
                                                                 negative_slope, shift, augment_seed)
    widths = positive_ints(widths, "widths")
    decay = sgd_weight_decay(weight_decay)
    if len(widths) != 3:
        raise ValueError(f"`widths` must be 3 positive ints (5x5 conv, 3x3 convs, head), got {widths!r}")
    inputs = keras.Input(shape, name="image")
    x = _preprocessing(inputs, mean, std, shift, flip, "constant", seed)
    x = _conv_bn(x, widths[0], 5, "conv1_1", activation, slope, decay, batch_norm=False)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = _batch_norm("pool1_bn")(x)
    x = _conv_bn(x, widths[1], 3, "conv2_1", activation, slope, decay)
    x = _conv_bn(x, widths[1], 3, "conv2_2", activation, slope, decay)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = _batch_norm(SC_LAYER)(x)
    x = _conv_bn(x, widths[2], 3, "conv3_1", activation, slope, decay, padding="valid")
    x = _conv_bn(x, num_classes, 1, "conv3_2", activation, slope, decay)
    outputs = keras.layers.GlobalAveragePooling2D(dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "sc_mnist")


def sc_stl10(widths=(64, 160, 96, 192, 192, 192, 192, 192, 192), head=(256, 128), num_classes=10,
             input_shape=(96, 96, 3), activation="relu", negative_slope=0.1, dropout=0.5, mean=STL10_MEAN,
             std=STL10_STD, shift=4, flip=True, augment_seed=0, weight_decay=0.0, name=None):
    """Table 4, STL-10 column: [5x5 w1, 1x1 w2, 1x1 w3] BN ReLU, 3x3 max-pool stride 2, [5x5 w4, 1x1 w5,
    1x1 w6] BN ReLU, 3x3 max-pool stride 2, [3x3 w7, 1x1 w8, 1x1 w9] BN ReLU ("sc_features": the last
    activation, 24x24x192), 3x3 conv head[0] ReLU, 3x3 max-pool stride 2, dropout, 3x3 conv head[1]
    ReLU, dropout, fully connected num_classes. `weight_decay`: SGD weight decay of the convolution and
    fully connected kernels.
    """
    shape, num_classes, activation, slope, shift, seed = _common(input_shape, num_classes, activation,
                                                                 negative_slope, shift, augment_seed)
    widths = positive_ints(widths, "widths")
    decay = sgd_weight_decay(weight_decay)
    head = positive_ints(head, "head")
    if len(widths) != 9 or len(head) != 2:
        raise ValueError(f"`widths` must be 9 and `head` 2 positive ints, got {widths!r} and {head!r}")
    rate = nonnegative_float(dropout, "dropout")
    if rate >= 1:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
    inputs = keras.Input(shape, name="image")
    x = _preprocessing(inputs, mean, std, shift, flip, "reflect", seed)
    sizes = (5, 1, 1, 5, 1, 1, 3, 1, 1)
    for index, (width, size) in enumerate(zip(widths, sizes)):
        block, position = index // 3 + 1, index % 3 + 1
        x = _conv_bn(x, width, size, f"conv{block}_{position}", activation, slope, decay)
        if position == 3 and block < 3:
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{block}")(x)
    x = keras.layers.Activation("linear", name=SC_LAYER)(x)
    x = _conv_bn(x, head[0], 3, "conv4_1", activation, slope, decay, batch_norm=False)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool4")(x)
    x = keras.layers.Dropout(rate, name="dropout1")(x)
    x = _conv_bn(x, head[1], 3, "conv4_2", activation, slope, decay, batch_norm=False)
    x = keras.layers.Dropout(rate, name="dropout2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=decay, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "sc_stl10")


def rescale_batch_normalized_kernels(model, up_to=SC_LAYER):
    """Rescale, below layer `up_to`, the kernel of every convolution that feeds a BN (`_conv_bn`'s "NAME" ->
    "NAME_bn") to the expected norm of its Glorot-uniform initialisation; returns {name: factor}.

    The BN's moving statistics are rescaled with it, so no output changes (up to the BN's epsilon). SGD
    without weight decay lets such kernels grow (a BN output does not depend on their scale), and each
    step then turns them by less: after the spatial contrasting stage at lr 0.1 the fine-tuning at lr
    0.01 barely moves them. Rescaling gives the fine-tuning the step sizes of a fresh network.
    """
    names = [layer.name for layer in model.layers]
    if up_to not in names:
        raise ValueError(f"`up_to`={up_to!r} is not a layer of {model.name!r}")
    factors = {}
    for layer in model.layers[:names.index(up_to)]:
        if not isinstance(layer, keras.layers.Conv2D) or f"{layer.name}_bn" not in names:
            continue
        norm = model.get_layer(f"{layer.name}_bn")
        kernel = layer.kernel.numpy()
        receptive = int(np.prod(kernel.shape[:-2]))
        expected = np.sqrt(kernel.size * 2.0 / (receptive * (kernel.shape[-2] + kernel.shape[-1])))
        factor = float(expected / np.linalg.norm(kernel))
        layer.kernel.assign(kernel * factor)
        norm.moving_mean.assign(norm.moving_mean.numpy() * factor)
        norm.moving_variance.assign(norm.moving_variance.numpy() * factor ** 2)
        factors[layer.name] = factor
    return factors
