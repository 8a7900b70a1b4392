"""Preprocessing as Keras layers saved inside the model (paper 000 Sec. 6.1; Coates et al. 2011).

- `BrightnessContrastNormalization`: each image minus its mean, divided by
  sqrt(variance + eps) (the ConvNet baseline's input normalisation).
- `PatchWhitening`: the SimNet / Coates input. Every kh x kw x C patch is
  extracted (one output channel per patch entry, in (row, col, channel) order,
  the layout of a Conv2D / Similarity kernel), normalised for brightness and
  contrast on its own ((p - mean(p)) / sqrt(var(p) + norm_eps), Coates' recipe),
  then ZCA-whitened with a mean and matrix fitted on training patches:
  out = (p - m) W, W = V (D + zca_eps)^(-1/2) V^T. A 1x1 Similarity on its
  output is a kh x kw Similarity on whitened patches.

Why patches as channels rather than a whitening filter on the image: ZCA
whitening acts on each patch on its own, and overlapping patches share pixels,
so no per-pixel transform of the image followed by a kh x kw Similarity gives
whitened patches; and Coates' per-patch contrast normalisation is nonlinear, so
it cannot be folded into one linear convolution either. The patch extraction is
a fixed one-hot convolution, the whitening a matmul: both are keras.ops, backend
agnostic, exported as Conv + MatMul.
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.ops.checks import (image_batch, int_in_range, known_channels, matrix, nonnegative_float, positive_float,
                                  positive_int)
from kernelzoo.ops.checks import normalize_padding, normalize_tuple
from kernelzoo.ops.shapes import output_size


@keras.saving.register_keras_serializable(package="kernelzoo")
class BrightnessContrastNormalization(keras.layers.Layer):
    """Per-image brightness and contrast normalisation: (x - mean(x)) / sqrt(var(x) + eps).

    Mean and variance are taken over each image's height, width and channels.
    `eps` is in the squared units of the input (10 suits 0-255 pixel values).
    """

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)

    def __init__(self, eps=10.0, **kwargs):
        super().__init__(**kwargs)
        self.eps = positive_float(eps, "eps")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True)
        return (x - mean) / ops.sqrt(var + self.eps)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"eps": self.eps})
        return config


@keras.saving.register_keras_serializable(package="kernelzoo")
class PatchWhitening(keras.layers.Layer):
    """Patches as channels, each contrast-normalised and ZCA-whitened (fitted by `adapt`).

    Output (N, H', W', kh * kw * C) with channel (a * kw + b) * C + c holding
    entry (a, b, c) of the whitened patch at that position.

    Args:
      patch_size, strides, padding: the patch grid, as Conv2D.
      normalize: per-patch brightness/contrast normalisation before whitening (Coates et al.).
      norm_eps: added to each patch's variance (input units squared; 10 for 0-255 pixels).
      zca_eps: added to the covariance eigenvalues (0.1 for contrast-normalised patches).
    Until `adapt` runs the whitening is the identity (mean 0, W = I); `fitted` says which.
    """

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)

    def __init__(self, patch_size=6, strides=1, padding="valid", normalize=True, norm_eps=10.0, zca_eps=0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.patch_size = normalize_tuple(patch_size, "patch_size")
        self.strides = normalize_tuple(strides, "strides")
        self.padding = normalize_padding(padding)
        self.normalize = bool(normalize)
        self.norm_eps = positive_float(norm_eps, "norm_eps")
        self.zca_eps = nonnegative_float(zca_eps, "zca_eps")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = known_channels(input_shape, "PatchWhitening")
        depth = self.patch_size[0] * self.patch_size[1] * channels
        self.depth = depth
        self.mean = self.add_weight(name="mean", shape=(depth,), initializer="zeros", trainable=False)
        self.zca = self.add_weight(name="zca", shape=(depth, depth), initializer="identity", trainable=False)
        self.fitted_flag = self.add_weight(name="fitted", shape=(), initializer="zeros", trainable=False)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    @property
    def fitted(self):
        return self.built and float(ops.convert_to_numpy(self.fitted_flag)) > 0

    def _one_hot(self, channels):
        kh, kw = self.patch_size
        depth = kh * kw * channels
        return np.eye(depth, dtype="float32").reshape(kh, kw, channels, depth)

    def normalized_patches(self, inputs):
        """Patches (N, H', W', D), contrast-normalised when `normalize`, not yet whitened."""
        x = ops.cast(inputs, "float32")
        patches = ops.conv(x, self._one_hot(x.shape[-1]), strides=self.strides, padding=self.padding)
        if self.normalize:
            mean = ops.mean(patches, axis=-1, keepdims=True)
            # Unbiased variance, as Coates et al.'s MATLAB code (var over the D entries).
            var = ops.sum(ops.square(patches - mean), axis=-1, keepdims=True) / max(patches.shape[-1] - 1, 1)
            patches = (patches - mean) / ops.sqrt(var + self.norm_eps)
        return patches

    def call(self, inputs):
        patches = self.normalized_patches(inputs)
        out = ops.matmul(patches - self.mean, self.zca)
        return ops.cast(out, self.compute_dtype)

    def adapt(self, images, max_patches=100_000, batch_size=256, seed=0):
        """Fit the mean and ZCA matrix on up to `max_patches` patches sampled from `images`.

        images: (N, H, W, C) array (the layer's input, e.g. 0-255 pixels). Deterministic for a seed.
        Returns self.
        """
        images = image_batch(images)
        max_patches = int_in_range(max_patches, "max_patches", 2)
        batch_size = positive_int(batch_size, "batch_size")
        if not self.built:
            self.build(images.shape)
        if images.shape[-1] * self.patch_size[0] * self.patch_size[1] != self.depth:
            raise ValueError(f"`images` has {images.shape[-1]} channels; the layer was built for "
                             f"{self.depth // (self.patch_size[0] * self.patch_size[1])}")
        patches = sample_patch_rows(self.normalized_patches, images, max_patches, batch_size,
                                    np.random.default_rng(seed))
        mean, zca = fit_zca(patches, self.zca_eps)
        self.mean.assign(mean)
        self.zca.assign(zca)
        self.fitted_flag.assign(1.0)
        return self

    def compute_output_shape(self, input_shape):
        kh, kw = self.patch_size
        channels = input_shape[-1]
        return (input_shape[0], output_size(input_shape[1], kh, self.strides[0], self.padding),
                output_size(input_shape[2], kw, self.strides[1], self.padding),
                None if channels is None else kh * kw * channels)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "strides": self.strides, "padding": self.padding,
                       "normalize": self.normalize, "norm_eps": self.norm_eps, "zca_eps": self.zca_eps})
        return config


def fit_zca(patches, eps):
    """(mean (D,), ZCA matrix (D, D)) of patch rows (M, D): W = V (D + eps)^(-1/2) V^T."""
    patches = matrix(patches, "patches", min_rows=2).astype("float64")
    eps = nonnegative_float(eps, "eps")
    mean = patches.mean(axis=0)
    cov = np.cov(patches - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, 0.0)
    if eps == 0 and np.min(values) <= 1e-12 * max(np.max(values), 1e-30):
        raise ValueError("`eps`=0 with a singular patch covariance; use eps > 0")
    zca = (vectors / np.sqrt(values + eps)) @ vectors.T
    return mean.astype("float32"), zca.astype("float32")


def sample_patch_rows(feature_fn, images, max_patches, batch_size, rng):
    """Rows (M <= max_patches, D) sampled uniformly over images and positions of feature_fn(images).

    feature_fn maps a batch of images to (B, ..., D) feature maps; rng is a NumPy Generator.
    """
    count = images.shape[0]
    rows = []
    per_image = None
    for start in range(0, count, batch_size):
        maps = ops.convert_to_numpy(feature_fn(images[start:start + batch_size]))
        flat = maps.reshape(maps.shape[0], -1, maps.shape[-1])
        if per_image is None:
            per_image = int(np.ceil(max_patches / count))
            per_image = min(per_image, flat.shape[1])
        picks = np.stack([rng.choice(flat.shape[1], per_image, replace=False) for _ in range(flat.shape[0])])
        rows.append(np.take_along_axis(flat, picks[..., None], axis=1).reshape(-1, flat.shape[-1]))
    rows = np.concatenate(rows)
    if rows.shape[0] > max_patches:
        rows = rows[np.sort(rng.choice(rows.shape[0], max_patches, replace=False))]
    return rows
