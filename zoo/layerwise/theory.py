"""Sec. 4 of paper 003: gradient descent on the two-layer CNN for the two-level model (Theorem 1).

For (X, y) from a two-level model (X(0) -> X(1) = X, real s x s patches), written as columns of
non-overlapping patches X in R^(s^2 x m0^2) (`patch_columns`), the network is
N_{K,W}(X) = <W, K^T X> with K in R^(s^2 x n) (a non-overlapping convolution with n kernels) and
W in R^(m0^2 x n) (a linear layer on the flattened map). With the loss l_y(y_hat) = -y y_hat, only K
trained and W ~ N(0, 1) fixed, the gradient is -E[y X] W whatever K is (`correlation`, exact, or
`correlation_of_sample`), so T steps of
gradient descent give K_T = K_0 + eta T E[y X] W (`two_layer_gd`). K_0's columns are uniform on the
sphere of radius delta / (2 sqrt(n)).

Theorem 1 (orthonormal patches): with n > pi / (0.23 theta) log(|C0|^2 / fail) kernels and
T > (delta + 2) k / (eta xi) steps (`theorem1_schedule`; theta, xi of Sec. 3.1, from
HierarchicalModel.separation(0)), with probability >= 1 - fail over W:
  1. patches of one class c (x1, x2 in S_c) embed within delta: ||K_T^T x1 - K_T^T x2|| < delta;
  2. patches of different classes embed more than delta apart.
`embedding_gaps` measures both (the largest within-class and the smallest between-class distance):
gradient descent recovers the latent classes from (X, y) alone (Lemma 3: the gradient sees a
patch x of class c only through F_c / k, the same for every patch of c).
"""
import math

import numpy as np

from kernelzoo.ops.checks import float_in_range, nonnegative_int, positive_float, positive_int


def patch_columns(images, patch_size):
    """Images (N, H, W[, C]) as (N, s^2 C, (H / s)(W / s)): the non-overlapping s x s patches as columns
    (the "im2col" of Sec. 4.1), each patch in (row, column, channel) order."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    s = positive_int(patch_size, "patch_size")
    n, height, width, channels = images.shape
    if height % s or width % s:
        raise ValueError(f"images of {height} x {width} do not split into {s} x {s} patches")
    blocks = images.reshape(n, height // s, s, width // s, s, channels).transpose(0, 2, 4, 5, 1, 3)
    return blocks.reshape(n, s * s * channels, (height // s) * (width // s))


def correlation(model):
    """E[y X] (s^2 C, m0^2), y = +-1 (label 1 -> +1), exact for a two-level HierarchicalModel:
    E[y X_j] = sum_c F_c[j] mean(S_c)."""
    if model.depth != 1:
        raise ValueError(f"Sec. 4 is about two-level models (depth 1), got depth {model.depth}")
    frequency = model.labeled_frequency(0).reshape(model.num_classes[0], -1)      # (C0, m0^2)
    means = model.pixels.mean(axis=1).reshape(model.num_classes[0], -1)            # (C0, s^2 C)
    return means.T @ frequency


def correlation_of_sample(images, labels, patch_size):
    """E[y X] estimated on a sample: images (N, H, W[, C]) with labels 0/1 (y = 2 label - 1)."""
    columns = patch_columns(images, patch_size)
    signs = 2.0 * np.asarray(labels, np.float64) - 1.0
    if signs.shape != (len(columns),):
        raise ValueError(f"`labels` must hold one label per image, got shape {np.shape(labels)}")
    return np.tensordot(signs, columns, axes=1) / len(signs)


def two_layer_gd(corr, n, *, lr=0.1, steps=100, delta=0.1, seed=0):
    """(K_T (s^2 C, n), W (m0^2, n)): `steps` gradient steps of Sec. 4.1 with learning rate `lr` from
    K_0 (columns uniform on the sphere of radius delta / (2 sqrt(n))), W ~ N(0, 1) fixed; `corr` = E[y X]."""
    corr = np.asarray(corr, np.float64)
    n, steps = positive_int(n, "n"), nonnegative_int(steps, "steps")
    lr, delta = positive_float(lr, "lr"), positive_float(delta, "delta")
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(corr.shape[1], n))
    k = rng.normal(size=(corr.shape[0], n))
    k *= delta / (2.0 * math.sqrt(n)) / np.linalg.norm(k, axis=0, keepdims=True)
    gradient = -corr @ w  # d/dK E[-y <W, K^T X>] = -E[y X] W: the same at every step for this loss
    for _ in range(steps):
        k -= lr * gradient
    return k, w


def embedding_gaps(kernel, patches, classes):
    """(largest distance between the embeddings K^T x of two patches of one class, smallest between two
    of different classes): patches (P, s^2 C) as rows, classes (P,), with two patches of some class and two
    classes (else there is no such pair)."""
    embedded = np.asarray(patches, np.float64).reshape(len(patches), -1) @ np.asarray(kernel, np.float64)
    classes = np.asarray(classes)
    labels, counts = np.unique(classes, return_counts=True)
    if classes.shape != (len(embedded),) or len(labels) < 2 or counts.max() < 2:
        raise ValueError(f"`classes` must hold one class per patch ({len(embedded)}), two patches of one class and "
                         f"two classes at least, got {len(labels)} classes of {counts.tolist()} patches "
                         f"(shape {classes.shape})")
    distance = np.linalg.norm(embedded[:, None] - embedded[None], axis=-1)
    same = classes[:, None] == classes[None]
    np.fill_diagonal(same, False)
    different = classes[:, None] != classes[None]
    return float(distance[same].max()), float(distance[different].min())


def theorem1_schedule(theta, xi, num_classes, set_size, delta, lr, fail=0.05):
    """(n, T) of Theorem 1: n > pi / (0.23 theta) log(|C0|^2 / fail) (the union bound over the pairs of
    classes of Lemma 5) and T > (delta + 2) k / (lr xi) (our reading of the garbled condition; each
    step adds lr |w_i . F_c| / k to a kernel's response to a patch of class c). Each setting is checked by name:
    fail is a probability in (0, 1), delta, lr, theta and xi are positive, |C0| and k positive ints."""
    theta, xi = positive_float(theta, "theta"), positive_float(xi, "xi")
    num_classes, set_size = positive_int(num_classes, "num_classes"), positive_int(set_size, "set_size")
    delta, lr = positive_float(delta, "delta"), positive_float(lr, "lr")
    fail = float_in_range(fail, "fail", 0, 1, "()")
    n = math.floor(math.pi / (0.23 * theta) * math.log(num_classes ** 2 / fail)) + 1
    steps = math.floor((delta + 2.0) * set_size / (lr * xi)) + 1
    return n, steps
