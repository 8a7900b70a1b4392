"""The steps of the layerwise algorithm (paper 003 Algorithm 1, Sec. 5.1 and Sec. 6) on a `layerwise_cnn`.

Per block i, on the output of the blocks before it:
1. `cluster_block`: sample N patches of the block's input uniformly over images and positions (at the
   block's stride: the aligned patches of the analysis when the stride is the patch size), run
   k-means++ then Lloyd w.r.t. the cosine distance into k_i clusters (spherical k-means,
   kernelzoo.zoo.ckn.kmeans), and make the centroids the kernel of the block's CentroidConv2D
   (convolution + ReLU with the fixed bias b).
2. `block_trainer`: the two-layer subnet on top, the block's Conv1x1 (k_i -> n_i) and a temporary
   linear head (a Dense on the flattened map), the only trainable layers; the recipe trains it with
   Adam on the cross-entropy and drops the head. Clustering+JL skips this step (random projection).
Finally `classifier_trainer`: the classifier (linear or three fully connected layers) alone, on the
features of the frozen blocks (`kernelzoo.zoo.frozen_features.cached_features`, computed once).

`assignments` and `cluster_purity` measure what the clustering recovered (the planted patch
identities of the synthetic model, kernelzoo.zoo.layerwise.generative).
"""
import time

import keras
import numpy as np
from keras import ops

from kernelzoo.layers.weights import set_weights
from kernelzoo.ops.checks import positive_int
from kernelzoo.zoo.ckn.kmeans import spherical_kmeans
from kernelzoo.zoo.layerwise.models import FEATURE_STANDARDIZATION, FEATURES
from kernelzoo.ops.shapes import output_size, pad_amounts


def block_count(model):
    """The number of blocks of a layerwise_cnn (layers "block{i}_cluster"); 0 for another network with a
    "features" layer whose layers below it are all frozen (CNN(Random): only its classifier trains)."""
    names = {layer.name for layer in model.layers}
    count = 0
    while f"block{count + 1}_cluster" in names:
        count += 1
    if not count and not frozen_below_features(model):
        raise ValueError(f"`model` {model.name!r} has no layer 'block1_cluster' (not a layerwise_cnn) and "
                         f"trainable layers below {FEATURES!r}")
    return count


def frozen_below_features(model):
    """True when `model` has a "features" layer and nothing below it has trainable weights."""
    names = [layer.name for layer in model.layers]
    if FEATURES not in names:
        return False
    return not any(layer.trainable_weights for layer in model.layers[:names.index(FEATURES)])


def block_layer(model, index, part):
    """Layer `part` ("cluster", "pool", "embed": a trained Conv1x1, "projection": a JL one) of block
    `index`, or None when the block has none."""
    name = f"block{index}_{part}"
    return next((layer for layer in model.layers if layer.name == name), None)


def trained_blocks(model):
    """The blocks whose Conv1x1 is trained (not a block without one, nor a JL random projection)."""
    return [index for index in range(1, block_count(model) + 1) if block_layer(model, index, "embed") is not None]


# ----------------------------------------------------------------------------- 1. clustering


def sample_patches(model, index, images, count, seed=0, batch_size=64):
    """`count` patches (rows in Conv2D patch order: kh, kw, C) of the input of block `index`'s centroid
    convolution, spread evenly over `images` (ceil(count / images) per image, at distinct positions
    drawn uniformly among the convolution's, with its strides and zero padding), then `count` of them."""
    layer = block_layer(model, index, "cluster")
    feed = keras.Model(model.input, layer.input)
    count, batch_size = positive_int(count, "count"), positive_int(batch_size, "batch_size")
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    rows = []
    for start in range(0, len(images), batch_size):
        maps = ops.convert_to_numpy(feed(np.asarray(images[start:start + batch_size], "float32"), training=False))
        n, height, width, _ = maps.shape
        out_h, out_w = output_size(height, kh, sh, layer.padding), output_size(width, kw, sw, layer.padding)
        maps = np.pad(maps, ((0, 0), pad_amounts(height, kh, sh, layer.padding),
                             pad_amounts(width, kw, sw, layer.padding), (0, 0)))
        per_image = min(-(-count // len(images)), out_h * out_w)
        picks = np.stack([rng.choice(out_h * out_w, per_image, replace=False) for _ in range(n)])
        image = np.repeat(np.arange(n), per_image)
        y, x = (picks.ravel() // out_w) * sh, (picks.ravel() % out_w) * sw
        rows.append(np.stack([maps[image, y + dy, x + dx] for dy in range(kh) for dx in range(kw)], axis=1)
                    .reshape(len(image), -1))
    rows = np.concatenate(rows)
    if len(rows) > count:
        rows = rows[np.sort(rng.choice(len(rows), count, replace=False))]
    return rows


def cluster_block(model, index, images, *, patches=50_000, candidates=None, max_iter=30, tol=0.0, seed=0,
                  verbose=False):
    """Spherical k-means (k-means++ seeds, Lloyd steps, cosine) of `patches` sampled patches of block
    `index`'s input into its `filters` clusters; the centroids become the block's kernel.

    candidates: D^2-sampled candidates per seed (greedy k-means++; default 2 + log k, scikit-learn's);
    tol: the Lloyd steps stop when the mean cosine gains less than this (relative; 0: until it stops
    rising, or `max_iter`): patch cosines are all close to 1 after a trained Conv1x1, so CKN's 1e-4
    stops Lloyd far too early there.
    Returns the k-means report with the patch count and the seconds each part took.
    """
    layer = block_layer(model, index, "cluster")
    started = time.time()
    rows = sample_patches(model, index, images, patches, seed=seed)
    sampled = time.time()
    if candidates is None:
        candidates = 2 + int(np.log(layer.filters))
    centroids, report = spherical_kmeans(rows, layer.filters, init="k-means++", candidates=candidates,
                                         max_iter=max_iter, tol=tol, seed=seed, verbose=verbose)
    layer.set_centroids(centroids)
    report = dict(report, patches=int(len(rows)), dims=int(rows.shape[1]), clusters=layer.filters,
                  candidates=candidates,
                  sampling_seconds=round(sampled - started, 1), kmeans_seconds=round(time.time() - sampled, 1))
    if verbose:
        print(f"block {index}: {layer.filters} clusters of {len(rows):,} patches ({rows.shape[1]} values), "
              f"{report['steps']} Lloyd steps, mean cosine {report['objective'][-1]:.4f}, "
              f"{report['sampling_seconds'] + report['kmeans_seconds']:.0f} s", flush=True)
    return report


def assignments(model, index, images, batch_size=256):
    """The cluster of every patch block `index`'s centroid convolution sees: (n, h, w) argmax of its
    responses (the k-means assignment when the responses are cosines)."""
    layer = block_layer(model, index, "cluster")
    feed = keras.Model(model.input, layer.input)
    out = []
    for start in range(0, len(images), batch_size):
        maps = feed(np.asarray(images[start:start + batch_size], "float32"), training=False)
        out.append(np.argmax(ops.convert_to_numpy(layer.responses(maps)), axis=-1))
    return np.concatenate(out)


def cluster_purity(truth, clusters):
    """(purity, inverse purity) of a clustering against planted labels (same-shaped int arrays).

    Purity: the share of items whose cluster's most frequent planted label is theirs (1: no cluster
    mixes labels); inverse purity: the same with the roles swapped (1: no label is split).
    """
    truth, clusters = np.asarray(truth).ravel(), np.asarray(clusters).ravel()
    if truth.shape != clusters.shape or not truth.size:
        raise ValueError(f"`truth` and `clusters` must have the same non-zero size, got {truth.size} and "
                         f"{clusters.size}")
    _, t = np.unique(truth, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((c.max() + 1, t.max() + 1), np.int64)
    np.add.at(table, (c, t), 1)
    return float(table.max(axis=1).sum() / truth.size), float(table.max(axis=0).sum() / truth.size)


# ----------------------------------------------------------------------------- 2. the two-layer subnet


def block_trainer(model, index, num_classes, seed=0):
    """images -> blocks 1..index -> flatten -> Dense "block{index}_head": the two-layer subnet of block
    `index` (its Conv1x1 and the temporary linear head are the only trainable layers; the head's
    initialisation depends on `seed` and the block only, so a resumed run draws the same).

    Sets `trainable` on the model's Conv1x1 layers (only block `index`'s); `release` undoes it.
    """
    embed = block_layer(model, index, "embed")
    if embed is None:
        raise ValueError(f"block {index} of {model.name!r} has no Conv1x1 to train")
    for other in trained_blocks(model):
        block_layer(model, other, "embed").trainable = other == index
    for layer in _head(model):
        layer.trainable = False
    x = keras.layers.Flatten(name=f"block{index}_flat")(embed.output)
    head = keras.layers.Dense(positive_int(num_classes, "num_classes"), name=f"block{index}_head",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=int(seed) * 1000 + index))
    return keras.Model(model.input, head(x), name=f"block{index}_trainer")


def classifier_trainer(model):
    """features -> the model's classifier layers (shared with `model`): trains the head alone."""
    for layer in _head(model):
        layer.trainable = True
    inputs = keras.Input(tuple(model.get_layer(FEATURES).output.shape[1:]), name="features")
    x = inputs
    for layer in _head(model):
        x = layer(x)
    return keras.Model(inputs, x, name="classifier_trainer")


def release(model):
    """Every trained Conv1x1 and the classifier trainable again (JL projections stay frozen)."""
    for index in trained_blocks(model):
        block_layer(model, index, "embed").trainable = True
    for layer in _head(model):
        layer.trainable = True


def _head(model):
    """The classifier layers after "features"."""
    layers = model.layers
    position = [layer.name for layer in layers].index(FEATURES)
    return layers[position + 1:]


def copy_weights(source, target):
    """Weights of every layer of `source` into the layer of `target` with the same name (skips layers
    that are the same object, and names `target` does not have)."""
    targets = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        other = targets.get(layer.name)
        if other is not None and other is not layer and layer.weights:
            set_weights(other, layer.get_weights())


def adapt_feature_standardization(model, features, chunk=4096):
    """Fit the model's "feature_standardization" layer, if it has one, to `features` (N, D; a memory map is
    streamed `chunk` rows at a time); returns the layer or None."""
    names = {layer.name for layer in model.layers}
    if FEATURE_STANDARDIZATION not in names:
        return None
    import tensorflow as tf
    layer = model.get_layer(FEATURE_STANDARDIZATION)
    rows = range(0, len(features), positive_int(chunk, "chunk"))
    layer.adapt(tf.data.Dataset.from_generator(
        lambda: (np.asarray(features[start:start + chunk], dtype="float32") for start in rows),
        output_signature=tf.TensorSpec((None, features.shape[1]), tf.float32)))
    return layer


# ----------------------------------------------------------------------------- 3. features for the classifier


class Batches(keras.utils.PyDataset):
    """Batches (float32 inputs, labels) of arrays (or memory maps) in a given order, for Keras fit/evaluate."""

    def __init__(self, x, y, order, batch_size, max_steps=None):
        super().__init__()
        self.x, self.y, self.order = x, np.asarray(y), np.asarray(order)
        self.batch_size = positive_int(batch_size, "batch_size")
        steps = -(-len(self.order) // self.batch_size)
        self.steps = steps if max_steps is None else min(steps, positive_int(max_steps, "max_steps"))

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        rows = np.sort(self.order[step * self.batch_size:(step + 1) * self.batch_size])
        return np.asarray(self.x[rows], dtype="float32"), self.y[rows]
