"""The spatial contrasting criterion (paper 002, Sec. 4, Eq. 3-4, Algorithm 1) and its patch sampling.

For a batch of N feature maps f_1..f_N (N, H, W, C) taken at some layer of a ConvNet:

1. `sample_patch_positions`: two patches of `patch_size` cells per image, at top-left positions
   (r1, c1) and (r2, c2) in the (H - ph + 1) x (W - pw + 1) grid of valid positions. The row and
   the column of a patch are drawn independently and uniformly; the second patch is drawn
   uniformly among the positions other than the first (the two positives are never the same
   patch). The public reimplementation of the paper had two bugs here: its column offset reused
   the row offset (patches on the diagonal only), and an off-by-one made ~25 % of its positive
   pairs the same patch; tests/test_sc.py checks both.
2. `patch_features`: each patch's representation, the mean of its cells' features ("mean", the
   default: a patch-level feature as the paper's spatially pooled deep features) or all its cells
   concatenated ("flatten"). `spatial_contrasting_from_images` instead crops the patches from the
   images and runs the network on the crops (the paper samples the feature map as a cheap stand-in
   for that; the two differ where a cell's receptive field spans much of the image).
3. `spatial_contrasting_loss`: Dist(i, j) = ||f_i^(1) - f_j^(2)||^2 ("squared", the paper's Eq. 2-4)
   or its square root ("euclidean", the extracted text is not clear which one the paper ran), and

       L = -(1/N) sum_i log softmax_j(-Dist(i, j))[i]

   symmetrised (Eq. 3's average of both patches as the anchor): the same with Dist transposed,
   the two halves averaged.

The sampling draws from stateless random ops seeded by a (2,) integer seed, so a training step is
a function of (seed, step): SpatialContrastingTrainer seeds it with (its seed, the optimizer's
iteration count), which makes a resumed run draw what the uninterrupted one drew. Everything is
TensorFlow (the family's backend); the criterion is training-only and never part of a saved or
exported model. Features are cast to float32 (bfloat16 maps under mixed precision).
"""
import tensorflow as tf

from kernelzoo.layers.kernels import squared_distances
from kernelzoo.ops.checks import check_choice, normalize_tuple
from kernelzoo.zoo.augment import jitter_colors

DISTANCES = ("squared", "euclidean")
POOLINGS = ("mean", "flatten")
SAMPLINGS = ("features", "image")
_SQRT_FLOOR = 1e-12  # euclidean: sqrt(max(d^2, floor)) keeps the gradient finite at d = 0


def positions_grid(map_shape, patch_size):
    """(rows, cols) of the grid of valid top-left positions of `patch_size` patches in an (H, W) map.

    ValueError naming `patch_size` when the patch does not fit or leaves fewer than two positions
    (two distinct positives need two).
    """
    height, width = (int(d) for d in map_shape[:2])
    ph, pw = normalize_tuple(patch_size, "patch_size")
    if ph > height or pw > width:
        raise ValueError(f"`patch_size` {(ph, pw)} does not fit in the {height}x{width} map")
    rows, cols = height - ph + 1, width - pw + 1
    if rows * cols < 2:
        raise ValueError(f"`patch_size` {(ph, pw)} leaves {rows * cols} position in the {height}x{width} "
                         "map: spatial contrasting needs at least 2 (two distinct patches per image)")
    return rows, cols


def sample_patch_positions(batch_size, grid, seed):
    """Top-left positions of the two patches of each image: (first, second), int32 (N, 2) of (row, col).

    Args:
      batch_size: N (an int or a scalar tensor).
      grid: (rows, cols) of valid positions (`positions_grid`), rows * cols >= 2.
      seed: a (2,) integer tensor or pair for the stateless random ops.
    The first position is uniform over the grid (row and column independent); the second is
    uniform over the other rows * cols - 1 positions (index offset by 1 + U{0..P-2}, modulo P).
    """
    rows, cols = int(grid[0]), int(grid[1])
    count = rows * cols
    if count < 2:
        raise ValueError(f"`grid` {grid} has fewer than 2 positions")
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])
    first = tf.random.stateless_uniform(shape, seeds[0], minval=0, maxval=count, dtype=tf.int32)
    shift = tf.random.stateless_uniform(shape, seeds[1], minval=0, maxval=count - 1, dtype=tf.int32)
    second = tf.math.floormod(first + 1 + shift, count)
    as_row_col = lambda index: tf.stack([index // cols, index % cols], axis=-1)  # noqa: E731
    return as_row_col(first), as_row_col(second)


def crop_patches(maps, positions, patch_size):
    """One (ph, pw) patch per image: (N, ph, pw, C), in `maps`' dtype.

    Args:
      maps: (N, H, W, C) feature maps or images.
      positions: int (N, 2) top-left (row, col) of each image's patch.
      patch_size: int or (ph, pw), in cells (pixels for images).
    """
    ph, pw = normalize_tuple(patch_size, "patch_size")
    positions = tf.cast(positions, tf.int32)
    rows = positions[:, :1] + tf.range(ph)[None, :]                     # (N, ph)
    cols = positions[:, 1:] + tf.range(pw)[None, :]                     # (N, pw)
    patch = tf.gather(maps, rows, axis=1, batch_dims=1)                 # (N, ph, W, C)
    return tf.gather(patch, cols, axis=2, batch_dims=1)                 # (N, ph, pw, C)


def pool_map(maps, pooling="mean"):
    """A feature per map, float32: the mean of its cells (N, C) ("mean") or all of them (N, H * W * C)."""
    pooling = check_choice("pooling", pooling, POOLINGS)
    maps = tf.cast(maps, tf.float32)
    if pooling == "mean":
        return tf.reduce_mean(maps, axis=(1, 2))
    return tf.reshape(maps, [tf.shape(maps)[0], -1])


def patch_features(features, positions, patch_size, pooling="mean"):
    """The representation of one patch per image: (N, C) ("mean") or (N, ph * pw * C) ("flatten").

    Args:
      features: (N, H, W, C) feature maps.
      positions: int (N, 2) top-left (row, col) of each image's patch.
      patch_size: int or (ph, pw), in feature-map cells.
    """
    return pool_map(crop_patches(features, positions, patch_size), pooling)


def pairwise_distances(first, second, distance="squared"):
    """Dist(i, j) between first[i] and second[j], (N, N): squared or plain Euclidean.

    In (N, N) memory (`squared_distances`); the diagonal, the positive pairs' distances, exactly from the
    differences (the expansion there loses the digits of close pairs).
    """
    distance = check_choice("distance", distance, DISTANCES)
    first, second = tf.cast(first, tf.float32), tf.cast(second, tf.float32)
    squared = tf.linalg.set_diag(squared_distances(first, second), tf.reduce_sum(tf.square(first - second), axis=1))
    return squared if distance == "squared" else tf.sqrt(tf.maximum(squared, _SQRT_FLOOR))


def spatial_contrasting_loss(first, second, distance="squared", symmetric=True):
    """Eq. 4 on patch features: first[i], second[i] from image i (N, D each); a scalar.

    -(1/N) sum_i log softmax_j(-Dist(i, j))[i], averaged with the same on Dist^T when `symmetric`.
    N >= 2 (InvalidArgumentError otherwise; XLA drops the check): the other images are the negatives; with none
    the softmax has one term, the loss is 0 and trains nothing.
    """
    tf.debugging.assert_greater_equal(tf.shape(first)[0], 2, message=(
        "spatial contrasting needs at least 2 images per batch (the others are the negatives): batch_size >= 2, "
        "and no trailing batch of one image"))
    dist = pairwise_distances(first, second, distance)
    logits = -dist
    positive = tf.linalg.diag_part(logits)
    loss = tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - positive)
    if symmetric:
        loss = 0.5 * (loss + tf.reduce_mean(tf.reduce_logsumexp(logits, axis=0) - positive))
    return loss


def spatial_contrasting_from_maps(features, patch_size, seed, distance="squared", pooling="mean", symmetric=True):
    """Algorithm 1 on a batch of feature maps (N, H, W, C): sample two patches per image, the loss."""
    if features.shape.rank != 4:
        raise ValueError(f"`features` must be feature maps (N, H, W, C), got shape {features.shape}")
    grid = positions_grid(features.shape[1:3], patch_size)
    first, second = sample_patch_positions(tf.shape(features)[0], grid, seed)
    return spatial_contrasting_loss(patch_features(features, first, patch_size, pooling),
                                    patch_features(features, second, patch_size, pooling), distance, symmetric)


def spatial_contrasting_from_images(backbone, images, patch_size, seed, distance="squared", pooling="mean",
                                    symmetric=True, training=True, color_jitter=0.0):
    """The paper's patches taken from the IMAGES (Sec. 4.2; sampling the feature map is its shortcut):
    two `patch_size`-pixel crops per image at positions drawn as in Algorithm 1, both crops of the
    batch through `backbone` in one call (2N images: one set of batch statistics), each crop's map
    pooled whole into its feature, the loss. `backbone` must accept inputs of the crops' size.
    `color_jitter` s > 0: each crop's colours distorted on its own (`kernelzoo.zoo.augment.jitter_colors`,
    0-255 pixels), so that matching two crops by their colour statistics no longer works."""
    images, seed = tf.convert_to_tensor(images), tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if images.shape.rank != 4:
        raise ValueError(f"`images` must be a batch (N, H, W, C), got shape {images.shape}")
    grid = positions_grid(images.shape[1:3], patch_size)
    count = tf.shape(images)[0]
    first, second = sample_patch_positions(count, grid, seed)
    crops = tf.concat([crop_patches(images, first, patch_size), crop_patches(images, second, patch_size)], 0)
    if color_jitter:
        crops = jitter_colors(crops, color_jitter, tf.random.experimental.stateless_fold_in(seed, 1))
    features = pool_map(backbone(crops, training=training), pooling)
    return spatial_contrasting_loss(features[:count], features[count:], distance, symmetric)
