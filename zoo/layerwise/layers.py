"""The layerwise family's two layers (registered for `keras.models.load_model` after `import kernelzoo`).

- `CentroidConv2D`: the convolution with the k-means centroids followed by ReLU with a fixed bias b
  (paper 003 Sec. 5.1 step 2, Sec. 6 step 3): out_j = ReLU(<patch, c_j> + b), or with
  `normalize_patches` ReLU(<patch, c_j> / ||patch|| + b), the cosine the k-means used. The centroids
  are a frozen kernel (set by `set_centroids`), b is a constant of the config: a plain convolution
  in the exported graph.
- `PerImageStandardization`: TensorFlow's `per_image_standardization` (the CIFAR-10 tutorial CNN the
  paper builds on): each image minus its mean, over max(its standard deviation, 1 / sqrt(H W C)).
  Reads raw 0-255 pixels (scale-free), nothing is fitted.
- `LocalResponseNormalization`: TensorFlow's `local_response_normalization` (the tutorial CNN's norm1
  and norm2; Keras has no such layer), nothing is fitted.
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.ops.checks import (boolean, known_channels, nonnegative_float, nonnegative_int, normalize_padding,
                                  normalize_tuple, positive_float, positive_int, real)
from kernelzoo.ops.shapes import output_size

# Squared patch norms are clipped at this before the square root (a zero patch gives 0, not NaN).
NORM_EPS = 1e-12


@keras.saving.register_keras_serializable(package="kernelzoo")
class CentroidConv2D(keras.layers.Layer):
    """ReLU(<patch, c_j> + bias) for every patch and centroid c_j (module docstring).

    Args:
      filters: the number of centroids k.
      kernel_size, strides, padding: as Conv2D (the patches the k-means clustered).
      bias: the fixed bias b of the ReLU (paper 003 Appendix C: -0.14, -0.63, 0.84).
      normalize_patches: divide each response by the patch norm (the cosine; the paper's CIFAR
        network does not: a vanilla convolution).
    The kernel (kh, kw, C, filters) is a non-trainable weight (it stays frozen when the layer is made
    trainable, e.g. by fine-tuning with freeze="none").
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", bias=0.0, normalize_patches=False,
                 **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = normalize_tuple(kernel_size, "kernel_size")
        self.strides = normalize_tuple(strides, "strides")
        self.padding = normalize_padding(padding)
        self.bias = real(bias, "bias")
        self.normalize_patches = boolean(normalize_patches, "normalize_patches")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = known_channels(input_shape, "CentroidConv2D")
        self.kernel = self.add_weight(name="kernel", shape=self.kernel_size + (channels, self.filters),
                                      initializer="random_normal", trainable=False)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def set_centroids(self, centroids):
        """Set the kernel from centroids (filters, kh * kw * C) in Conv2D patch order (as
        kernelzoo.zoo.simnet.init.extract_patches gives them), or a kernel (kh, kw, C, filters)."""
        centroids = np.asarray(centroids, dtype="float32")
        shape = tuple(self.kernel.shape)
        if centroids.shape == shape:
            self.kernel.assign(centroids)
            return
        if centroids.shape != (self.filters, int(np.prod(shape[:-1]))):
            raise ValueError(f"`centroids` must have shape ({self.filters}, {int(np.prod(shape[:-1]))}) or {shape}, "
                             f"got {centroids.shape}")
        self.kernel.assign(centroids.reshape((self.filters,) + shape[:-1]).transpose(1, 2, 3, 0))

    def centroids(self):
        """The kernel as rows (filters, kh * kw * C), the form `set_centroids` takes."""
        kernel = ops.convert_to_numpy(self.kernel)
        return kernel.transpose(3, 0, 1, 2).reshape(self.filters, -1)

    def responses(self, inputs):
        """<patch, c_j> (or the cosine with `normalize_patches`) before the bias and the ReLU."""
        x = ops.cast(inputs, self.compute_dtype)
        out = ops.conv(x, ops.cast(self.kernel, self.compute_dtype), strides=self.strides, padding=self.padding)
        if self.normalize_patches:
            squares = ops.sum(ops.square(x), axis=-1, keepdims=True)
            ones = ops.ones(self.kernel_size + (1, 1), dtype=self.compute_dtype)
            norms = ops.conv(squares, ones, strides=self.strides, padding=self.padding)
            out = out / ops.sqrt(ops.maximum(norms, NORM_EPS))
        return out

    def call(self, inputs):
        return ops.relu(self.responses(inputs) + self.bias)

    def compute_output_shape(self, input_shape):
        sizes = [output_size(size, k, s, self.padding)
                 for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides)]
        return (input_shape[0], sizes[0], sizes[1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
                       "padding": self.padding, "bias": self.bias, "normalize_patches": self.normalize_patches})
        return config


@keras.saving.register_keras_serializable(package="kernelzoo")
class PerImageStandardization(keras.layers.Layer):
    """(x - mean) / max(std, 1 / sqrt(H W C)) per image, as tf.image.per_image_standardization."""

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        count = float(np.prod(x.shape[1:]))
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True))
        return (x - mean) / ops.maximum(std, float(1.0 / np.sqrt(count)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="kernelzoo")
class LocalResponseNormalization(keras.layers.Layer):
    """x_c / (bias + alpha * sum of x_d^2 over the channels d with |d - c| <= depth_radius)^beta, per position,
    as `tf.nn.local_response_normalization` (the window stops at the first and last channel).

    The defaults are TensorFlow's; the CIFAR-10 tutorial's norm1 / norm2 use depth_radius 4, bias 1,
    alpha 0.001 / 9, beta 0.75. On the TensorFlow backend the layer is TF's LRN op (tf2onnx exports it as
    ONNX's LRN); on the others the window sum is a product with a banded 0/1 (C, C) matrix (`composite`).
    It computes in float32 under any dtype policy (TensorFlow has no bfloat16 LRN kernel on CPU) and
    returns its compute dtype.
    """

    def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, **kwargs):
        kwargs.setdefault("autocast", False)  # cast to float32 in `call`, not to the compute dtype first
        super().__init__(**kwargs)
        self.depth_radius = nonnegative_int(depth_radius, "depth_radius")
        self.bias = positive_float(bias, "bias")
        self.alpha = nonnegative_float(alpha, "alpha")
        self.beta = nonnegative_float(beta, "beta")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            out = tf.nn.local_response_normalization(x, self.depth_radius, self.bias, self.alpha, self.beta)
        else:
            out = self.composite(x)
        return ops.cast(out, self.compute_dtype)

    def composite(self, x):
        """The same normalisation in `keras.ops` (any backend)."""
        channels = known_channels(x.shape, "LocalResponseNormalization")
        offsets = np.arange(channels)
        band = (np.abs(offsets[:, None] - offsets[None, :]) <= self.depth_radius).astype("float32")
        sums = ops.matmul(ops.square(x), ops.convert_to_tensor(band))
        return x / ops.power(self.bias + self.alpha * sums, self.beta)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"depth_radius": self.depth_radius, "bias": self.bias, "alpha": self.alpha, "beta": self.beta})
        return config
