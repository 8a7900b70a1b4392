"""The SimNets similarity layer: a Conv2D whose inner product is a weighted similarity."""
import keras
import numpy as np
from keras import ops

from kernelzoo.layers.constraints import MinValue
from kernelzoo.layers.custom_op_layer import CustomOpLayer
from kernelzoo.ops import api
from kernelzoo.ops.checks import (boolean, check_choice, known_channels, normalize_padding, normalize_tuple,
                                  positive_int, real_or_reals, window_fits)
from kernelzoo.ops.shapes import output_size

# Learned exponents are kept at or above this (p must stay > 0).
P_MIN = 0.05


@keras.saving.register_keras_serializable(package="kernelzoo")
class Similarity(CustomOpLayer):
    """out[i, j, l] = sum_d u[d, l] * phi(x_ij[d], z[d, l]) over kernel_size patches (paper 000 Sec. 2).

    With similarity="linear" and weighted=False this is Conv2D without bias; "l2"
    measures a weighted (Mahalanobis) distance to each template; "lp" learns or
    fixes the order p per template.

    Args:
      filters: number of templates n (output channels).
      kernel_size, strides, padding: as Conv2D (NHWC).
      similarity: "linear", "l1", "l2" or "lp".
      weighted: learn weights u >= 0 (kept non-negative by `weights_constraint`), else u = 1.
      p: the order for "lp": a finite float > 0 or a list of `filters` of them (with learn_p, at least 0.05).
      learn_p: make p a trainable per-template variable (kept >= 0.05).
      normalization_term: add the generalised-Gaussian log-normaliser (output = log-likelihood).
      ignore_nan: NaN inputs are marginalised out (and "same" padding counts as missing).
      templates_initializer, weights_initializer, *_regularizer, *_constraint: Keras names or objects.
    Returns the dtype policy's compute dtype. Under a mixed-precision policy ("mixed_float16",
    "mixed_bfloat16") the activations stay float16 / bfloat16 (the custom op accumulates in
    float32) and the variables float32 (not autocast); otherwise it computes in float32.
    """

    OP = "similarity"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", similarity="l2", weighted=True, p=None,
                 learn_p=False, normalization_term=False, ignore_nan=False,
                 templates_initializer="glorot_uniform", weights_initializer="ones",
                 templates_regularizer=None, weights_regularizer=None,
                 templates_constraint=None, weights_constraint="non_neg", **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = normalize_tuple(kernel_size, "kernel_size")
        self.strides = normalize_tuple(strides, "strides")
        self.padding = normalize_padding(padding)
        self.similarity = check_choice("similarity", similarity, api.SIMILARITIES)
        self.weighted = boolean(weighted, "weighted")
        self.learn_p = boolean(learn_p, "learn_p")
        self.p = _check_p(p, self.similarity, self.learn_p, self.filters)
        self.normalization_term = boolean(normalization_term, "normalization_term")
        if self.normalization_term and self.similarity == "linear":
            raise ValueError("`normalization_term` applies to the l1/l2/lp similarities, not 'linear'")
        self.ignore_nan = boolean(ignore_nan, "ignore_nan")
        self.templates_initializer = keras.initializers.get(templates_initializer)
        self.weights_initializer = keras.initializers.get(weights_initializer)
        self.templates_regularizer = keras.regularizers.get(templates_regularizer)
        self.weights_regularizer = keras.regularizers.get(weights_regularizer)
        self.templates_constraint = keras.constraints.get(templates_constraint)
        self.weights_constraint = keras.constraints.get(weights_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = known_channels(input_shape, "Similarity")
        window_fits(input_shape[1:3], self.kernel_size, self.padding, "kernel_size")
        shape = self.kernel_size + (channels, self.filters)
        self.templates = self.add_weight(name="templates", shape=shape, initializer=self.templates_initializer,
                                         regularizer=self.templates_regularizer,
                                         constraint=self.templates_constraint)
        self.template_weights = None
        if self.weighted:
            self.template_weights = self.add_weight(name="weights", shape=shape,
                                                    initializer=self.weights_initializer,
                                                    regularizer=self.weights_regularizer,
                                                    constraint=self.weights_constraint)
        self.p_variable = None
        if self.learn_p:
            initial = np.broadcast_to(np.asarray(self.p, "float32"), (self.filters,))
            self.p_variable = self.add_weight(name="p", shape=(self.filters,),
                                              initializer=keras.initializers.Constant(initial),
                                              constraint=MinValue(P_MIN))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def call(self, inputs):
        p = self.p_variable if self.learn_p else self.p
        out = api.similarity(ops.cast(inputs, self.compute_dtype), self.templates, self.template_weights,
                             similarity=self.similarity, p=p, strides=self.strides, padding=self.padding,
                             normalization_term=self.normalization_term, ignore_nan=self.ignore_nan)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        height = output_size(input_shape[1], self.kernel_size[0], self.strides[0], self.padding)
        width = output_size(input_shape[2], self.kernel_size[1], self.strides[1], self.padding)
        return (input_shape[0], height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "similarity": self.similarity,
            "weighted": self.weighted,
            "p": self.p,
            "learn_p": self.learn_p,
            "normalization_term": self.normalization_term,
            "ignore_nan": self.ignore_nan,
            "templates_initializer": keras.initializers.serialize(self.templates_initializer),
            "weights_initializer": keras.initializers.serialize(self.weights_initializer),
            "templates_regularizer": keras.regularizers.serialize(self.templates_regularizer),
            "weights_regularizer": keras.regularizers.serialize(self.weights_regularizer),
            "templates_constraint": keras.constraints.serialize(self.templates_constraint),
            "weights_constraint": keras.constraints.serialize(self.weights_constraint),
        })
        return config


def _check_p(p, similarity, learn_p, filters):
    """p as a float or a list of `filters` floats, validated against the similarity (and `learn_p`: a smaller initial
    p than P_MIN would jump to it at the first training step, whatever the gradient)."""
    if similarity != "lp":
        if learn_p:
            raise ValueError(f"`learn_p=True` needs similarity='lp', got similarity={similarity!r}")
        if p is not None:
            raise ValueError(f"`p` is only used with similarity='lp' (got p={p!r}, similarity={similarity!r})")
        return None
    if p is None:
        raise ValueError("similarity='lp' needs `p` (its value, or the initial value with learn_p=True)")
    checked = real_or_reals(p, "p", filters, f"a number or a list of {filters} numbers (one per template)")
    values = np.asarray(checked)
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"`p` must be finite and > 0, got {p!r}")
    if learn_p and np.any(values < P_MIN):
        raise ValueError(f"`p` must be >= {P_MIN} with learn_p=True (a learned p is kept there), got {p!r}")
    return checked
