"""Unsupervised CKN anchors: spherical k-means on normalised patches of a layer's input.

`spherical_kmeans` maximises the mean cosine similarity of unit rows to their nearest centroid
(Lloyd steps: assign by largest dot product, centroid = normalised mean), from k-means++ seeds
(D^2 sampling with D^2 = 2 - 2 cos: a row, or a copy of it, is never drawn twice) or k random rows.
`layer_patches` samples a CKN layer's input patches uniformly over images and positions;
`init_ckn_layers` runs both on every CKN layer of a model in order and freezes it, so the next
layer sees the final features.
"""
import time

import keras
import numpy as np
import scipy.sparse
from keras import ops

from kernelzoo.layers.ckn import CKNConv2D
from kernelzoo.ops.checks import check_choice, matrix, nonnegative_float, positive_int
from kernelzoo.progress import progress
from kernelzoo.zoo.simnet.init import extract_patches
from kernelzoo.zoo.simnet.preprocessing import sample_patch_rows

INITS = ("k-means++", "random")
# Rows whose norm is below this are dropped (a constant or zero-padded patch has no direction).
MIN_NORM = 1e-6
# Rows this close to a k-means++ seed (D^2 = 2 - 2 cos, float32 rounding of a copy's cosine) count as copies.
SAME_DISTANCE = 1e-5
_BLOCK_ELEMENTS = 1 << 24  # rows x centroids per similarity block


def spherical_kmeans(rows, k, *, init="k-means++", candidates=1, max_iter=50, tol=1e-4, seed=0, verbose=False):
    """(centroids (k, d) of unit norm, report) of the non-zero rows (M, d), M >= k.

    `candidates` > 1 is the greedy k-means++ seeding (Arthur & Vassilvitskii 2007, Sec. 6; scikit-learn's
    default with 2 + log k): each seed is the best, for the potential sum D^2, of that many D^2-sampled
    rows; it finds well-separated but unequal clusters far more reliably than one draw.
    Stops after `max_iter` Lloyd steps or when the mean cosine similarity gains less than `tol`
    (relative). Empty clusters take the rows farthest from their centroid. Deterministic for a seed.
    The report holds the objective per step, the step count and the rows used.
    """
    k = positive_int(k, "k")
    init = check_choice("init", init, INITS)
    candidates = positive_int(candidates, "candidates")
    max_iter = positive_int(max_iter, "max_iter")
    tol = nonnegative_float(tol, "tol")
    x = _unit_rows(rows)
    if x.shape[0] < k:
        raise ValueError(f"`rows` has {x.shape[0]} non-zero rows, fewer than k={k}")
    rng = np.random.default_rng(seed)
    centroids = _seeds(x, k, init, rng, verbose, candidates)
    history = []
    for _ in progress(range(max_iter), label=f"spherical k-means: {x.shape[0]:,} rows, {k} centroids",
                      verbose=verbose, unit="step"):
        similarity, labels = _assign(x, centroids)
        history.append(float(similarity.mean()))
        sums = np.asarray(_one_hot(labels, k) @ x)
        empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
        sums[empty] = x[np.argsort(similarity)[:len(empty)]]
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), MIN_NORM)
        if len(history) > 1 and history[-1] - history[-2] <= tol * abs(history[-2]):
            break
    return centroids, {"objective": history, "steps": len(history), "rows": int(x.shape[0]), "init": init}


def _unit_rows(rows):
    x = matrix(rows, "rows").astype("float32")
    norms = np.linalg.norm(x, axis=1)
    keep = norms > MIN_NORM
    x = x[keep]
    x /= norms[keep, None]
    return x


def _seeds(x, k, init, rng, verbose, candidates=1):
    if init == "random":
        return x[np.sort(rng.choice(x.shape[0], k, replace=False))].copy()
    centroids = np.empty((k, x.shape[1]), "float32")
    index = rng.integers(x.shape[0])
    centroids[0] = x[index]
    distance = _seed_distance(x, centroids[0])
    chosen = np.zeros(x.shape[0], bool)
    for i in progress(range(1, k), label="k-means++ seeding", verbose=verbose, unit="seed"):
        chosen[index] = True
        distance[index] = 0.0
        total = distance.sum(dtype="float64")
        # D^2 sampling never draws a chosen row nor a copy of one (distance 0); when only such rows are
        # left (fewer distinct rows than k) an unchosen row is drawn uniformly.
        if total <= 0:
            index = rng.choice(np.flatnonzero(~chosen))
            new = _seed_distance(x, x[index])
        elif candidates == 1:
            index = rng.choice(x.shape[0], p=distance / total)
            new = _seed_distance(x, x[index])
        else:
            picks = rng.choice(x.shape[0], candidates, p=distance / total)
            trial = _seed_distance(x, x[picks].T)                     # (rows, candidates)
            best = int(np.argmin(np.minimum(trial, distance[:, None]).sum(axis=0, dtype="float64")))
            index, new = picks[best], trial[:, best]
        centroids[i] = x[index]
        np.minimum(distance, new, out=distance)
    return centroids


def _seed_distance(x, seeds):
    """D^2 = 2 - 2 cos to a seed (d,) or to each column of (d, t); below SAME_DISTANCE (a copy of the seed
    up to float rounding) it is 0."""
    distance = np.maximum(2.0 - 2.0 * (x @ seeds), 0.0)
    distance[distance < SAME_DISTANCE] = 0.0
    return distance


def _assign(x, centroids):
    """(largest cosine similarity, its centroid) per row, in blocks of rows."""
    block = max(1, _BLOCK_ELEMENTS // len(centroids))
    similarity = np.empty(x.shape[0], "float32")
    labels = np.empty(x.shape[0], "int64")
    for start in range(0, x.shape[0], block):
        dots = x[start:start + block] @ centroids.T
        labels[start:start + block] = np.argmax(dots, axis=1)
        similarity[start:start + block] = np.take_along_axis(dots, labels[start:start + block, None], 1)[:, 0]
    return similarity, labels


def _one_hot(labels, k):
    """The sparse (k, rows) matrix that sums rows per label."""
    return scipy.sparse.csr_matrix((np.ones(len(labels), "float32"), (labels, np.arange(len(labels)))),
                                   shape=(k, len(labels)))


def layer_patches(feed, layer, images, max_patches, seed=0, batch_size=64):
    """Up to `max_patches` input patches (rows, kh * kw * C) of a CKN `layer`, spread evenly over
    `images` and positions; `feed` maps images to the layer's input (a keras.Model)."""
    def patches(batch):
        maps = ops.convert_to_numpy(feed(np.asarray(batch, "float32"), training=False))
        return extract_patches(maps, layer.kernel_size, (1, 1), layer.padding)
    return sample_patch_rows(patches, images, max_patches, batch_size, np.random.default_rng(seed))


def ckn_layers(model):
    """The CKNConv2D layers of `model`, in order."""
    return [layer for layer in model.layers if isinstance(layer, CKNConv2D)]


def init_ckn_layers(model, images, *, max_patches=300_000, init="k-means++", max_iter=50, tol=1e-4, seed=0,
                    verbose=False):
    """Spherical k-means anchors for every CKNConv2D of `model`, in order, each frozen once set.

    Returns {layer name: k-means report with the seconds it took}.
    """
    reports = {}
    layers = ckn_layers(model)
    if not layers:
        raise ValueError(f"`model` {model.name!r} has no CKNConv2D layer")
    for index, layer in enumerate(layers):
        started = time.time()
        feed = keras.Model(model.input, layer.input)
        rows = layer_patches(feed, layer, images, max_patches, seed=seed + index)
        centroids, report = spherical_kmeans(rows, layer.filters, init=init, max_iter=max_iter, tol=tol,
                                             seed=seed + index, verbose=verbose)
        layer.set_anchors(centroids.T)  # refreshes the factor of a frozen layer, freezing that of a trainable one
        layer.trainable = False
        reports[layer.name] = dict(report, seconds=round(time.time() - started, 1))
        if verbose:
            print(f"{layer.name}: {report['steps']} steps, mean cosine {report['objective'][-1]:.4f}, "
                  f"{reports[layer.name]['seconds']:.0f} s", flush=True)
    return reports
