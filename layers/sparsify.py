"""The sparsifying activation of Muller 2018, Eq. 9."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kernelzoo")
class SparsifyingActivation(keras.layers.Layer):
    """f(x) = max(0, x - (eta * max(x) + (1 - eta) * mean(x))) along `axis`.

    eta interpolates the threshold between the mean (eta=0) and the maximum
    (eta=1) of the activations, approximating a percentile clip: with a 2D
    kernelNet layer below it, only a compact blob of units stays active
    (Sec. 3.3).
    """

    def __init__(self, eta=0.5, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int, got {axis!r}")
        self.eta = float(eta)
        self.axis = axis

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
