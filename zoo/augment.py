"""Augmentation layers shared by the zoo's families (SC, CKN, SimNet): inside the model, training only."""
import keras
import tensorflow as tf

from kernelzoo.ops.checks import boolean, check_choice, float_in_range, nonnegative_int

FILLS = ("reflect", "constant")


@keras.saving.register_keras_serializable(package="kernelzoo")
class RandomShiftFlip(keras.layers.Layer):
    """Mild augmentation inside the model (paper 002 Sec. 5): in training, each image is shifted by a
    whole number of pixels in [-shift, shift] along each axis (the border filled by reflection or with
    zeros) and, with `flip`, mirrored left-right with probability 1/2. The identity otherwise.

    The random draws are stateless, seeded by (`seed`, the layer's call count): the count is a weight
    of the layer, saved with the model, so a resumed run draws what the uninterrupted one drew
    (Keras's RandomTranslation / RandomFlip do not save their generator state). Under a tf.distribute
    strategy each replica folds its index into the seed, so that replicas draw apart.
    """

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)

    def __init__(self, shift=2, flip=True, fill="reflect", seed=0, **kwargs):
        super().__init__(**kwargs)
        self.shift = nonnegative_int(shift, "shift")
        self.flip = boolean(flip, "flip")
        self.fill = check_choice("fill", fill, FILLS)
        self.seed = nonnegative_int(seed, "seed")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self._check_size(input_shape)
        self.calls = self.add_weight(name="calls", shape=(), dtype="int64", initializer="zeros", trainable=False,
                                     aggregation="only_first_replica")

    def call(self, inputs, training=None):
        if not training or (self.shift == 0 and not self.flip):
            return inputs
        seed = _per_replica(tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.calls, tf.int64)]))
        seeds = tf.random.experimental.stateless_split(seed, 3)
        self.calls.assign_add(1)
        x = inputs
        batch = tf.shape(x)[0]
        if self.shift:
            self._check_size(x.shape)
            s = self.shift
            height, width = tf.shape(x)[1], tf.shape(x)[2]
            mode = "REFLECT" if self.fill == "reflect" else "CONSTANT"
            padded = tf.pad(x, [[0, 0], [s, s], [s, s], [0, 0]], mode=mode)
            offsets = tf.random.stateless_uniform([batch, 2], seeds[0], minval=0, maxval=2 * s + 1, dtype=tf.int32)
            rows = offsets[:, :1] + tf.range(height)[None, :]
            cols = offsets[:, 1:] + tf.range(width)[None, :]
            x = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
        if self.flip:
            mirror = tf.random.stateless_uniform([batch], seeds[1]) < 0.5
            x = tf.where(mirror[:, None, None, None], tf.reverse(x, axis=[2]), x)
        return x

    def _check_size(self, shape):
        """ValueError unless reflecting pads by `shift` fit an image of `shape` (N, H, W, C); a size unknown here
        (a model for any size) is checked when known, or by tf.pad when the step runs."""
        sizes = [size for size in shape[1:3] if size is not None]
        if self.fill == "reflect" and sizes and self.shift >= min(sizes):
            raise ValueError(f"`shift`={self.shift} must be smaller than the image ({shape[1]}x{shape[2]}) for "
                             "fill='reflect'")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"shift": self.shift, "flip": self.flip, "fill": self.fill, "seed": self.seed})
        return config


def _per_replica(seed):
    """`seed` on one device; folded with the replica's index when a step runs on several replicas, which
    would otherwise all draw the same shifts and flips for their parts of the batch."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return seed
    return tf.random.experimental.stateless_fold_in(seed, context.replica_id_in_sync_group)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in grey


def distort_colors(images, brightness, contrast, saturation):
    """RGB images (N, H, W, 3) times `brightness`, then their contrast around each image's mean grey and their
    saturation around each pixel's grey scaled by `contrast` and `saturation` (per-image factors, (N,))."""
    x = tf.cast(images, tf.float32)
    factor = lambda values: tf.reshape(tf.cast(values, tf.float32), [-1, 1, 1, 1])  # noqa: E731
    x = x * factor(brightness)
    mean = tf.reduce_mean(_grey(x), axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * factor(contrast) + mean
    return _grey(x) + (x - _grey(x)) * factor(saturation)


def jitter_colors(images, strength, seed, max_value=255.0):
    """Colour distortion drawn per image (SimCLR's, Chen et al. 2020, App. A, without its hue term), for
    contrastive pre-training on crops: with probability 0.8 `distort_colors` with factors each uniform in
    [1 - 0.8 s, 1 + 0.8 s]; then, with probability 0.2, the image in grey. RGB images (N, H, W, 3) in
    [0, `max_value`], returned clipped to it, float32. Stateless: `seed` is a (2,) integer seed.
    `strength` s in [0, 1.25] (the factors stay >= 0); 0 returns the images."""
    x = tf.cast(images, tf.float32)
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise ValueError(f"`images` must be RGB images (N, H, W, 3), got shape {x.shape}")
    strength = float_in_range(strength, "strength", 0.0, 1.25)
    if strength == 0:
        return x
    seeds = tf.random.experimental.stateless_split(tf.cast(tf.convert_to_tensor(seed), tf.int64), 5)
    count = tf.shape(x)[:1]
    draw = lambda index, low=0.0, high=1.0: tf.random.stateless_uniform(count, seeds[index], low, high)  # noqa: E731
    low, high = 1.0 - 0.8 * strength, 1.0 + 0.8 * strength
    distorted = distort_colors(x, draw(0, low, high), draw(1, low, high), draw(2, low, high))
    x = tf.clip_by_value(tf.where((draw(3) < 0.8)[:, None, None, None], distorted, x), 0.0, max_value)
    return tf.where((draw(4) < 0.2)[:, None, None, None], tf.broadcast_to(_grey(x), tf.shape(x)), x)


def _grey(images):
    return tf.reduce_sum(images * tf.constant(LUMA), axis=-1, keepdims=True)
