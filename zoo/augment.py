"""Augmentation layers shared by the zoo's families (SC, CKN, SimNet): inside the model, training only."""
import keras
import tensorflow as tf

from kernelzoo.ops.checks import boolean, check_choice, nonnegative_int

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
        if self.fill == "reflect" and self.shift >= min(input_shape[1], input_shape[2]):
            raise ValueError(f"`shift`={self.shift} must be smaller than the image ({input_shape[1]}x"
                             f"{input_shape[2]}) for fill='reflect'")
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
