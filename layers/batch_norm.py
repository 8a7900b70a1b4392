"""Batch normalization whose TensorFlow training step is one fused op (Keras 3 dropped `fused=True`)."""
import keras
from keras import ops

from kernelzoo.ops.checks import float_in_range

# The least epsilon of cuDNN's batch normalization (CUDNN_BN_MIN_EPSILON, with TensorFlow's margin): TensorFlow's own
# fused wrappers silently raise a smaller one to it; this layer leaves a smaller one to Keras's path instead.
FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="kernelzoo")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that trains through TensorFlow's FusedBatchNormV3.

    Keras 3 normalises with separate moments and elementwise ops (and their gradients): on a CPU those
    passes over the activations cost more than the convolutions of a BN network in bfloat16. On the
    TensorFlow backend, in training, a 4-D channels-last input (axis -1) goes through one fused op (oneDNN
    on x86) forward and one backward instead; `kernelzoo bench sc --batch-norm keras,fused` times both.
    Every other case (inference, which export traces; other backends; masks, renorm, synchronized, other
    ranks, axes or dtypes; an epsilon below `FUSED_MIN_EPSILON`, cuDNN's least) is Keras's own path, so the layer
    always normalises with its own epsilon. Same weights, statistics and config as the Keras layer: the moving
    variance is updated with the biased batch variance, as Keras does. `momentum` must lie in [0, 1] (Keras does
    not check it).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.momentum = float_in_range(self.momentum, "momentum", 0.0, 1.0)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        offset = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=ops.cast(inputs, self.compute_dtype), scale=scale, offset=offset, mean=tf.zeros((0,)),
            variance=tf.zeros((0,)), epsilon=self.epsilon, is_training=True, data_format="NHWC")
        # The op returns the unbiased batch variance (n / (n - 1) times the one it normalised with).
        count = ops.cast(ops.prod(ops.shape(inputs)[:-1]), "float32")
        variance = variance * (count - 1.0) / ops.maximum(count, 1.0)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            # In float32, as Keras does: the statistics of a "bfloat16" or "float16" layer are low precision.
            updated = ops.cast(moving, "float32") * self.momentum + batch * (1.0 - self.momentum)
            moving.assign(ops.cast(updated, moving.dtype))
        return outputs

    def _fusable(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.compute_dtype in ("float32", "bfloat16", "float16") and self.epsilon >= FUSED_MIN_EPSILON)
