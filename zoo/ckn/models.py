"""The CIFAR-10 convolutional kernel networks (Mairal 2016; reference CKN-Pytorch-image).

`ckn`: raw pixels -> ImageWhitening (or PerImageWhitening) -> [augmentation] -> CKNConv2D layers -> flatten ->
[centred, normalised features (per example: minus its mean, over its standard deviation)] -> linear classifier.
The unsupervised models of issue 14 set the anchors without labels and fit only the classifier on the normalised
features; the supervised CKN-5 learns anchors and classifier together on the flattened map itself, as the
reference's supervised networks (kernelzoo.zoo.ckn.recipe). keras.ops only (the optional augmentation: TensorFlow).
"""
import keras

from kernelzoo.layers import CKNConv2D
from kernelzoo.layers.ckn import KERNELS
from kernelzoo.ops.checks import (boolean, check_choice, image_shape, normalize_tuple, per_item, positive_float,
                                  positive_int, positive_ints)
from kernelzoo.zoo.augment import RandomShiftFlip
from kernelzoo.zoo.ckn.preprocessing import ImageWhitening, PerImageWhitening, whitening_patch_size

WHITENINGS = ("image", "patches")
_WHITENING_EPS = {"image": 1e-3, "patches": 0.1}
AUGMENT_SHIFT = 4  # the reference's RandomCrop(32, padding=4)


def ckn(filters=(64, 256), kernel_sizes=(3, 3), subsamplings=(2, 6), kernels="exp", sigmas=0.6, whitening="patches",
        whitening_eps=None, whitening_power=None, nystrom_shift=0.0, trainable_anchors=True, normalize_features=True,
        augment=False, num_classes=10, input_shape=(32, 32, 3), name=None):
    """A CKN classifier; `kernels` and `sigmas` are one value for every layer or one per layer.

    Args:
      filters, kernel_sizes, subsamplings: per CKN layer (anchors, patch size, pooling stride); the
        first patch size (an int >= 2) is the whitening's too: the first CKN layer reads k x k patches of the
        whitened image ("image"), or the whitened patches as channels with a 1x1 window ("patches").
      kernels: "exp" or "poly2" (see CKNConv2D); sigmas: the exp kernels' bandwidths.
      whitening: "image", the reference's (ImageWhitening: per-patch centring, the image's patches times
        their Gram matrix to the -`whitening_power`, image rebuilt; the first CKN layer reads its k x k
        patches), or "patches" (PerImageWhitening: whitened k x k patches as channels, read by a 1x1
        first CKN layer).
      whitening_eps: regularisation of the whitening (share of the mean eigenvalue; default 1e-3 for
        "image", 0.1 for "patches"); whitening_power: "image" only, 0.25 (reference, default) or 0.5 (ZCA).
      nystrom_shift: the CKN layers' factor V diag(1 / (sqrt(lambda) + c)) V^T (0: exact; reference 0.01).
      trainable_anchors: False builds the CKN layers frozen (unsupervised models: anchors set by k-means,
        the Nystrom factor a precomputed weight, so even an untrained model exports without eigendecomposition).
      normalize_features: True (unsupervised models): the flattened map centred and normalised per example
        (LayerNormalization "features"); False (the reference's supervised CKNs): the flattened map is "features".
      augment: the reference's --augmentation after the whitening, in training only (RandomShiftFlip
        "augment": shifts of up to 4 pixels with zeros filled in, i.e. 32x32 crops of the image padded by 4,
        and left-right mirroring).
    Layer names: "whitening", ["augment"], "ckn1".."cknL", "features" (the classifier's input), "logits".
    Arguments are checked here, before any layer is built, so that errors name them (not the layers' own).
    """
    filters = positive_ints(filters, "filters")
    depth = len(filters)
    kernel_sizes = per_item(kernel_sizes, depth, "kernel_sizes", "layer")
    kernel_sizes = [whitening_patch_size(kernel_sizes[0], "kernel_sizes")] + [normalize_tuple(size, "kernel_sizes")
                                                                               for size in kernel_sizes[1:]]
    subsamplings = positive_ints(per_item(subsamplings, depth, "subsamplings", "layer"), "subsamplings")
    kernels = [check_choice("kernels", kernel, KERNELS) for kernel in per_item(kernels, depth, "kernels", "layer")]
    sigmas = [positive_float(sigma, "sigmas") for sigma in per_item(sigmas, depth, "sigmas", "layer")]
    trainable_anchors = boolean(trainable_anchors, "trainable_anchors")
    num_classes = positive_int(num_classes, "num_classes")
    whitening = check_choice("whitening", whitening, WHITENINGS)
    eps = positive_float(_WHITENING_EPS[whitening] if whitening_eps is None else whitening_eps, "whitening_eps")
    if whitening == "patches" and whitening_power is not None:
        raise ValueError(f"`whitening_power` is for whitening='image' only (whitening='patches' is a ZCA), got "
                         f"{whitening_power!r}")
    power = ImageWhitening.check_power(0.25 if whitening_power is None else whitening_power, "whitening_power")
    inputs = keras.Input(image_shape(input_shape), name="image")
    if whitening == "image":
        x = ImageWhitening(kernel_sizes[0], power, eps, name="whitening")(inputs)
    else:
        x = PerImageWhitening(kernel_sizes[0], eps, name="whitening")(inputs)
        kernel_sizes = [1] + kernel_sizes[1:]  # layer 1 reads the whitened k x k patches as channels
    if boolean(augment, "augment"):
        x = RandomShiftFlip(AUGMENT_SHIFT, flip=True, fill="constant", dtype="float32", name="augment")(x)
    for index, layer in enumerate(zip(filters, kernel_sizes, subsamplings, kernels, sigmas), 1):
        x = CKNConv2D(*layer[:3], kernel_function=layer[3], sigma=layer[4], nystrom_shift=nystrom_shift,
                      trainable=trainable_anchors, name=f"ckn{index}")(x)
    if boolean(normalize_features, "normalize_features"):
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6, center=False, scale=False, name="features")(x)
    else:
        x = keras.layers.Flatten(name="features")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "ckn_" + "_".join(map(str, filters)))
