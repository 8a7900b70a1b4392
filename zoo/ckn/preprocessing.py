"""Per-image whitening, saved inside the model (raw 0-255 pixels in; nothing is fitted).

The CKN papers feed whitened images to the first layer. Two layers:

- `ImageWhitening` (the reference's preprocessing: CKN-Pytorch-image reads Mairal's pre-whitened
  `cifar_white.mat`; Bietti's ckn_kernel recomputes the same in Python): per image, every k x k
  patch is centred per colour channel and the image rebuilt by averaging the overlapping patches;
  then its patches are multiplied by G^(-power) with G the Gram matrix of that image's own patches
  (power 1/4 in the reference: a "half" whitening; 1/2 is a ZCA) and the image rebuilt again by
  averaging. The output is an image (same shape as the input), read by a k x k CKN layer with
  zero padding.
- `PerImageWhitening` (our first design): every k x k x C patch of the zero-padded image becomes a
  channel vector, centred per channel and over the image, ZCA-whitened with the image's patch
  covariance regularised by `eps`; a 1x1 CKN layer reads it. Held-out comparison in
  zoo/ckn/recipe.py's docstring.
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.ops.checks import int_in_range, positive_float, real


@keras.saving.register_keras_serializable(package="kernelzoo")
class PerImageWhitening(keras.layers.Layer):
    """Each image's k x k patches as channels, centred per channel, then ZCA-whitened with the image's
    own patch covariance C: out = p (C + eps tr(C) / D I)^(-1/2), D = k * k * channels; tr(C) is floored at
    TRACE_FLOOR, so a zero image (C = 0; the zero padding gives any other image edges) maps to 0, not NaN.

    The inverse square root is NEWTON_SCHULZ_STEPS coupled Newton-Schulz iterations (matrix products
    only, so it exports to ONNX, which has no eigendecomposition). Nothing is fitted.
    """

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)

    def __init__(self, patch_size=3, eps=0.1, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = whitening_patch_size(patch_size)
        self.eps = positive_float(eps, "eps")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        k, channels = self.patch_size, x.shape[-1]
        depth = k * k * channels
        patches = ops.conv(x, np.eye(depth, dtype="float32").reshape(k, k, channels, depth), padding="same")
        height, width = patches.shape[1], patches.shape[2]
        p = ops.reshape(patches, (-1, height * width, k * k, channels))
        p = ops.reshape(p - ops.mean(p, axis=2, keepdims=True), (-1, height * width, depth))
        p = p - ops.mean(p, axis=1, keepdims=True)
        cov = ops.einsum("bnd,bne->bde", p, p) / (height * width)
        trace = ops.maximum(ops.trace(cov, axis1=1, axis2=2)[:, None, None], TRACE_FLOOR)
        return ops.reshape(ops.matmul(p, inverse_sqrt_spd(cov + self.eps * trace / depth * np.eye(depth), trace)),
                           (-1, height, width, depth))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (self.patch_size ** 2 * input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "eps": self.eps})
        return config


@keras.saving.register_keras_serializable(package="kernelzoo")
class ImageWhitening(keras.layers.Layer):
    """The reference CKN preprocessing (module docstring): per-patch centring, then per-image
    whitening of the k x k patches by G^(-power), each followed by rebuilding the image from its
    overlapping patches (their average at every pixel). Output: an image of the input's shape.

    G = P^T P / n (P: the n valid patches of the centred image, rows of k * k * C values in [0, 1]
    units) plus `eps` tr(G) / D (D = k * k * C) on its diagonal; the reference has no regulariser
    (it drops eigenvalues below 1e-16 of the largest), a small `eps` keeps the Newton-Schulz
    iterations (ONNX has no eigendecomposition) accurate and a flat image finite (it maps to 0).
    """

    reads_raw_pixels = True  # input spec: the model takes 0-255 pixels (kernelzoo.zoo.inputs)
    POWERS = (0.25, 0.5)

    def __init__(self, patch_size=3, power=0.25, eps=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = whitening_patch_size(patch_size)
        self.power = self.check_power(power)
        self.eps = positive_float(eps, "eps")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @classmethod
    def check_power(cls, value, name="power"):
        """`value` as a float of POWERS, else ValueError naming `name` (the `ckn` builder's is `whitening_power`)."""
        power = real(value, name)
        if power not in cls.POWERS:
            raise ValueError(f"`{name}` must be one of {cls.POWERS} (1/4: the reference, 1/2: ZCA), got {value!r}")
        return power

    def call(self, inputs):
        x = ops.cast(inputs, "float32") / 255.0
        k, channels = self.patch_size, x.shape[-1]
        height, width, depth = x.shape[1], x.shape[2], k * k * channels
        if height is None or width is None or height < k or width < k:
            raise ValueError(f"ImageWhitening needs a known image size of at least {k}x{k}, got {inputs.shape}")
        count = _cover_count(height, width, k)
        # per-patch, per-channel mean; each pixel minus the average of the means of the patches covering it
        means = ops.average_pool(x, k, strides=1, padding="valid")
        covering = ops.depthwise_conv(ops.pad(means, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0))),
                                      np.ones((k, k, channels, 1), "float32"), padding="valid")
        x = x - covering / count
        patches = ops.conv(x, np.eye(depth, dtype="float32").reshape(k, k, channels, depth), padding="valid")
        rows, cols = height - k + 1, width - k + 1
        p = ops.reshape(patches, (-1, rows * cols, depth))
        # the D x D algebra in float64 (cheap): 40 float32 Newton-Schulz steps drift by ~1e-5 between runtimes
        p64 = ops.cast(p, "float64")
        gram = ops.einsum("bnd,bne->bde", p64, p64) / (rows * cols)
        trace = ops.trace(gram, axis1=1, axis2=2)[:, None, None]
        bound = trace * (1.0 + self.eps) + TRACE_FLOOR
        matrices = gram + (self.eps * trace / depth + TRACE_FLOOR / depth) * np.eye(depth)
        if self.power == 0.5:
            whitening = inverse_sqrt_spd(matrices, bound)
        else:  # A^(-1/4) = ((A / b)^(1/2))^(-1/2) b^(-1/4): (A / b)^(1/2) has its eigenvalues in (0, 1]
            root, _ = newton_schulz(matrices / bound)
            _, inverse = newton_schulz(root)
            whitening = inverse / ops.sqrt(ops.sqrt(bound))
        q = ops.reshape(ops.matmul(p, ops.cast(whitening, "float32")), (-1, rows, cols, depth))
        # rebuild: pixel (i, j) sums entry (a, b, c) of the whitened patch at (i - a, j - b)
        image = ops.conv(ops.pad(q, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0))), _rebuild_kernel(k, channels),
                         padding="valid")
        return image / count

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "power": self.power, "eps": self.eps})
        return config


def whitening_patch_size(value, name="patch_size"):
    """`value` as an int >= 2, else ValueError naming `name` (the `ckn` builder's is `kernel_sizes`): both layers
    centre each patch per channel, which maps a 1x1 patch to 0 and so every image to zeros."""
    return int_in_range(value, name, 2)


# Added to ImageWhitening's trace (in [0, 1] pixel units): a flat image (G = 0) stays finite and maps to 0.
# PerImageWhitening floors its trace (0-255 units) at it: only a zero image's is below, other outputs are unchanged.
TRACE_FLOOR = 1e-12


def _cover_count(height, width, k):
    """(1, H, W, 1): how many valid k x k patches cover each pixel."""
    rows = np.minimum(np.arange(height), k - 1) - np.maximum(np.arange(height) - (height - k), 0) + 1
    cols = np.minimum(np.arange(width), k - 1) - np.maximum(np.arange(width) - (width - k), 0) + 1
    return np.outer(rows, cols).astype("float32")[None, :, :, None]


def _rebuild_kernel(k, channels):
    """(k, k, k * k * C, C): the convolution (on the patches padded by k - 1) that sums, at every pixel,
    the entries of the overlapping patches that fall on it (the adjoint of patch extraction)."""
    kernel = np.zeros((k, k, k, k, channels, channels), "float32")
    for u in range(k):
        for v in range(k):
            kernel[u, v, k - 1 - u, k - 1 - v] = np.eye(channels)
    return kernel.reshape(k, k, k * k * channels, channels)


NEWTON_SCHULZ_STEPS = 20


def newton_schulz(matrices, steps=None):
    """(A^(1/2), A^(-1/2)) of symmetric positive definite matrices (B, D, D) with eigenvalues in (0, 1]:
    coupled Newton-Schulz iterations (matrix products only)."""
    eye = np.eye(matrices.shape[-1], dtype=keras.backend.standardize_dtype(matrices.dtype))
    y, z = matrices, ops.broadcast_to(eye, ops.shape(matrices))
    for _ in range(steps or NEWTON_SCHULZ_STEPS):
        t = 1.5 * eye - 0.5 * ops.matmul(z, y)
        y, z = ops.matmul(y, t), ops.matmul(t, z)
    return y, z


def inverse_sqrt_spd(matrices, bound):
    """A^(-1/2) of symmetric positive definite matrices (B, D, D) whose eigenvalues lie in (0, bound]
    (B, 1, 1): coupled Newton-Schulz, Y -> (A / bound)^(1/2), Z -> (A / bound)^(-1/2)."""
    return newton_schulz(matrices / bound)[1] / ops.sqrt(bound)
