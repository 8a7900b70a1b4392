"""The SimNets MEX layer: soft max / mean / min pooling with offsets (ReLU, max and average pooling as special
cases)."""
import keras
import numpy as np
from keras import ops

from kernelzoo.layers.custom_op_layer import CustomOpLayer
from kernelzoo.ops import api
from kernelzoo.ops.checks import (boolean, known_channels, normalize_padding, normalize_tuple, positive_int,
                                  real_or_reals, window_fits)
from kernelzoo.ops.shapes import output_size

_OFFSET_MODES = ("shared", "unshared")


@keras.saving.register_keras_serializable(package="kernelzoo")
class Mex(CustomOpLayer):
    """out = MEX_xi{inp(s) + b[region, instance, s] for s in block, c[instance]} (paper 000 Eq. 1).

    Blocks are pool_size spatially x channel_block channels; each block yields
    `num_instances` outputs. xi -> +inf is max pooling (ReLU with a 1x1 block and
    c = 0), xi = 0 average pooling, xi -> -inf min pooling.

    Args:
      num_instances: outputs per block (e.g. one per class).
      pool_size, strides, padding: as MaxPool2D (strides default to pool_size).
      channel_block: channels per block; None = all channels.
      xi: initial (or fixed) xi, a float or one per instance; any real, 0 and +-inf included.
      learn_xi: make xi a trainable per-instance variable.
      offsets: None, "shared" (one set for all positions), "unshared" (one per output position),
        or (R_h, R_w): one set per region of a R_h x R_w grid over the output positions.
      offsets_initializer, offsets_regularizer, offsets_constraint: Keras names or objects.
      use_c: add a trainable per-instance element c to every block (initialised by c_initializer).
      softmax_mode: log-sum-exp without the 1/n.
    Returns the dtype policy's compute dtype. Under a mixed-precision policy ("mixed_float16",
    "mixed_bfloat16") the activations stay float16 / bfloat16 (the custom op accumulates in
    float32) and the variables float32 (not autocast); otherwise it computes in float32.
    """

    OP = "mex"

    def __init__(self, num_instances=1, pool_size=(1, 1), channel_block=None, strides=None, padding="valid",
                 xi=1.0, learn_xi=True, offsets=None, offsets_initializer="zeros", offsets_regularizer=None,
                 offsets_constraint=None, use_c=False, c_initializer="zeros", softmax_mode=False, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_instances = positive_int(num_instances, "num_instances")
        self.pool_size = normalize_tuple(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else normalize_tuple(strides, "strides")
        self.padding = normalize_padding(padding)
        self.channel_block = None if channel_block is None else positive_int(channel_block, "channel_block")
        self.softmax_mode = boolean(softmax_mode, "softmax_mode")  # before the xi check that reads it
        k = self.num_instances
        self.xi = real_or_reals(xi, "xi", k, f"a real (inf allowed) or a list of {k} reals")
        if self.softmax_mode and np.any(np.asarray(self.xi) == 0):  # (a learned xi that reaches 0 gives inf too)
            raise ValueError("`xi`=0 with softmax_mode=True is log(n)/0 = inf; use xi != 0")
        self.learn_xi = boolean(learn_xi, "learn_xi")
        self.offsets = _check_offsets_mode(offsets)
        self.offsets_initializer = keras.initializers.get(offsets_initializer)
        self.offsets_regularizer = keras.regularizers.get(offsets_regularizer)
        self.offsets_constraint = keras.constraints.get(offsets_constraint)
        self.use_c = boolean(use_c, "use_c")
        self.c_initializer = keras.initializers.get(c_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        _, height, width, _ = input_shape
        channels = known_channels(input_shape, "Mex")
        window_fits(input_shape[1:3], self.pool_size, self.padding, "pool_size")
        if height is None or width is None:  # the op's blocks and offset regions are laid out on a known grid
            raise ValueError(f"Mex needs a static spatial input size, got {tuple(input_shape)}: give keras.Input "
                             "a fixed height and width")
        block = channels if self.channel_block is None else self.channel_block
        if channels % block:
            raise ValueError(f"`channel_block`={block} must divide the number of input channels ({channels})")
        k = self.num_instances
        self.xi_variable = None
        if self.learn_xi:
            initial = np.broadcast_to(np.asarray(self.xi, "float32"), (k,))
            self.xi_variable = self.add_weight(name="xi", shape=(k,), initializer=keras.initializers.Constant(initial))
        self.offsets_variable = None
        if self.offsets is not None:
            regions = self._offset_regions(height, width)
            self.offsets_variable = self.add_weight(
                name="offsets", shape=regions + (k,) + self.pool_size + (block,),
                initializer=self.offsets_initializer, regularizer=self.offsets_regularizer,
                constraint=self.offsets_constraint)
        self.c = self.add_weight(name="c", shape=(k,), initializer=self.c_initializer) if self.use_c else None
        axes = {-1: channels}
        if self.offsets == "unshared":  # one offset per output position: of this input size only
            axes.update({1: height, 2: width})
        self.input_spec = keras.layers.InputSpec(ndim=4, axes=axes)

    def _offset_regions(self, height, width):
        if self.offsets == "shared":
            return (1, 1)
        out_h, out_w = self.compute_output_shape((None, height, width, None))[1:3]
        if out_h is None or out_w is None:
            raise ValueError(f"offsets={self.offsets!r} needs static spatial input dimensions, "
                             f"got ({height}, {width})")
        regions = (out_h, out_w) if self.offsets == "unshared" else self.offsets
        if not (1 <= regions[0] <= out_h and 1 <= regions[1] <= out_w):
            raise ValueError(f"`offsets` region grid {regions} must lie between (1, 1) and the output size "
                             f"({out_h}, {out_w})")
        return tuple(regions)

    def call(self, inputs):
        xi = self.xi_variable if self.learn_xi else self.xi
        out = api.mex(ops.cast(inputs, self.compute_dtype), xi, num_instances=self.num_instances,
                      pool_size=self.pool_size, channel_block=self.channel_block, strides=self.strides,
                      padding=self.padding, offsets=self.offsets_variable, c=self.c, softmax_mode=self.softmax_mode)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        blocks = 1 if self.channel_block is None or channels is None else channels // self.channel_block
        out_channels = None if channels is None else blocks * self.num_instances
        return (batch,
                output_size(height, self.pool_size[0], self.strides[0], self.padding),
                output_size(width, self.pool_size[1], self.strides[1], self.padding),
                out_channels)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_instances": self.num_instances,
            "pool_size": self.pool_size,
            "channel_block": self.channel_block,
            "strides": self.strides,
            "padding": self.padding,
            "xi": self.xi,
            "learn_xi": self.learn_xi,
            "offsets": self.offsets,
            "offsets_initializer": keras.initializers.serialize(self.offsets_initializer),
            "offsets_regularizer": keras.regularizers.serialize(self.offsets_regularizer),
            "offsets_constraint": keras.constraints.serialize(self.offsets_constraint),
            "use_c": self.use_c,
            "c_initializer": keras.initializers.serialize(self.c_initializer),
            "softmax_mode": self.softmax_mode,
        })
        return config


def _check_offsets_mode(offsets):
    if offsets is None or offsets in _OFFSET_MODES:
        return offsets
    if isinstance(offsets, str):
        raise ValueError(f"`offsets` must be None, 'shared', 'unshared' or (R_h, R_w), got {offsets!r}")
    return normalize_tuple(offsets, "offsets")
