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
"""
import keras

from kernelzoo.ops.checks import (boolean, check_choice, image_shape, nonnegative_float, normalize_padding,
                                  positive_int, positive_ints, real)
from kernelzoo.zoo.layerwise.layers import CentroidConv2D, PerImageStandardization

HEADS = ("linear", "fc")
PROJECTIONS = ("trained", "random")
PREPROCESSING = ("standardize", "rescale")
CLUSTER_DTYPES = ("float32", "bfloat16")
FEATURES = "features"


def layerwise_cnn(clusters=(1377, 3534), embeddings=(155, 216), patch_sizes=3, strides=1, pool_sizes=2, bias=-0.14,
                  padding="same", normalize_patches=False, projection="trained", embedding_bias=True,
                  embedding_init_std=None, head="fc", fc_units=(384, 192), preprocessing="standardize",
                  cluster_dtype="float32", num_classes=10, input_shape=(32, 32, 3), name=None):
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
      cluster_dtype: "float32", or "bfloat16" to run the centroid convolutions (the bulk of the compute)
        in bfloat16 with float32 weights (Keras's mixed_bfloat16 policy): 2.4x faster for block 2 of
        layerwise_cifar10_fc on a CPU with AMX, 0.3 % mean relative error on its responses. A holdout
        run decides; ONNX export needs the float32 model (`with_cluster_dtype(model, "float32")`).
    """
    clusters = positive_ints(clusters, "clusters")
    blocks = len(clusters)
    embeddings = _per_block(embeddings, blocks, "embeddings", allow_none=True)
    embeddings = [None if n is None else positive_int(n, "embeddings") for n in embeddings]
    patch_sizes = [positive_int(s, "patch_sizes") for s in _per_block(patch_sizes, blocks, "patch_sizes")]
    strides = [positive_int(s, "strides") for s in _per_block(strides, blocks, "strides")]
    pool_sizes = [positive_int(p, "pool_sizes") for p in _per_block(pool_sizes, blocks, "pool_sizes")]
    biases = [real(b, "bias") for b in _per_block(bias, blocks, "bias")]
    padding = normalize_padding(padding)
    normalize_patches = boolean(normalize_patches, "normalize_patches")
    projection = check_choice("projection", projection, PROJECTIONS)
    embedding_bias = boolean(embedding_bias, "embedding_bias")
    head = check_choice("head", head, HEADS)
    fc_units = positive_ints(fc_units, "fc_units")
    preprocessing = check_choice("preprocessing", preprocessing, PREPROCESSING)
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
    for layer in head_layers(head, num_classes, fc_units):
        x = layer(x)
    return keras.Model(inputs, x, name=name or f"layerwise_{head}_" + "_".join(map(str, clusters)))


def with_cluster_dtype(model, cluster_dtype):
    """The same network (its weights copied) with its centroid convolutions in `cluster_dtype`."""
    check_choice("cluster_dtype", cluster_dtype, CLUSTER_DTYPES)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[cluster_dtype]
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CentroidConv2D"):
            layer["config"]["dtype"] = policy
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def head_layers(head, num_classes, fc_units=(384, 192)):
    """The classifier's layers: Dense "logits", or Dense "fc1", "fc2" (ReLU) then "logits"."""
    if head == "linear":
        return [keras.layers.Dense(num_classes, name="logits")]
    return ([keras.layers.Dense(units, activation="relu", name=f"fc{index}") for index, units in enumerate(fc_units, 1)]
            + [keras.layers.Dense(num_classes, name="logits")])


def _per_block(value, blocks, name, allow_none=False):
    """`value` repeated for every block, or its `blocks` items."""
    if isinstance(value, (int, float)) or (allow_none and value is None):
        return [value] * blocks
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or len(items) != blocks:
        raise ValueError(f"`{name}` must be one value or {blocks} values (one per block), got {value!r}")
    return items
