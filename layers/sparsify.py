"""The sparsifying activation of Muller 2018, Eq. 9."""
import keras
from keras import ops

from kernelzoo.ops.checks import float_in_range, int_in_range


@keras.saving.register_keras_serializable(package="kernelzoo")
class SparsifyingActivation(keras.layers.Layer):
    """f(x) = max(0, x - (eta * max(x) + (1 - eta) * mean(x))) along `axis`.

    eta interpolates the threshold between the mean (eta=0) and the maximum
    of the activations, approximating a percentile clip: with a 2D
    kernelNet layer below it, only a compact blob of units stays active
    (Sec. 3.3). eta must be below 1: at 1 every output is 0 (x - max(x) <= 0).
    """

    def __init__(self, eta=0.5, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.eta = float_in_range(eta, "eta", 0.0, 1.0, "[)")
        self.axis = int_in_range(axis, "axis")

    def build(self, input_shape):
        if not -len(input_shape) <= self.axis < len(input_shape):
            raise ValueError(f"`axis`={self.axis} is out of range for inputs of rank {len(input_shape)} "
                             f"(shape {tuple(input_shape)})")

    def call(self, inputs):
        top = ops.max(inputs, axis=self.axis, keepdims=True)
        mean = ops.mean(inputs, axis=self.axis, keepdims=True)
        return ops.relu(inputs - (self.eta * top + (1.0 - self.eta) * mean))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"eta": self.eta, "axis": self.axis})
        return config
