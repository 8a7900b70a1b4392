"""Constraints the SimNets layers need beyond keras.constraints."""
import keras
from keras import ops

from kernelzoo.ops.checks import finite_float


@keras.saving.register_keras_serializable(package="kernelzoo")
class MinValue(keras.constraints.Constraint):
    """Clips a weight to >= `min_value` after each update (keeps p > 0, say)."""

    def __init__(self, min_value):
        self.min_value = finite_float(min_value, "min_value")

    def __call__(self, w):
        return ops.maximum(w, ops.cast(self.min_value, w.dtype))

    def get_config(self):
        return {"min_value": self.min_value}
