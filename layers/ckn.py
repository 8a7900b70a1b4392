"""The convolutional kernel network layer (Mairal 2014/2016; paper 004 and papers/README.md).

For every patch x of the input map, psi(x) = ||x|| kappa(Z^T x / ||x||) with the anchors Z (columns)
on the unit sphere, then Gaussian linear pooling, then the Nystrom factor kappa(Z^T Z)^(-1/2): the
projection of the patch kernel's feature map onto the span of the anchors, so that
<psi(x), psi(x')> approximates ||x|| ||x'|| kappa(<x, x'> / (||x|| ||x'||)). The factor is linear,
so it is applied after pooling (the same map, fewer positions).
"""
import math

import keras
import numpy as np
from keras import ops

from kernelzoo.ops.checks import (check_choice, known_channels, nonnegative_float, normalize_padding, normalize_tuple,
                                  positive_float, positive_int, window_fits)
from kernelzoo.ops.shapes import output_size

KERNELS = ("exp", "poly2")
# Squared patch norms are clipped at this before their inverse square root and log: a zero patch maps to ~0, never NaN.
NORM_EPS = 1e-8


@keras.saving.register_keras_serializable(package="kernelzoo")
class CKNConv2D(keras.layers.Layer):
    """A CKN layer: kernel map of every patch on `filters` anchors, Gaussian pooling, Nystrom factor.

    Args:
      filters: number of anchors p (output channels).
      kernel_size: patch size, as Conv2D.
      subsampling: pooling stride s; the Gaussian filter has sigma s / sqrt(2) and width 2s + 1 (1: none). s > 1
        needs a static input height and width (the pooling matrices are built for them): build raises otherwise.
      kernel_function: the dot-product kernel kappa on the sphere: "exp" (default), kappa(u) = exp((u - 1) / sigma^2),
        or "poly2", kappa(u) = u^2 (called `kernel` in the first experiments' saved configs, still read).
      sigma: bandwidth of the "exp" kernel (on the unit sphere); "poly2" has none and ignores it.
      padding: patch extraction, "same" (zeros) or "valid"; pooling always pads s zeros.
      eigenvalue_floor: eigenvalues of kappa(Z^T Z) are raised to at least this before ^(-1/2).
      nystrom_shift: c in the factor V diag(1 / (sqrt(lambda) + c)) V^T (0: the exact inverse square
        root; the reference CKN-Pytorch-image uses 0.01, a mild shrinkage of the small eigenvalues).
      anchors_initializer, anchors_regularizer: Keras names or objects (anchors are normalised in call).

    Anchors live on the sphere by parameterisation: the weight `anchors` (kh, kw, C, p) is divided by
    its column norms in call, and a training step is followed by their projection back to unit norms (a
    UnitNorm constraint, the reference's `normalize_`): the parameterisation's gradient is tangent to the
    sphere, so every step would otherwise lengthen the columns and shrink the next steps on the sphere.
    While the layer is trainable the factor is recomputed from the anchors on every call (symmetric
    eigendecomposition, differentiable); a frozen layer (trainable=False) uses the weight `factor`, refreshed
    when the layer is built or becomes frozen and, while it is frozen, when `set_anchors` or the layer's
    `set_weights` runs or its weights load, so its inference graph has no eigendecomposition (ONNX has none).
    Writing `anchors` directly (`anchors.assign`) or a model's `set_weights` (which sets the variables, not
    through the layers) leaves a frozen layer's factor stale: call `refresh_factor()` after them. A saved layer
    holds its anchors only: the factor is a function of them (at 1,024 anchors, 4 MiB that deflate little);
    deserialisation (load_model) leaves it to the weights' loading, not to the initial anchors (one
    eigendecomposition each).

    Under a mixed-precision policy (mixed_bfloat16) only the patch-anchor products, the layer's large GEMM
    (and their gradients), run in the compute dtype; the patch norms, the kernel, the pooling and the Nystrom
    factor and its product stay float32. The products are rounded to bfloat16 before the kernel and the factor
    apply, and both amplify that rounding: the factor of close anchors (data-like ones, from k-means) is
    ill-conditioned, so the outputs can be far less accurate than bfloat16 (64 3x3 anchors drawn from the
    data, sigma 0.5: 0.4 relative error per position at the 99th percentile). `nystrom_shift` > 0 bounds the
    factor's gain and reduces it (0.07 there at 0.01). Under a float64 policy the layer computes in float32
    (the factor's eigendecomposition in float64) and returns float64.
    """

    def __init__(self, filters, kernel_size, subsampling=1, kernel_function=None, sigma=0.6, padding="same",
                 eigenvalue_floor=1e-4, nystrom_shift=0.0, anchors_initializer="random_normal",
                 anchors_regularizer=None, **kwargs):
        if "kernel" in kwargs:  # the name in runs saved before the rename
            if kernel_function is not None:
                raise ValueError("`kernel` (the former name of `kernel_function`) and `kernel_function` are both "
                                 "given: pass `kernel_function` only")
            kernel_function = kwargs.pop("kernel")
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = normalize_tuple(kernel_size, "kernel_size")
        self.subsampling = positive_int(subsampling, "subsampling")
        self.kernel_function = check_choice("kernel_function", "exp" if kernel_function is None else kernel_function,
                                            KERNELS)
        self.sigma = positive_float(sigma, "sigma")
        self.padding = normalize_padding(padding)
        self.eigenvalue_floor = positive_float(eigenvalue_floor, "eigenvalue_floor")
        self.nystrom_shift = nonnegative_float(nystrom_shift, "nystrom_shift")
        self.anchors_initializer = keras.initializers.get(anchors_initializer)
        self.anchors_regularizer = keras.regularizers.get(anchors_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self._deserializing = False

    def build(self, input_shape):
        channels = known_channels(input_shape, "CKNConv2D")
        window_fits(input_shape[1:3], self.kernel_size, self.padding, "kernel_size")
        if self.subsampling > 1 and None in tuple(input_shape[1:3]):  # `pool` lays its matrices out on a known grid
            raise ValueError(f"CKNConv2D with subsampling={self.subsampling} needs a static spatial input size, got "
                             f"{tuple(input_shape)}: give keras.Input a fixed height and width (or subsampling=1)")
        self.anchors = self.add_weight(name="anchors", shape=self.kernel_size + (channels, self.filters),
                                       initializer=self.anchors_initializer, regularizer=self.anchors_regularizer,
                                       constraint=keras.constraints.UnitNorm(axis=(0, 1, 2)))
        self.factor = self.add_weight(name="factor", shape=(self.filters, self.filters), initializer="identity",
                                      trainable=False)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        if not self.trainable and not self._deserializing:
            self.refresh_factor()

    def build_from_config(self, config):
        """Deserialisation: the weights load next (load_own_variables refreshes a frozen layer's factor), so the
        factor of the initial anchors would be a wasted eigendecomposition."""
        self._deserializing = True
        try:
            super().build_from_config(config)
        finally:
            self._deserializing = False

    # ------------------------------------------------------------------ anchors and the Nystrom factor

    @keras.layers.Layer.trainable.setter
    def trainable(self, value):
        freezing = self.trainable and not value  # a frozen layer's factor is already its anchors'
        keras.layers.Layer.trainable.fset(self, value)
        if freezing and self.built:
            self.refresh_factor()

    def kappa(self, u):
        """The dot-product kernel on the sphere, entry-wise."""
        if self.kernel_function == "poly2":
            return ops.square(u)
        return ops.exp((u - 1.0) / (self.sigma ** 2))

    def patch_map(self, dots, squares):
        """||x|| kappa(<x, z> / ||x||) from the patch-anchor products (B, H, W, p) and the squared patch norms
        (B, H, W, 1), rearranged so that the large map sees two or three element-wise ops (forward and backward)
        instead of five: u^2 / ||x|| for poly2, exp(u / (sigma^2 ||x||) + log ||x|| - 1 / sigma^2) for exp."""
        if self.kernel_function == "poly2":
            return ops.square(dots) * ops.rsqrt(squares)
        inverse_variance = 1.0 / self.sigma ** 2
        return ops.exp(dots * (inverse_variance * ops.rsqrt(squares)) + (0.5 * ops.log(squares) - inverse_variance))

    def unit_anchors(self):
        """The anchors as columns of a (kh * kw * C, p) matrix with unit norms."""
        z = ops.reshape(ops.cast(self.anchors, "float32"), (-1, self.filters))
        return z / ops.sqrt(ops.maximum(ops.sum(ops.square(z), axis=0, keepdims=True), NORM_EPS))

    def nystrom_factor(self):
        """kappa(Z^T Z)^(-1/2) from the current anchors (float64 eigendecomposition, float32 result);
        with `nystrom_shift` c, V diag(1 / (sqrt(lambda) + c)) V^T."""
        z = ops.cast(self.unit_anchors(), "float64")
        gram = self.kappa(ops.matmul(ops.transpose(z), z))
        return ops.cast(inverse_sqrt(gram, self.eigenvalue_floor, self.nystrom_shift), "float32")

    def refresh_factor(self):
        """Store the factor of the current anchors in the `factor` weight (what a frozen layer uses)."""
        self.factor.assign(self.nystrom_factor())

    def set_weights(self, weights):
        """Keras's, then a frozen layer's factor from the new anchors: the factor given with them may be stale (a
        trainable layer's is never refreshed)."""
        super().set_weights(weights)
        if self.built and not self.trainable:
            self.refresh_factor()

    def save_own_variables(self, store):
        """The anchors only: the factor is a function of them, recomputed on load."""
        if not self.built:  # nothing to save, as Keras's own method
            return super().save_own_variables(store)
        store["0"] = self.anchors

    def load_own_variables(self, store):
        """The anchors, then a frozen layer's factor (a trainable one computes it in call); a file saved with the
        factor (before it was left out) loads it as saved."""
        if not self.built:
            return super().load_own_variables(store)
        if len(store) not in (1, 2):
            raise ValueError(f"CKNConv2D {self.name!r}: a saved layer holds its anchors (and, saved before "
                             f"2026-12-06, its factor), got {len(store)} arrays")
        self.anchors.assign(store["0"])
        if len(store) == 2:
            self.factor.assign(store["1"])
        elif not self.trainable:
            self.refresh_factor()

    def set_anchors(self, anchors):
        """Set the anchors (kh, kw, C, p) or (kh * kw * C, p) (normalised in call) and, if the layer is frozen, its
        factor (a trainable layer computes it in call, and when it is frozen)."""
        anchors = np.asarray(anchors, dtype="float32")
        shape = tuple(self.anchors.shape)
        if anchors.shape not in (shape, (int(np.prod(shape[:-1])), self.filters)):
            raise ValueError(f"`anchors` must have shape {shape} or ({int(np.prod(shape[:-1]))}, {self.filters}), "
                             f"got {anchors.shape}")
        self.anchors.assign(anchors.reshape(shape))
        if not self.trainable:
            self.refresh_factor()

    # ------------------------------------------------------------------ forward

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        kh, kw = self.kernel_size
        channels = x.shape[-1]
        z = self.unit_anchors()
        squares = ops.sum(ops.square(x), axis=-1, keepdims=True)
        squares = ops.maximum(ops.conv(squares, ops.ones((kh, kw, 1, 1)), padding=self.padding), NORM_EPS)
        gemm = self.compute_dtype  # the patch-anchor products: bfloat16 under mixed_bfloat16, else float32
        dots = ops.conv(ops.cast(x, gemm), ops.cast(ops.reshape(z, (kh, kw, channels, self.filters)), gemm),
                        padding=self.padding)
        out = self.pool(self.patch_map(ops.cast(dots, "float32"), squares))
        factor = self.factor if not self.trainable else self.nystrom_factor()
        return ops.cast(ops.matmul(out, factor), self.compute_dtype)

    def pool(self, maps):
        """Gaussian linear pooling with stride s (sigma s / sqrt(2), 2s + 1 taps, s zeros of padding): the separable
        filter as two products with `pooling_matrix`, rows then columns (on the CPU faster than the equivalent
        depthwise convolution, forward and backward: kernelzoo bench ckn). Needs the map's height and width."""
        s = self.subsampling
        if s == 1:
            return maps
        _, height, width, channels = maps.shape
        if height is None or width is None:
            raise ValueError(f"CKNConv2D pooling (subsampling {s}) needs a known map size, got {maps.shape}")
        rows, cols = pooling_matrix(height, s), pooling_matrix(width, s)
        maps = ops.matmul(rows, ops.reshape(maps, (-1, height, width * channels)))
        maps = ops.matmul(cols, ops.reshape(maps, (-1, width, channels)))
        return ops.reshape(maps, (-1, rows.shape[0], cols.shape[0], channels))

    def compute_output_shape(self, input_shape):
        kh, kw = self.kernel_size
        sizes = [output_size(input_shape[1], kh, 1, self.padding), output_size(input_shape[2], kw, 1, self.padding)]
        sizes = [None if size is None else -(-size // self.subsampling) for size in sizes]
        return (input_shape[0], sizes[0], sizes[1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "subsampling": self.subsampling,
            "kernel_function": self.kernel_function,
            "sigma": self.sigma,
            "padding": self.padding,
            "eigenvalue_floor": self.eigenvalue_floor,
            "nystrom_shift": self.nystrom_shift,
            "anchors_initializer": keras.initializers.serialize(self.anchors_initializer),
            "anchors_regularizer": keras.regularizers.serialize(self.anchors_regularizer),
        })
        return config


def gaussian_filter(subsampling):
    """The 2s + 1 taps exp(-t^2 / (2 sigma^2)), sigma = s / sqrt(2), t = -s..s, summing to 1."""
    t = np.arange(-subsampling, subsampling + 1, dtype="float64")
    taps = np.exp(-t ** 2 / (2 * (subsampling / math.sqrt(2)) ** 2))
    return taps / taps.sum()


def pooling_matrix(size, subsampling):
    """(ceil(size / s), size) float32: row i holds the Gaussian taps centred on position i s; the s zeros of padding
    on each side are the columns left out."""
    s = subsampling
    matrix = np.zeros((-(-size // s), size + 2 * s))
    for row in range(len(matrix)):
        matrix[row, row * s:row * s + 2 * s + 1] = gaussian_filter(s)
    return matrix[:, s:s + size].astype("float32")


@ops.custom_gradient
def _inverse_sqrt(matrix, floor, shift):
    values, vectors = ops.eigh(matrix)
    roots = ops.sqrt(ops.maximum(values, floor))
    shifted = roots + shift
    result = ops.matmul(vectors / shifted, ops.transpose(vectors))

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        # Daleckii-Krein for f(lambda) = 1 / (sqrt(lambda) + c): d f(A) = V (L o (V^T dA V)) V^T with the divided
        # differences L_ij = -1 / ((r_i + c) (r_j + c) (r_i + r_j)), r = sqrt(lambda) (f'(lambda_i) on the diagonal).
        # Finite for repeated eigenvalues, unlike the gradient of eigh itself.
        scale = -1.0 / (shifted[:, None] * shifted[None, :] * (roots[:, None] + roots[None, :]))
        inner = ops.matmul(ops.matmul(ops.transpose(vectors), upstream), vectors)
        return (ops.matmul(ops.matmul(vectors, scale * inner), ops.transpose(vectors)), ops.zeros_like(floor),
                ops.zeros_like(shift))

    return result, grad


def inverse_sqrt(matrix, floor, shift=0.0):
    """V diag(1 / (sqrt(max(lambda, floor)) + shift)) V^T of a symmetric matrix: its inverse square root
    for shift 0.

    Its gradient treats the floor as the identity (exact while every eigenvalue is above it).
    """
    return _inverse_sqrt(matrix, ops.convert_to_tensor(floor, dtype=matrix.dtype),
                         ops.convert_to_tensor(shift, dtype=matrix.dtype))
