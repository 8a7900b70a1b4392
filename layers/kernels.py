"""Kernel functions K(u, v) of kernelNet layers and the 2D grid initializer.

Muller, *Kernelized Synaptic Weight Matrices* (ICML 2018): dot product (Eq. 3),
polynomial, Gaussian RBF (Eq. 6), finite support (Eq. 7) and tanh (Eq. 12).
All functions take location matrices u (m, d) and v (n, d) and return the
(m, n) matrix K(u_i, v_j), written with `keras.ops` so any backend runs them.
"""
import math

import keras
from keras import ops

from kernelzoo.ops.checks import check_choice, finite_float, positive_int

KERNELS = ("dot", "poly", "rbf", "tanh", "finite_support")
DISTANCES = ("euclidean", "squared")


def squared_distances(u, v):
    """||u_i - v_j||^2 for all pairs, as an (m, n) matrix (clamped at 0).

    |u|^2 + |v|^2 - 2 u.v in (m, n) memory (the differences would take (m, n, d)), on points centred by their
    common mean: the distances do not change, the form's cancellation for points far from 0 does.
    """
    center = 0.5 * (ops.mean(u, axis=0) + ops.mean(v, axis=0))
    u, v = u - center, v - center
    uu = ops.sum(u * u, axis=-1, keepdims=True)
    vv = ops.sum(v * v, axis=-1)
    d2 = uu + ops.expand_dims(vv, 0) - 2.0 * ops.matmul(u, ops.transpose(v))
    return ops.maximum(d2, 0.0)


def kernel_matrix(u, v, kernel, gamma=1.0, degree=2, offset=1.0, scale=1.0,
                  distance="euclidean"):
    """K(u_i, v_j) for the named kernel.

    dot: u.v; poly: (u.v + offset)^degree; rbf: exp(-gamma ||u-v||^2);
    tanh: tanh(u.v); finite_support: max(0, 1 - scale * D(u, v)) with D the
    Euclidean distance or, with distance="squared", its square (the form used
    by the paper's MovieLens code).
    """
    kernel = check_choice("kernel", kernel, KERNELS)
    distance = check_choice("distance", distance, DISTANCES)
    if kernel in ("dot", "poly", "tanh"):
        dot = ops.matmul(u, ops.transpose(v))
        if kernel == "dot":
            return dot
        if kernel == "tanh":
            return ops.tanh(dot)
        return ops.power(dot + offset, degree)
    d2 = squared_distances(u, v)
    if kernel == "rbf":
        return ops.exp(-gamma * d2)
    # finite_support; sqrt has an infinite slope at 0: keep the gradient finite there
    dist = d2 if distance == "squared" else ops.sqrt(ops.maximum(d2, 1e-12))
    return ops.relu(1.0 - scale * dist)


def grid_shape(n):
    """(rows, cols) of the most square grid with rows * cols == n."""
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


@keras.saving.register_keras_serializable(package="kernelzoo")
class Grid2D(keras.initializers.Initializer):
    """Locations on a regular 2D grid spanning [minval, maxval]^2 (Sec. 3.2).

    For an (n, 2) weight: `repeats` stacked copies of a rows x cols grid,
    row-major, so pixel i of a flattened H x W image gets the location of
    pixel i (rows=H, cols=W), and C parallel grids of units get C copies.
    rows/cols default to the most square factorisation of n / repeats.
    """

    def __init__(self, rows=None, cols=None, repeats=1, minval=0.0, maxval=1.0):
        self.rows = None if rows is None else positive_int(rows, "rows")
        self.cols = None if cols is None else positive_int(cols, "cols")
        self.repeats = positive_int(repeats, "repeats")
        self.minval = finite_float(minval, "minval")
        self.maxval = finite_float(maxval, "maxval")
        if not self.maxval > self.minval:
            raise ValueError(f"`maxval` must exceed `minval`, got minval={minval}, maxval={maxval}")

    def __call__(self, shape, dtype=None):
        if len(shape) != 2 or shape[1] != 2 or shape[0] % self.repeats:
            raise ValueError(
                f"Grid2D needs a shape (repeats * rows * cols, 2), got {tuple(shape)} "
                f"with repeats={self.repeats}")
        n = shape[0] // self.repeats
        rows, cols = self.rows, self.cols
        if rows is None and cols is None:
            rows, cols = grid_shape(n)
        elif rows is None:
            rows = n // cols
        elif cols is None:
            cols = n // rows
        if rows * cols != n:
            raise ValueError(f"grid {rows}x{cols} does not hold {n} locations")

        def axis(k):
            step = (self.maxval - self.minval) / max(k - 1, 1)
            return ops.arange(k, dtype="float32") * step + self.minval

        yy = ops.repeat(axis(rows), cols)
        xx = ops.tile(axis(cols), [rows])
        grid = ops.stack([yy, xx], axis=1)
        grid = ops.tile(grid, [self.repeats, 1])
        return ops.cast(grid, dtype or "float32")

    def get_config(self):
        return {"rows": self.rows, "cols": self.cols, "repeats": self.repeats,
                "minval": self.minval, "maxval": self.maxval}
