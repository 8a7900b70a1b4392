"""The base of the layers that run a kernelzoo operator (Similarity, Mex)."""
import keras

from kernelzoo.ops import api


class CustomOpLayer(keras.layers.Layer):
    """A layer whose operator `OP` ("similarity" or "mex") runs the custom kernels or the keras.ops composite, as
    `kernelzoo.ops.implementation` selects at each call.

    The custom kernels have no XLA versions, so `supports_jit` is False while the operator would run them. It is
    read when Keras resolves a model's `jit_compile` (at compile, or at the first fit under "auto"), so it follows
    the implementation in use then, not the one at construction.
    """

    OP = None

    @property
    def supports_jit(self):
        return api.selected_implementation(self.OP) != "custom"

    @supports_jit.setter
    def supports_jit(self, value):
        """keras.layers.Layer.__init__ sets True: ignored, the implementation in use decides."""
