"""Unsupervised initialisation of SimNets (paper 000 Sec. 5) and of the zoo's preprocessing.

A Similarity layer with lp similarity computes, for template l,
u_l^T phi(x, z_l) = -sum_i u_li |x_i - z_li|^p_l. Fitting a mixture of
generalized-Gaussian components with independent coordinates and one shape per
component,

    P(x) = sum_l lambda_l prod_i beta_l / (2 alpha_li Gamma(1/beta_l)) exp(-(|x_i - mu_li| / alpha_li)^beta_l),

to the layer's input patches and setting z = mu, u = alpha^(-beta), p = beta
makes channel l the log-probability of (x, component l) up to the constant
c_l = log lambda_l + sum_i log(beta_l / (2 alpha_li Gamma(1/beta_l))).

`fit_gg_mixture` runs (generalised) EM: k-means++ seeding, E-step responsibilities,
an M-step that is exact for priors and scales and, for the means, the
majorise-minimise step of iteratively reweighted least squares (exact for
beta = 2, monotone for beta <= 2; the weighted median's fixed point for beta = 1);
with `beta="learn"` each shape moves to the best of a small grid around it.
`gmm_init` fits the mixture to a Similarity layer's input and sets the layer;
if a Mex layer with offsets consumes its output, the offsets become
location-dependent log-priors: mixture weights re-estimated per offset region
with the components fixed (plus c_l), so the MEX input is a precise
log-likelihood. `unsupervised_init` runs every unsupervised step of a zoo model
in layer order (whitening, GMM, Coates' k-means, feature standardisation).
"""
import math
import time

import keras
import numpy as np
from keras import ops
from scipy.special import gammaln

from kernelzoo.layers import Mex, Similarity
from kernelzoo.ops.checks import (check_choice, image_batch, matrix, nonnegative_float, nonnegative_int,
                                  positive_float, positive_int)
from kernelzoo.ops.shapes import output_size, pad_amounts
from kernelzoo.progress import progress
from kernelzoo.zoo.simnet.preprocessing import sample_patch_rows

# Rows of the (rows x components x dims) slab evaluated per compiled call.
_CHUNK_ELEMENTS = 1 << 23
_BETA_GRID = (0.8, 0.9, 1.0, 1.12, 1.25)
# Learned shapes stay inside: the means' MM step is monotone for beta <= 2 only (uniform data pushed beta up by
# x1.25 an iteration until |x - mu|^beta overflowed float32 and the fit ended in NaN; above 2 the means can walk
# away from the data); 0.25 keeps Gamma(1 / beta) finite (test_gmm_init).
BETA_RANGE = (0.25, 2.0)
_LOG2 = math.log(2.0)


class GGMixture:
    """A fitted generalized-Gaussian mixture: means, scales (n, d), shapes, priors (n,), history."""

    def __init__(self, means, scales, shapes, priors, log_likelihood):
        self.means = means
        self.scales = scales
        self.shapes = shapes
        self.priors = priors
        self.log_likelihood = log_likelihood  # mean log-likelihood per row, one per EM iteration

    @property
    def weights(self):
        """u = alpha^(-beta), the Similarity weights."""
        return self.scales ** (-self.shapes[:, None])

    def log_normalizer(self):
        """sum_i log(beta_l / (2 alpha_li Gamma(1/beta_l))) per component (n,)."""
        b = self.shapes
        return (self.means.shape[1] * (np.log(b) - _LOG2 - gammaln(1.0 / b))
                - np.log(self.scales).sum(axis=1))

    def component_log_density(self, x):
        """log p_l(x) (rows, n) for rows x (rows, d), without the priors."""
        return _component_log_density(np.asarray(x, "float32"), self)

    def log_likelihood_of(self, x):
        """Mean log-likelihood of rows x under the mixture."""
        logp = self.component_log_density(x) + np.log(self.priors)
        return float(np.mean(_logsumexp(logp, axis=1)))


# ----------------------------------------------------------------------------- compiled kernels


def _jit(function):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(function, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax
        return jax.jit(function)
    return function


def _power(distance, beta, mode):
    """distance ** beta (distance >= 0); beta (n, 1) broadcast over (rows, n, d); static fast paths."""
    if mode == "l1":
        return distance
    if mode == "l2":
        return ops.square(distance)
    positive = distance > 0
    return ops.where(positive, ops.exp(beta * ops.log(ops.where(positive, distance, 1.0))), 0.0)


def _estep_kernel(x, mask, means, weights, beta, const, floor, mode):
    """Responsibilities and the IRLS / MM sums for one chunk of rows.

    x (C, d), mask (C,), means/weights (n, d), beta (n, 1), const (n,) = log prior + log normaliser.
    Returns r (C, n), log-likelihood per row (C,), S1 = sum r w x (n, d), S0 = sum r w (n, d)
    with w = max(|x - mu|, floor)^(beta - 2) (w = 1 for beta = 2: S1, S0 by matmuls).
    """
    if mode == "l2":  # sum_i u (x - mu)^2 = x^2 u^T - 2 x (u mu)^T + sum u mu^2
        quad = (ops.matmul(ops.square(x), ops.transpose(weights)) - 2.0 * ops.matmul(x, ops.transpose(weights * means))
                + ops.sum(weights * ops.square(means), axis=1)[None])
        logp = const[None] - quad
    else:
        distance = ops.abs(x[:, None, :] - means[None])
        logp = const[None] - ops.sum(weights[None] * _power(distance, beta[None], mode), axis=-1)
    top = ops.max(logp, axis=1, keepdims=True)
    total = top + ops.log(ops.sum(ops.exp(logp - top), axis=1, keepdims=True))
    r = ops.exp(logp - total) * mask[:, None]
    if mode == "l2":
        s1 = ops.matmul(ops.transpose(r), x)
        s0 = ops.zeros_like(s1) + ops.sum(r, axis=0)[:, None]
        return r, total[:, 0], s1, s0
    if mode == "l1":
        irls = r[..., None] / ops.maximum(distance, floor)
    else:
        irls = _power(ops.maximum(distance, floor), beta[None] - 2.0, mode) * r[..., None]
    return r, total[:, 0], ops.sum(irls * x[:, None, :], axis=0), ops.sum(irls, axis=0)


def _moment_kernel(x, r, means, betas, mode):
    """sum_rows r |x - mu|^b for each shape grid column b of betas (n, G): (G, n, d)."""
    if mode == "l2":  # r^T x^2 - 2 mu (r^T x) + mu^2 sum r
        moment = (ops.matmul(ops.transpose(r), ops.square(x)) - 2.0 * means * ops.matmul(ops.transpose(r), x)
                  + ops.square(means) * ops.sum(r, axis=0)[:, None])
        return ops.maximum(moment, 0.0)[None]
    distance = ops.abs(x[:, None, :] - means[None])
    # ops.map: G is not static once a retrace has relaxed the shapes (a fixed shape's fit, then a learned one's)
    return ops.map(lambda beta: ops.sum(r[..., None] * _power(distance, beta[None, :, None], mode), axis=0),
                   ops.transpose(betas))


def _density_kernel(x, means, weights, beta, const, mode):
    if mode == "l2":
        return const[None] - (ops.matmul(ops.square(x), ops.transpose(weights))
                              - 2.0 * ops.matmul(x, ops.transpose(weights * means))
                              + ops.sum(weights * ops.square(means), axis=1)[None])
    distance = ops.abs(x[:, None, :] - means[None])
    return const[None] - ops.sum(weights[None] * _power(distance, beta[None], mode), axis=-1)


_KERNELS = {}


def _kernel(name, mode):
    """The compiled kernel `name` for a static shape mode: "l1", "l2" or "general"."""
    if (name, mode) not in _KERNELS:
        function = {"estep": _estep_kernel, "moment": _moment_kernel, "density": _density_kernel}[name]
        _KERNELS[name, mode] = _jit(lambda *args: function(*args, mode=mode))
    return _KERNELS[name, mode]


def _mode(shapes):
    """Static fast path for the shapes: all 1 -> "l1", all 2 -> "l2", else "general"."""
    shapes = np.asarray(shapes)
    if np.all(shapes == 1.0):
        return "l1"
    if np.all(shapes == 2.0):
        return "l2"
    return "general"


def _chunks(x, n_components):
    """(start, stop, padded rows) with a fixed chunk size (one compilation per shape)."""
    rows = max(16, min(x.shape[0], _CHUNK_ELEMENTS // max(1, n_components * x.shape[1])))
    for start in range(0, x.shape[0], rows):
        part = x[start:start + rows]
        if part.shape[0] < rows:
            part = np.concatenate([part, np.zeros((rows - part.shape[0], x.shape[1]), x.dtype)])
        yield start, min(start + rows, x.shape[0]), part


def _component_log_density(x, mixture):
    """log p_l(x) with x and the means moved by the means' centroid (the l2 kernel cancels far from the origin)."""
    n = mixture.means.shape[0]
    centre = mixture.means.mean(axis=0)
    x = (x - centre).astype("float32")
    args = ((mixture.means - centre).astype("float32"), mixture.weights.astype("float32"),
            mixture.shapes.astype("float32")[:, None], mixture.log_normalizer().astype("float32"))
    out = np.empty((x.shape[0], n), "float32")
    for start, stop, part in _chunks(x, n):
        out[start:stop] = ops.convert_to_numpy(_kernel("density", _mode(mixture.shapes))(part, *args))[:stop - start]
    return out


def _logsumexp(a, axis):
    top = np.max(a, axis=axis, keepdims=True)
    return (top + np.log(np.sum(np.exp(a - top), axis=axis, keepdims=True))).squeeze(axis)


# ----------------------------------------------------------------------------- k-means


def _squared_distances(x, centers):
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None], 0.0)


def _centers_count(k, x):
    """`k` as a positive int of at most the rows of `x` (ValueError naming it otherwise)."""
    k = positive_int(k, "k")
    if k > x.shape[0]:
        raise ValueError(f"`k`={k} exceeds the number of rows ({x.shape[0]})")
    return k


def kmeans_pp(x, k, seed=0, verbose=False):
    """k-means++ seeds: k rows of x (M, d) drawn with probability proportional to D^2 (a bar when `verbose`)."""
    x = matrix(x, "x")
    k = _centers_count(k, x)
    rng = np.random.default_rng(seed)
    centers = np.empty((k, x.shape[1]), x.dtype)
    centers[0] = x[rng.integers(x.shape[0])]
    closest = _squared_distances(x, centers[:1])[:, 0]
    for i in progress(range(1, k), label=f"k-means++ seeding: {x.shape[0]:,} rows, {k} centers", verbose=verbose,
                      unit="seed"):
        total = closest.sum()
        index = rng.integers(x.shape[0]) if total <= 0 else rng.choice(x.shape[0], p=closest / total)
        centers[i] = x[index]
        closest = np.minimum(closest, _squared_distances(x, centers[i:i + 1])[:, 0])
    return centers


KMEANS_INITS = ("k-means++", "normal")


def kmeans(x, k, iterations=10, seed=0, init="k-means++", verbose=False, block=20_000):
    """Lloyd's k-means; empty clusters are re-seeded with random rows. Returns centers (k, d).

    init: "k-means++" (seeds drawn among the rows, D^2-weighted) or "normal" (Coates et al.'s
      run_kmeans: centers drawn from N(0, 0.1^2), every one moved by the first assignment; on
      whitened patches k-means++ picks outlying patches that few others join, which Coates'
      triangle coding turns into rarely active features).
    block: rows per distance block (memory stays at block x k floats).
    `verbose`: a progress bar for the seeding and one for the iterations.
    """
    x = matrix(x, "x")
    iterations = nonnegative_int(iterations, "iterations")
    init = check_choice("init", init, KMEANS_INITS)
    block = positive_int(block, "block")
    k = _centers_count(k, x)  # re-seeding empty clusters draws distinct rows
    if init == "normal":
        centers = (0.1 * np.random.default_rng(seed).standard_normal((k, x.shape[1]))).astype(x.dtype)
    else:
        centers = kmeans_pp(x, k, seed, verbose=verbose)
    rng = np.random.default_rng(seed + 1)
    for _ in progress(range(iterations), label=f"k-means: {x.shape[0]:,} rows, {k} centers", verbose=verbose,
                      unit="iteration"):
        labels = np.concatenate([np.argmin(_squared_distances(x[start:start + block], centers), axis=1)
                                 for start in range(0, len(x), block)])
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centers, dtype="float64")
        np.add.at(sums, labels, x)
        empty = counts == 0
        centers = np.where(empty[:, None], centers, sums / np.maximum(counts, 1)[:, None]).astype(x.dtype)
        if empty.any():
            centers[empty] = x[rng.choice(x.shape[0], int(empty.sum()), replace=False)]
    return centers


# ----------------------------------------------------------------------------- the mixture fit


def fit_gg_mixture(x, n, beta=2.0, *, scales="diagonal", iterations=30, tol=1e-5, seed=0, min_scale=0.05,
                   kmeans_iterations=2, verbose=False):
    """Fit a mixture of n generalized-Gaussian components (independent coordinates) to rows x by EM.

    Args:
      x: (M, d) data rows (e.g. whitened patches).
      n: number of components.
      beta: the shape: a positive float, one per component, or "learn" (start at 2 and
        move each component's shape to the best of a grid around it every iteration, inside `BETA_RANGE`).
      scales: "diagonal" (alpha_li fitted) or "fixed" (alpha = 1, the mixture an
        unweighted Similarity layer computes).
      iterations: EM iterations at most; stops early when the mean log-likelihood
        improves by less than `tol` (>= 0; 0 runs them all).
      seed: seeds k-means++ and re-seeding of empty components (the fit is deterministic).
      min_scale: scales are kept >= min_scale (> 0) * the data's per-coordinate scale (a constant
        coordinate: the mean of the others').
      kmeans_iterations: Lloyd iterations after the k-means++ seeding.
      verbose: progress bars (k-means, EM) and the final mean log-likelihood.
    Returns a GGMixture. The fit runs on the rows minus their per-coordinate median (the l2 kernels expand
    sum u (x - mu)^2, which cancels in float32 far from the origin, e.g. on 0-255 pixels) and adds it to the means.
    """
    x = matrix(x, "x").astype("float32")
    n = positive_int(n, "n")
    if n > x.shape[0]:
        raise ValueError(f"`n`={n} components need at least {n} rows in `x`, got {x.shape[0]}")
    scales = check_choice("scales", scales, ("diagonal", "fixed"))
    iterations = nonnegative_int(iterations, "iterations")
    tol = nonnegative_float(tol, "tol")
    kmeans_iterations = nonnegative_int(kmeans_iterations, "kmeans_iterations")
    min_scale = positive_float(min_scale, "min_scale")
    learn_beta = isinstance(beta, str)
    if learn_beta and beta != "learn":
        raise ValueError(f"`beta` must be a positive float, one per component, or 'learn', got {beta!r}")
    shapes = np.full((n,), 2.0) if learn_beta else _shape_vector(beta, n)
    rows, d = x.shape
    rng = np.random.default_rng(seed)
    centre = np.median(x, axis=0)
    x = x - centre

    means = kmeans(x, n, iterations=kmeans_iterations, seed=seed, verbose=verbose).astype("float64")
    # The per-coordinate scale of the data; a constant coordinate takes the others' mean, as a floor relative to
    # its 0 would give it weights ~1e12 / min_scale.
    deviation = np.mean(np.abs(x), axis=0)
    live = deviation > 0
    spread = np.where(live, deviation, deviation[live].mean() if live.any() else 1.0) + 1e-12
    floor = min_scale * spread
    if scales == "fixed":
        alphas = np.ones((n, d))
    else:  # alpha^beta = beta E|x - mu|^beta over the whole data, as a start
        alphas = np.stack([(b * np.mean(np.abs(x) ** b, axis=0)) ** (1.0 / b) for b in shapes])
        alphas = np.maximum(alphas, floor)
    priors = np.full((n,), 1.0 / n)
    mixture = GGMixture(means, alphas, shapes, priors, [])
    history = []
    started = time.time()
    for _ in progress(range(iterations), label=f"GG-mixture EM: {rows:,} rows, {n} components", verbose=verbose,
                      unit="iteration"):
        responsibilities = np.empty((rows, n), "float32")
        s1 = np.zeros((n, d))
        s0 = np.zeros((n, d))
        loglik = 0.0
        const = (np.log(mixture.priors) + mixture.log_normalizer()).astype("float32")
        args = (mixture.means.astype("float32"), mixture.weights.astype("float32"),
                mixture.shapes.astype("float32")[:, None], const, np.float32(1e-3 * spread.mean()))
        for start, stop, part in _chunks(x, n):
            mask = (np.arange(part.shape[0]) < stop - start).astype("float32")
            r, total, a, b = _kernel("estep", _mode(mixture.shapes))(part, mask, *args)
            responsibilities[start:stop] = ops.convert_to_numpy(r)[:stop - start]
            loglik += float(np.sum(ops.convert_to_numpy(total)[:stop - start]))
            s1 += ops.convert_to_numpy(a)
            s0 += ops.convert_to_numpy(b)
        history.append(loglik / rows)
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol * max(1.0, abs(history[-2])):
            break
        counts = responsibilities.sum(axis=0, dtype="float64")
        dead = counts < max(2.0, 1e-3 * rows / n)
        means = np.where(s0 > 0, s1 / np.maximum(s0, 1e-30), mixture.means)
        if dead.any():  # re-seed starved components at rows drawn uniformly (without replacement)
            means[dead] = x[rng.choice(rows, int(dead.sum()), replace=False)]
        grid = np.clip(shapes[:, None] * np.asarray(_BETA_GRID)[None], *BETA_RANGE) if learn_beta else shapes[:, None]
        moments = np.zeros((grid.shape[1], n, d))
        for start, stop, part in _chunks(x, n):
            r = np.zeros((part.shape[0], n), "float32")
            r[:stop - start] = responsibilities[start:stop]
            moments += ops.convert_to_numpy(_kernel("moment", _mode(grid))(part, r, means.astype("float32"),
                                                                           grid.astype("float32")))
        safe_counts = np.maximum(counts, 1e-12)[None, :, None]
        if scales == "fixed":
            candidate_alphas = np.ones_like(moments)
        else:
            candidate_alphas = np.maximum((grid.T[:, :, None] * moments / safe_counts)
                                          ** (1.0 / grid.T[:, :, None]), floor)
        if learn_beta:  # profile expected log-likelihood of each grid shape, per component
            b = grid.T[:, :, None]
            q = (np.log(b) - _LOG2 - gammaln(1.0 / b) - np.log(candidate_alphas)
                 - moments / safe_counts / candidate_alphas ** b).sum(axis=2)
            best = np.argmax(np.where(np.isfinite(q), q, -np.inf), axis=0)
            shapes = grid[np.arange(n), best]
            alphas = candidate_alphas[best, np.arange(n)]
        else:
            alphas = candidate_alphas[0]
        if dead.any() and scales != "fixed":
            alphas[dead] = np.maximum(spread, floor)
        priors = np.maximum(counts, 1e-3) / np.maximum(counts, 1e-3).sum()
        mixture = GGMixture(means, alphas, shapes.copy(), priors, history)
    mixture.log_likelihood = history
    mixture.means = mixture.means + centre
    if verbose and history:
        print(f"GG-mixture EM: {len(history)} iterations, mean log-likelihood {history[-1]:.5f} "
              f"({time.time() - started:.0f} s)", flush=True)
    return mixture


def _shape_vector(beta, n):
    values = np.asarray(beta, dtype="float64")
    if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != n) or not np.all(values > 0):
        raise ValueError(f"`beta` must be a positive float, {n} positive floats or 'learn', got {beta!r}")
    return np.broadcast_to(values, (n,)).copy()


# ----------------------------------------------------------------------------- patches and layers


def extract_patches(maps, kernel_size, strides=(1, 1), padding="valid"):
    """All patches of feature maps (N, H, W, C) as (N, H', W', kh * kw * C), Conv2D kernel order."""
    maps = np.asarray(maps, "float32")
    (kh, kw), (sh, sw) = kernel_size, strides
    if padding == "same":
        maps = np.pad(maps, ((0, 0), pad_amounts(maps.shape[1], kh, sh, padding),
                             pad_amounts(maps.shape[2], kw, sw, padding), (0, 0)))
        padding_used = "valid"
    else:
        padding_used = padding
    out_h = output_size(maps.shape[1], kh, sh, padding_used)
    out_w = output_size(maps.shape[2], kw, sw, padding_used)
    windows = np.lib.stride_tricks.sliding_window_view(maps, (kh, kw), axis=(1, 2))  # N, H-, W-, C, kh, kw
    windows = windows[:, :sh * (out_h - 1) + 1:sh, :sw * (out_w - 1) + 1:sw]
    return np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(
        maps.shape[0], out_h, out_w, kh * kw * maps.shape[-1])


def _layer_inputs(model, layer, images, batch_size=256):
    """What `layer` receives when `model` is applied to images (numpy, in batches)."""
    if model is None:
        return np.asarray(images, "float32")
    feed = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, layer.input)
    return np.concatenate([ops.convert_to_numpy(feed(np.asarray(images[s:s + batch_size], "float32")))
                           for s in range(0, len(images), batch_size)])


def _sample_layer_patches(model, layer, images, num_patches, rng, batch_size=256):
    """Up to num_patches patches (rows) of the layer's input, spread evenly over images and positions.

    Patches have the layer's kernel_size / strides / padding (a Similarity layer), else 1x1.
    """
    def layer_patches(batch):
        inputs = _layer_inputs(model, layer, batch)
        if not isinstance(layer, Similarity):
            return inputs
        if not layer.built:
            layer.build(inputs.shape)
        if inputs.ndim != 4 or inputs.shape[-1] != layer.templates.shape[2]:
            raise ValueError(f"`images` give layer inputs of shape {inputs.shape}, but {layer.name!r} "
                             f"expects {layer.templates.shape[2]} channels")
        return extract_patches(inputs, layer.kernel_size, layer.strides, layer.padding)
    return sample_patch_rows(layer_patches, images, num_patches, batch_size, rng)


def _find_similarity(model_or_layer, layer):
    if isinstance(model_or_layer, Similarity):
        if layer is not None:
            raise ValueError("`layer` is only used when `model_or_layer` is a model")
        return None, model_or_layer
    if not isinstance(model_or_layer, keras.Model):
        raise ValueError("`model_or_layer` must be a keras.Model or a kernelzoo Similarity layer, "
                         f"got {type(model_or_layer).__name__}")
    model = model_or_layer
    candidates = [lay for lay in model.layers if isinstance(lay, Similarity)]
    if layer is None:
        if not candidates:
            raise ValueError("`model_or_layer` has no Similarity layer to initialise")
        return model, candidates[0]
    if isinstance(layer, str):
        matches = [lay for lay in candidates if lay.name == layer]
        if not matches:
            raise ValueError(f"`layer`={layer!r} is not a Similarity layer of the model "
                             f"(Similarity layers: {[lay.name for lay in candidates]})")
        return model, matches[0]
    if layer not in candidates:
        raise ValueError(f"`layer` must be the name or instance of one of the model's Similarity layers "
                         f"{[lay.name for lay in candidates]}, got {layer!r}")
    return model, layer


def _following_mex(model, layer):
    """The Mex layer with offsets that consumes `layer`'s output directly, or None."""
    if model is None:
        return None
    for candidate in model.layers:
        if isinstance(candidate, Mex) and candidate.offsets_variable is not None:
            try:
                if candidate.input is layer.output:
                    return candidate
            except (AttributeError, ValueError):
                continue
    return None


def gmm_init(model_or_layer, images, *, layer=None, beta=None, num_patches=20_000, iterations=15, seed=0,
             offsets=True, offset_images=100, prior_iterations=20, min_scale=0.05, verbose=False):
    """Initialise a Similarity layer (and the offsets of the Mex after it) by a generalized-Gaussian mixture.

    Args:
      model_or_layer: a functional/Sequential keras.Model holding a Similarity layer, or the layer.
      images: inputs of the model (N, H, W, C), or of the layer when a layer is given. Unfitted
        preprocessing layers before the Similarity layer should be fitted first (`unsupervised_init`).
      layer: with a model: which Similarity layer (name or instance); default the first.
      beta: the shape. Default: the layer's p (1 for l1, 2 for l2, its p for lp, learned when
        the layer learns p). A float or "learn" (needs similarity="lp", learn_p=True).
      num_patches: patches sampled from the layer's input for the fit.
      iterations: EM iterations at most.
      seed: makes the sampling and the fit deterministic.
      offsets: also set the offsets of a Mex layer with offsets fed by this layer (location priors).
      offset_images: images drawn at random (seeded) to estimate the per-region priors: the first ones would
        follow the caller's order (a class-sorted training set gave them all one class).
      prior_iterations: EM iterations of the per-region prior estimation (0: the global priors everywhere).
      min_scale: scale floor relative to the data's per-coordinate scale.
    Returns a dict: the GGMixture ("mixture"), the layer names set, the per-region priors.
    Unweighted layers get a mixture with alpha fixed to 1 (u = 1 is what they compute).
    """
    model, sim = _find_similarity(model_or_layer, layer)
    images = image_batch(images)
    num_patches = positive_int(num_patches, "num_patches")
    if num_patches < sim.filters:
        raise ValueError(f"`num_patches`={num_patches} must be at least the {sim.filters} templates of {sim.name!r} "
                         "(one patch per mixture component)")
    offset_images = positive_int(offset_images, "offset_images")
    prior_iterations = nonnegative_int(prior_iterations, "prior_iterations")
    if sim.similarity == "linear":
        raise ValueError("`model_or_layer`: gmm_init needs an l1/l2/lp Similarity layer, "
                         f"{sim.name!r} has similarity='linear'")
    layer_p = {"l1": 1.0, "l2": 2.0}.get(sim.similarity, sim.p)
    if beta is None:
        beta = "learn" if sim.learn_p else layer_p
    elif isinstance(beta, str):
        if beta != "learn":
            raise ValueError(f"`beta` must be a positive float or 'learn', got {beta!r}")
        if not sim.learn_p:
            raise ValueError("`beta`='learn' needs a Similarity layer with similarity='lp' and learn_p=True, "
                             f"{sim.name!r} has similarity={sim.similarity!r}, learn_p={sim.learn_p}")
    else:
        value = _shape_vector(beta, sim.filters)
        if not sim.learn_p and not np.allclose(value, layer_p):
            raise ValueError(f"`beta`={beta!r} differs from the layer's fixed p={layer_p!r}; "
                             "use similarity='lp' with learn_p=True to choose the shape")

    rng = np.random.default_rng(seed)
    rows = _sample_layer_patches(model, sim, images, num_patches, rng)
    if rows.shape[0] < sim.filters:
        raise ValueError(f"`images` give {rows.shape[0]} patches of {sim.name!r}'s input, fewer than its "
                         f"{sim.filters} templates")
    if verbose:
        print(f"gmm_init: {sim.name}: {sim.filters} components on {rows.shape[0]} patches of dim "
              f"{rows.shape[1]}, beta={beta}", flush=True)
    mixture = fit_gg_mixture(rows, sim.filters, beta, scales="diagonal" if sim.weighted else "fixed",
                             iterations=iterations, seed=seed, min_scale=min_scale, verbose=verbose)
    shape = tuple(sim.templates.shape)
    sim.templates.assign(mixture.means.T.reshape(shape).astype("float32"))
    if sim.weighted:
        sim.template_weights.assign(mixture.weights.T.reshape(shape).astype("float32"))
    if sim.learn_p:
        sim.p_variable.assign(mixture.shapes.astype("float32"))
    report = {"mixture": mixture, "similarity_layer": sim.name, "mex_layer": None, "region_priors": None}

    mex = _following_mex(model, sim) if offsets else None
    if mex is not None:
        picked = rng.choice(len(images), min(offset_images, len(images)), replace=False)
        priors = _set_location_offsets(model, sim, mex, mixture, images[picked], prior_iterations)
        report.update(mex_layer=mex.name, region_priors=priors)
    return report


def _set_location_offsets(model, sim, mex, mixture, images, prior_iterations):
    """Offsets b[q, r, a, b, l] = log lambda_{q, l} (+ c_l unless the layer adds its normaliser)."""
    regions_h, regions_w, k, bh, bw, block = mex.offsets_variable.shape
    n = sim.filters
    if block != n:
        raise ValueError(f"gmm_init can set the offsets of {mex.name!r} only when its channel block spans all "
                         f"{n} templates (channel_block=None), got channel_block={block}")
    patches = extract_patches(_layer_inputs(model, sim, images), sim.kernel_size, sim.strides, sim.padding)
    height, width = patches.shape[1:3]
    out_h = output_size(height, mex.pool_size[0], mex.strides[0], mex.padding)
    out_w = output_size(width, mex.pool_size[1], mex.strides[1], mex.padding)
    region_of_row = _positions_to_regions(height, mex.pool_size[0], mex.strides[0], mex.padding, out_h,
                                          regions_h)
    region_of_col = _positions_to_regions(width, mex.pool_size[1], mex.strides[1], mex.padding, out_w,
                                          regions_w)
    constant = 0.0 if sim.normalization_term else mixture.log_normalizer()
    offsets = np.zeros((regions_h, regions_w, n))
    priors = np.zeros((regions_h, regions_w, n))
    for qh in range(regions_h):
        for qw in range(regions_w):
            rows = patches[:, region_of_row == qh][:, :, region_of_col == qw].reshape(-1, patches.shape[-1])
            logp = mixture.component_log_density(rows)
            log_prior = np.log(mixture.priors).astype("float32")
            # EM on the mixture weights only; a region no position is assigned to keeps the global priors
            for _ in range(prior_iterations if len(rows) else 0):
                joint = logp + log_prior
                r = np.exp(joint - _logsumexp(joint, axis=1)[:, None])
                log_prior = np.log(np.maximum(r.mean(axis=0, dtype="float64"), 1e-12)).astype("float32")
                log_prior -= _logsumexp(log_prior, axis=0)
            priors[qh, qw] = np.exp(log_prior)
            offsets[qh, qw] = log_prior + constant
    values = np.broadcast_to(offsets[:, :, None, None, None, :], (regions_h, regions_w, k, bh, bw, n))
    mex.offsets_variable.assign(values.astype("float32"))
    return priors


def _positions_to_regions(size, window, stride, padding, out_size, regions):
    """Offset region of each input position along one axis (the region of the first output using it)."""
    before = pad_amounts(size, window, stride, padding)[0]
    region_of_output = (np.arange(out_size) * regions) // out_size
    assigned = np.full((size,), -1)
    for o in range(out_size):
        start = o * stride - before
        for i in range(max(start, 0), min(start + window, size)):
            if assigned[i] < 0:
                assigned[i] = region_of_output[o]
    return assigned


# ----------------------------------------------------------------------------- whole-model init


def unsupervised_init(model, images, *, seed=0, num_patches=20_000, iterations=15, similarity=True,
                      kmeans_patches=400_000, kmeans_iterations=50, verbose=False):
    """Every unsupervised step of a zoo model, in layer order, from unlabeled images.

    PatchWhitening -> adapt (ZCA, 4 * num_patches patches); Similarity (l1/l2/lp) -> gmm_init, with the
    offsets of the Mex after it; TriangleCoding -> k-means centroids as Coates et al.'s code
    (`kmeans_patches` whitened patches, `kmeans_iterations` Lloyd iterations from N(0, 0.1^2) centers);
    keras Normalization -> adapt on its input features. Returns a dict of reports.
    similarity=False fits the preprocessing only and leaves the Similarity layers at their
    random initialisation (the paper's Sec. 6.3 ablation).
    """
    from kernelzoo.zoo.simnet.preprocessing import PatchWhitening
    from kernelzoo.zoo.simnet.models import TriangleCoding

    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}")
    images = image_batch(images)
    num_patches = positive_int(num_patches, "num_patches")
    kmeans_patches = positive_int(kmeans_patches, "kmeans_patches")
    kmeans_iterations = nonnegative_int(kmeans_iterations, "kmeans_iterations")
    reports = {}
    for layer in model.layers:
        if isinstance(layer, PatchWhitening):
            layer.adapt(_layer_inputs(model, layer, images), max_patches=4 * num_patches, seed=seed)
            reports[layer.name] = "zca"
        elif isinstance(layer, Similarity) and layer.similarity != "linear" and similarity:
            reports[layer.name] = gmm_init(model, images, layer=layer, num_patches=num_patches,
                                           iterations=iterations, seed=seed, verbose=verbose)
        elif isinstance(layer, TriangleCoding):
            rows = _sample_layer_patches(model, layer, images, kmeans_patches, np.random.default_rng(seed))
            centroids = kmeans(rows, layer.filters, iterations=kmeans_iterations, seed=seed, init="normal",
                               verbose=verbose)
            layer.centroids.assign(centroids.T.astype("float32"))
            reports[layer.name] = "kmeans"
        elif isinstance(layer, keras.layers.Normalization):
            layer.adapt(_layer_inputs(model, layer, images))
            reports[layer.name] = "standardize"
    return reports
