"""The network the layerwise algorithm trains (paper 003 Sec. 5.1, Sec. 6): a vanilla CNN.

`layerwise_cnn`: raw pixels -> preprocessing -> blocks of
    CentroidConv2D (k_i centroids, s x s, ReLU with the fixed bias b) -> max pooling -> Conv1x1 (k_i -> n_i)
-> flatten ("features") -> a linear classifier or three fully connected layers (the TensorFlow
CIFAR-10 tutorial's 384-192-classes head, ReLU between). Nothing is learned by the builder: the
recipe (kernelzoo.zoo.layerwise.recipe) sets every block's centroids by k-means and trains its Conv1x1
with a temporary linear head, block after block, then the classifier. With projection "random"
(Clustering+JL) each Conv1x1 is a fixed Johnson-Lindenstrauss random projection, N(0, 1/n_i)
entries, no bias. A block whose n_i is None has no Conv1x1 (Algorithm 1's last block: the
classifier reads the cluster indicators).

Layer names: "preprocess", "block{i}_cluster", "block{i}_pool", "block{i}_embed" (a trained Conv1x1) or
"block{i}_projection" (a JL one), "features", then "logits" (linear head) or "fc1", "fc2", "logits".

`tf_tutorial_cnn`: the CNN the paper compares with (Sec. 6, Fig. 3 "CNN" and "CNN(Random)"), the TensorFlow
CIFAR-10 tutorial's `inference` (tensorflow/models tutorials/image/cifar10/cifar10.py) as Keras layers:
raw pixels -> per-image standardisation -> "conv1" -> "pool1" -> "norm1" -> "conv2" -> "norm2" -> "pool2" ->
"features" -> "fc1", "fc2", "logits" (the tutorial's local3, local4, softmax_linear) or "logits" alone.
"""
import keras

from kernelzoo.layers.regularizers import sgd_weight_decay
from kernelzoo.layers.weights import set_weights
from kernelzoo.ops.checks import (boolean, check_choice, image_shape, nonnegative_float, normalize_padding, per_item,
                                  positive_int, positive_ints, real)
from kernelzoo.zoo.layerwise.layers import CentroidConv2D, LocalResponseNormalization, PerImageStandardization

HEADS = ("linear", "fc")
PROJECTIONS = ("trained", "random")
PREPROCESSING = ("standardize", "rescale")
CLUSTER_DTYPES = ("float32", "bfloat16")
FEATURES = "features"
FEATURE_STANDARDIZATION = "feature_standardization"
# The tutorial's norm1 / norm2: tf.nn.lrn(x, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75).
TUTORIAL_LRN = {"depth_radius": 4, "bias": 1.0, "alpha": 0.001 / 9.0, "beta": 0.75}


def layerwise_cnn(clusters=(1377, 3534), embeddings=(155, 216), patch_sizes=3, strides=1, pool_sizes=2, bias=-0.14,
                  padding="same", normalize_patches=False, projection="trained", embedding_bias=True,
                  embedding_init_std=None, head="fc", fc_units=(384, 192), preprocessing="standardize",
                  standardize_features=False, cluster_dtype="float32", num_classes=10, input_shape=(32, 32, 3),
                  name=None):
    """A layerwise-trained CNN (module docstring); the defaults are Appendix C's Ours+FC.

    Args:
      clusters: k_i, the centroids of each block.
      embeddings: n_i, the Conv1x1 outputs of each block (None for a block without Conv1x1).
      patch_sizes, strides, pool_sizes, bias: one value or one per block (pool size 1: no pooling).
        The paper's CIFAR network: 3 x 3 patches, stride 1, 2 x 2 max pooling (stride 2), one b.
      padding: of the centroid convolutions ("same" as the TensorFlow tutorial, or "valid").
      normalize_patches: the centroid responses are cosines (CentroidConv2D); False is the paper's CIFAR net.
      projection: "trained" (Conv1x1 trained per block) or "random" (Clustering+JL, frozen).
      embedding_bias: whether a trained Conv1x1 has a bias.
      embedding_init_std: None (Keras's Glorot uniform) or the std of a normal initialisation (the small
        initialisation of the analysis, Sec. 4.1).
      head: "linear" or "fc" (Dense fc_units with ReLU, then the classes).
      preprocessing: "standardize" (per image, TF's CIFAR-10 tutorial) or "rescale" (x / 255).
      standardize_features: a fixed per-feature standardisation ("feature_standardization", Keras
        `Normalization`, adapted by the recipe on the training images' features) before the head: the
        head's function class is unchanged (an affine map the first Dense could absorb), its optimisation
        is not (the raw centroid responses reach sd ~30). Ours, not the paper's; a holdout run decides.
      cluster_dtype: "float32", or "bfloat16" to run the centroid convolutions (the bulk of the compute)
        in bfloat16 with float32 weights (Keras's mixed_bfloat16 policy): 2.4x faster for block 2 of
        layerwise_cifar10_fc on a CPU with AMX, 0.3 % mean relative error on its responses. A holdout
        run decides; ONNX export needs the float32 model (`with_cluster_dtype(model, "float32")`).
    """
    clusters = positive_ints(clusters, "clusters")
    blocks = len(clusters)
    embeddings = per_item(embeddings, blocks, "embeddings", "block", allow_none=True)
    embeddings = [None if n is None else positive_int(n, "embeddings") for n in embeddings]
    patch_sizes = [positive_int(s, "patch_sizes") for s in per_item(patch_sizes, blocks, "patch_sizes", "block")]
    strides = [positive_int(s, "strides") for s in per_item(strides, blocks, "strides", "block")]
    pool_sizes = [positive_int(p, "pool_sizes") for p in per_item(pool_sizes, blocks, "pool_sizes", "block")]
    biases = [real(b, "bias") for b in per_item(bias, blocks, "bias", "block")]
    padding = normalize_padding(padding)
    normalize_patches = boolean(normalize_patches, "normalize_patches")
    projection = check_choice("projection", projection, PROJECTIONS)
    embedding_bias = boolean(embedding_bias, "embedding_bias")
    head = check_choice("head", head, HEADS)
    fc_units = positive_ints(fc_units, "fc_units")
    preprocessing = check_choice("preprocessing", preprocessing, PREPROCESSING)
    standardize_features = boolean(standardize_features, "standardize_features")
    cluster_policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[
        check_choice("cluster_dtype", cluster_dtype, CLUSTER_DTYPES)]
    num_classes = positive_int(num_classes, "num_classes")
    if embedding_init_std is not None:
        embedding_init_std = nonnegative_float(embedding_init_std, "embedding_init_std")

    inputs = keras.Input(image_shape(input_shape), name="image")
    if preprocessing == "standardize":
        x = PerImageStandardization(name="preprocess")(inputs)
    else:
        x = keras.layers.Rescaling(1.0 / 255.0, name="preprocess")(inputs)
    for index, (k, n, s, stride, pool, b) in enumerate(zip(clusters, embeddings, patch_sizes, strides, pool_sizes,
                                                           biases), 1):
        x = CentroidConv2D(k, s, strides=stride, padding=padding, bias=b, normalize_patches=normalize_patches,
                           dtype=cluster_policy, name=f"block{index}_cluster")(x)
        if pool > 1:
            x = keras.layers.MaxPooling2D(pool, name=f"block{index}_pool")(x)
        if n is None:
            continue
        if projection == "random":
            x = keras.layers.Conv2D(n, 1, use_bias=False, trainable=False, name=f"block{index}_projection",
                                    kernel_initializer=keras.initializers.RandomNormal(stddev=n ** -0.5))(x)
        else:
            initializer = ("glorot_uniform" if embedding_init_std is None
                           else keras.initializers.RandomNormal(stddev=embedding_init_std))
            x = keras.layers.Conv2D(n, 1, use_bias=embedding_bias, kernel_initializer=initializer,
                                    name=f"block{index}_embed")(x)
    x = keras.layers.Flatten(name=FEATURES)(x)
    if standardize_features:
        x = keras.layers.Normalization(axis=-1, name=FEATURE_STANDARDIZATION)(x)
    for layer in head_layers(head, num_classes, fc_units):
        x = layer(x)
    return keras.Model(inputs, x, name=name or f"layerwise_{head}_" + "_".join(map(str, clusters)))


def tf_tutorial_cnn(head="fc", train_conv=True, filters=(64, 64), kernel_size=5, fc_units=(384, 192),
                    weight_decay=0.004, num_classes=10, input_shape=(32, 32, 3), name=None):
    """The TensorFlow CIFAR-10 tutorial CNN (module docstring), paper 003's SGD baseline.

    conv1 (5 x 5, 64, ReLU) -> max pooling 3 x 3, stride 2, same -> LRN -> conv2 (5 x 5, 64, ReLU) -> LRN ->
    max pooling 3 x 3, stride 2, same -> flatten -> head; convolutions stride 1, same padding. Initialisation
    as the tutorial: truncated normal (cut at 2 std) kernels of std 0.05 (convolutions), 0.04 (fc1, fc2) and
    1 / fan-in (logits); biases 0 (conv1, logits) and 0.1 (conv2, fc1, fc2). No dropout or batch normalisation.

    Args:
      head: "fc" (fc_units Dense + ReLU with weight decay, then the classes: the paper's CNN+(FC+ReLU)3) or
        "linear" (one Dense from the features to the classes: the paper's CNN+Linear).
      train_conv: False freezes conv1 and conv2 at their random initialisation (the paper's CNN(Random):
        only the head trains).
      filters: the two convolutions' output channels (the tutorial: 64, 64).
      kernel_size: their square kernel side (the tutorial: 5).
      fc_units: the hidden Dense widths of the "fc" head (the tutorial's local3, local4: 384, 192).
      weight_decay: the tutorial's L2 weight decay wd on the hidden Dense kernels (wd * sum(w^2) / 2 added to
        the loss, TensorFlow's `wd * tf.nn.l2_loss(w)`); none on the other weights. 0 for none.
      num_classes, input_shape: the classes and the (H, W, C) of the raw images (32 x 32 whole CIFAR images;
        the tutorial crops 24 x 24).
    """
    head = check_choice("head", head, HEADS)
    train_conv = boolean(train_conv, "train_conv")
    filters = positive_ints(filters, "filters")
    if len(filters) != 2:
        raise ValueError(f"`filters` must be 2 positive ints (conv1, conv2), got {filters!r}")
    kernel_size = positive_int(kernel_size, "kernel_size")
    fc_units = positive_ints(fc_units, "fc_units")
    decay = sgd_weight_decay(weight_decay)
    num_classes = positive_int(num_classes, "num_classes")

    def normal(stddev):
        return keras.initializers.TruncatedNormal(stddev=stddev)

    inputs = keras.Input(image_shape(input_shape), name="image")
    x = PerImageStandardization(name="preprocess")(inputs)
    for index, bias in ((1, 0.0), (2, 0.1)):
        x = keras.layers.Conv2D(filters[index - 1], kernel_size, padding="same", activation="relu",
                                kernel_initializer=normal(5e-2), bias_initializer=keras.initializers.Constant(bias),
                                trainable=train_conv, name=f"conv{index}")(x)
        pool = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{index}")
        norm = LocalResponseNormalization(**TUTORIAL_LRN, name=f"norm{index}")
        for layer in (pool, norm) if index == 1 else (norm, pool):
            x = layer(x)
    x = keras.layers.Flatten(name=FEATURES)(x)
    for index, units in enumerate(fc_units if head == "fc" else (), 1):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=normal(0.04), kernel_regularizer=decay,
                               bias_initializer=keras.initializers.Constant(0.1), name=f"fc{index}")(x)
    x = keras.layers.Dense(num_classes, kernel_initializer=normal(1.0 / x.shape[-1]), name="logits")(x)
    default = f"tf_tutorial_cnn_{head}" + ("" if train_conv else "_random")
    return keras.Model(inputs, x, name=name or default)


def with_cluster_dtype(model, cluster_dtype):
    """The same network (its weights copied) with its centroid convolutions in `cluster_dtype`."""
    check_choice("cluster_dtype", cluster_dtype, CLUSTER_DTYPES)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[cluster_dtype]
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CentroidConv2D"):
            layer["config"]["dtype"] = policy
    copy = keras.Model.from_config(config)
    set_weights(copy, model.get_weights())
    return copy


def head_layers(head, num_classes, fc_units=(384, 192)):
    """The classifier's layers: Dense "logits", or Dense "fc1", "fc2" (ReLU) then "logits"."""
    if head == "linear":
        return [keras.layers.Dense(num_classes, name="logits")]
    return ([keras.layers.Dense(units, activation="relu", name=f"fc{index}") for index, units in enumerate(fc_units, 1)]
            + [keras.layers.Dense(num_classes, name="logits")])
