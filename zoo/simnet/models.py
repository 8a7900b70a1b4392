"""The CIFAR-10 networks of SimNets (paper 000 Sec. 4 and 6, Fig. 3).

- `simnet_patch_labeling` (Fig. 3a): whitened 6x6x3 patches -> weighted lp
  Similarity (n templates, p in {1, 2}) -> MEX over the n channels with one
  instance per class and offsets shared in 2x2 regions (xi1 = 1) -> MEX over all
  positions (xi2 -> 0, the mean) -> 10 logits: the rule after Eq. 8,
  out(r) = MEX_xi2_{i,j} MEX_xi1_l { u_l^T phi(x_ij, z_l) + b_{r, l, q(i, j)} }.
- `convnet_baseline` (Fig. 3b): brightness/contrast-normalised image -> 6x6
  convolution with n filters + ReLU -> max pooling over the four quadrants ->
  dropout -> dense 10. (Quadrant pooling matches the paper's parameter counts:
  the 6,400-filter ConvNet is ~9x the 400-template weighted SimNet.)
- `coates_baseline` (Fig. 3c; Coates, Lee & Ng 2011): whitened 6x6x3 patches ->
  k-means "triangle" coding f_k = max(0, mean(z) - z_k), z_k = ||x - c_k|| ->
  sum pooling over the four quadrants -> standardisation -> linear classifier.

All three take raw pixels (0-255 floats); every preprocessing step is a layer
saved in the model. Templates, whitening and feature statistics come from
`kernelzoo.zoo.simnet.init.unsupervised_init`. keras.ops only (backend agnostic).
"""
import keras
import numpy as np
from keras import ops

from kernelzoo.layers import Mex, Similarity
from kernelzoo.layers.kernels import squared_distances
from kernelzoo.layers.regularizers import sgd_weight_decay
from kernelzoo.ops.checks import (boolean, check_choice, float_in_range, image_shape,
                                   nonnegative_int, positive_float, positive_int, real)
from kernelzoo.ops.checks import normalize_tuple
from kernelzoo.ops.shapes import output_size
from kernelzoo.zoo.augment import RandomShiftFlip
from kernelzoo.zoo.simnet.preprocessing import BrightnessContrastNormalization, PatchWhitening

_POOL_MODES = ("sum", "mean", "max")
POOL_IMPLEMENTATIONS = ("auto", "slices")


@keras.saving.register_keras_serializable(package="kernelzoo")
class QuadrantPooling(keras.layers.Layer):
    """Pool each channel over a grid of spatial regions (2x2 = the four quadrants).

    Region boundaries follow the MEX offset regions: position i of H belongs to
    region (i * R) // H (for 27 positions: rows 0-13 and 14-26, as Coates et al.).
    Output (N, R_h, R_w, C).

    implementation "auto": one max / average pooling op wherever one "same" pooling window per
    region reproduces these boundaries (27 -> 2 regions does), else one reduction per region's
    slice, whose gradient costs a full-size tensor per region; "slices" always takes the latter
    (for comparison: `kernelzoo bench simnet --pooling auto,slices`).
    """

    def __init__(self, grid=(2, 2), mode="sum", implementation="auto", **kwargs):
        super().__init__(**kwargs)
        self.grid = normalize_tuple(grid, "grid")
        self.mode = check_choice("mode", mode, _POOL_MODES)
        self.implementation = check_choice("implementation", implementation, POOL_IMPLEMENTATIONS)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        height, width = input_shape[1:3]
        if height is None or width is None or height < self.grid[0] or width < self.grid[1]:
            raise ValueError(f"QuadrantPooling needs static spatial dimensions >= grid {self.grid}, "
                             f"got input shape {input_shape}")

    @staticmethod
    def _bounds(size, regions):
        owner = (np.arange(size) * regions) // size
        return [(int(np.argmax(owner == r)), int(size - np.argmax(owner[::-1] == r))) for r in range(regions)]

    @staticmethod
    def _same_window(size, bounds):
        """The window (= stride) of a "same" pooling over `size` positions whose windows are exactly
        `bounds` (`_bounds`' regions), else None."""
        regions, window = len(bounds), max(hi - lo for lo, hi in bounds)
        if -(-size // window) != regions:
            return None
        top = (regions * window - size) // 2  # TensorFlow's "same" puts the odd padding row last
        same = [(max(r * window - top, 0), min((r + 1) * window - top, size)) for r in range(regions)]
        return window if same == bounds else None

    def call(self, inputs):
        size = inputs.shape[1:3]
        rows, cols = (self._bounds(n, r) for n, r in zip(size, self.grid))
        windows = (self._same_window(size[0], rows), self._same_window(size[1], cols))
        if self.implementation == "slices" or None in windows:
            return self._pool_by_slices(inputs, rows, cols)
        if self.mode == "max":
            return ops.max_pool(inputs, windows, windows, padding="same")
        mean = ops.average_pool(inputs, windows, windows, padding="same")  # the padding is not counted
        if self.mode == "mean":
            return mean
        counts = np.outer([hi - lo for lo, hi in rows], [hi - lo for lo, hi in cols])
        return mean * ops.cast(counts[None, :, :, None], mean.dtype)

    def _pool_by_slices(self, inputs, rows, cols):
        reduce = {"sum": ops.sum, "mean": ops.mean, "max": ops.max}[self.mode]
        out = [ops.stack([reduce(inputs[:, r0:r1, c0:c1, :], axis=(1, 2)) for c0, c1 in cols], axis=1)
               for r0, r1 in rows]
        return ops.stack(out, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.grid + (input_shape[3],)

    def get_config(self):
        config = super().get_config()
        config.update({"grid": self.grid, "mode": self.mode, "implementation": self.implementation})
        return config


@keras.saving.register_keras_serializable(package="kernelzoo")
class ClassCentering(keras.layers.Layer):
    """Subtract, at every position, the mean over the last axis (the classes).

    Before a linear position pooling this shifts every class's logit by the same amount: no
    prediction and no softmax changes, but the logits stay O(10) instead of the -7e4 of raw
    similarity sums, whose float32 rounding flipped near-tied test images between builds and
    between Keras and ONNX (issue 12).
    """

    def call(self, inputs):
        return inputs - ops.mean(inputs, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kernelzoo")
class TriangleCoding(keras.layers.Layer):
    """Coates et al.'s triangle activation: f_k(x) = max(0, mean_j z_j - z_k), z_k = ||x - c_k||_2.

    Acts on the channel vector at each position (1x1: feed it PatchWhitening's output); the distances come from
    `squared_distances` (centred first: points far from 0 keep their digits).
    Centroids (C, filters) come from k-means (`unsupervised_init`); `trainable` decides
    whether supervised training moves them (Coates et al. keep them fixed).
    """

    def __init__(self, filters, centroids_initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.filters = positive_int(filters, "filters")
        self.centroids_initializer = keras.initializers.get(centroids_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"TriangleCoding needs a known number of channels, got {input_shape}")
        self.centroids = self.add_weight(name="centroids", shape=(input_shape[-1], self.filters),
                                         initializer=self.centroids_initializer)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        squared = squared_distances(ops.reshape(x, (-1, x.shape[-1])), ops.transpose(self.centroids))
        distance = ops.reshape(ops.sqrt(squared + 1e-12), (*ops.shape(x)[:-1], self.filters))
        return ops.relu(ops.mean(distance, axis=-1, keepdims=True) - distance)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters,
                       "centroids_initializer": keras.initializers.serialize(self.centroids_initializer)})
        return config


def _augmented(images, augment_flip, augment_shift):
    """`images` through `RandomShiftFlip` (layer "augment": training only, reflected borders) when asked for."""
    augment_flip, augment_shift = boolean(augment_flip, "augment_flip"), nonnegative_int(augment_shift, "augment_shift")
    if not (augment_flip or augment_shift):
        return images
    if None not in images.shape[1:3] and augment_shift >= min(images.shape[1:3]):  # reflection needs a smaller shift
        raise ValueError(f"`augment_shift`={augment_shift} must be smaller than the image "
                         f"({images.shape[1]}x{images.shape[2]})")
    return RandomShiftFlip(augment_shift, augment_flip, "reflect", dtype="float32", name="augment")(images)


def simnet_patch_labeling(n=400, p=2, weighted=True, xi1=1.0, xi2=0.0, learn_xi=False, learn_p=False,
                          num_classes=10, input_shape=(32, 32, 3), patch_size=6, offset_regions=(2, 2),
                          whitening=True, zca_eps=0.1, weight_decay=0.0, position_pooling="mean", center_logits=None,
                          augment_flip=False, augment_shift=0, name=None):
    """The patch-labeling SimNet of Fig. 3a (paper 000 Sec. 4, the rule after Eq. 8).

    Args:
      n: number of templates.
      p: the lp order, 1 or 2 (similarity "l1" / "l2"); with learn_p=True, the initial p of "lp".
      weighted: learn similarity weights u >= 0 (else u = 1).
      xi1, xi2: the two MEX parameters (1 and 0 in the paper: soft max over templates, then mean).
      learn_xi: train xi1 and xi2 (else fixed).
      learn_p: similarity="lp" with a trainable p per template.
      num_classes: MEX instances of the first MEX layer (one per class).
      input_shape: (H, W, C) of the raw images (0-255).
      patch_size: similarity patch size (6 in the paper); stride 1.
      offset_regions: regions over which offsets are shared ((2, 2): quadrants).
      whitening: contrast-normalise and ZCA-whiten patches (else plain patches).
      zca_eps: added to the patch covariance's eigenvalues before the ZCA (Coates et al.'s 0.1; larger
        values amplify the high frequencies, where JPEG artefacts live, less).
      weight_decay: SGD weight decay on the similarity weights and the offsets (none on templates).
      position_pooling: "mean" (MEX with xi2, the network of Sec. 4) or "sum" (that MEX times the
        number of positions: the same argmax, as the rule sum_ij MEX_xi1 written after Eq. 8, but
        logits 729x larger at 32x32, which changes the softmax loss's temperature).
      center_logits: subtract the mean over classes at every position before the position MEX
        (`ClassCentering`: same predictions and softmax, logits of a sane size). Only possible while
        that MEX is the mean (xi2 = 0, not learned); None: whenever it is.
      augment_flip, augment_shift: in training only, mirror each image left-right with probability 1/2
        and shift it by up to `augment_shift` pixels (reflected borders) before the whitening
        (`RandomShiftFlip`, layer "augment"; ours: the paper trains on the plain images).
    Returns an uncompiled keras.Model from images to logits; run `unsupervised_init` on it.
    """
    n = positive_int(n, "n")
    num_classes = positive_int(num_classes, "num_classes")
    shape = image_shape(input_shape)
    patch = normalize_tuple(patch_size, "patch_size")
    regions = normalize_tuple(offset_regions, "offset_regions")
    whitening = boolean(whitening, "whitening")
    if learn_p:
        similarity, p_value = "lp", positive_float(p, "p")
    else:
        if p not in (1, 2) or isinstance(p, bool):
            raise ValueError(f"`p` must be 1 or 2 (or any p > 0 with learn_p=True), got {p!r}")
        similarity, p_value = ("l1", "l2")[int(p) - 1], None
    xi1, xi2 = real(xi1, "xi1"), real(xi2, "xi2")
    regularizer = sgd_weight_decay(weight_decay)
    position_pooling = check_choice("position_pooling", position_pooling, ("mean", "sum"))
    linear_pooling = xi2 == 0 and not learn_xi
    center_logits = linear_pooling if center_logits is None else boolean(center_logits, "center_logits")
    if center_logits and not linear_pooling:
        raise ValueError("`center_logits` needs the position MEX to be the mean (xi2 = 0 and learn_xi False): "
                         f"otherwise centring changes the predictions; got xi2={xi2}, learn_xi={learn_xi}")
    out_h = output_size(shape[0], patch[0], 1, "valid")
    out_w = output_size(shape[1], patch[1], 1, "valid")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"`patch_size` {patch} is larger than `input_shape` {shape}")
    if regions[0] > out_h or regions[1] > out_w:
        raise ValueError(f"`offset_regions` {regions} exceeds the {out_h}x{out_w} similarity map")

    inputs = keras.Input(shape, name="image")
    x = _augmented(inputs, augment_flip, augment_shift)
    if whitening:
        x = PatchWhitening(patch, zca_eps=zca_eps, name="patch_whitening")(x)
        kernel = 1
    else:  # the similarity reads the 0-255 pixels: an identity preprocessing layer says so (zoo.inputs)
        x = keras.layers.Rescaling(1.0, name="pixels")(x)
        kernel = patch
    x = Similarity(n, kernel, similarity=similarity, weighted=weighted, p=p_value, learn_p=learn_p,
                   templates_initializer=keras.initializers.RandomNormal(stddev=1.0),
                   weights_initializer="ones",
                   weights_regularizer=regularizer, name="similarity")(x)
    x = Mex(num_instances=num_classes, xi=xi1, learn_xi=learn_xi, offsets=regions,
            offsets_regularizer=regularizer, name="mex_templates")(x)
    if center_logits:
        x = ClassCentering(name="class_centering")(x)
    x = Mex(pool_size=(out_h, out_w), channel_block=1, xi=xi2, learn_xi=learn_xi, name="mex_positions")(x)
    if position_pooling == "sum":
        x = keras.layers.Rescaling(float(out_h * out_w), name="position_sum")(x)
    outputs = keras.layers.Flatten(name="logits")(x)
    kind = ("w" if weighted else "") + similarity
    return keras.Model(inputs, outputs, name=name or f"simnet_patch_labeling_{kind}_n{n}")


def convnet_baseline(n=400, patch_size=6, pool_grid=(2, 2), dropout=0.5, num_classes=10,
                     input_shape=(32, 32, 3), weight_decay=0.0, augment_flip=False, augment_shift=0, name=None):
    """The ConvNet of Fig. 3b: normalised image -> conv(n, 6x6) + ReLU -> quadrant max pool -> dense.

    Args:
      n: number of convolution filters.
      patch_size: filter size (6, stride 1, as the SimNet's patches).
      pool_grid: pooling regions ((2, 2): max over each quadrant).
      dropout: dropout rate before the dense layer (chosen by cross-validation in the paper).
      weight_decay: global SGD weight decay (kernels of both layers).
      augment_flip, augment_shift: as `simnet_patch_labeling`'s, before the normalisation (ours).
    """
    n = positive_int(n, "n")
    num_classes = positive_int(num_classes, "num_classes")
    shape = image_shape(input_shape)
    patch = normalize_tuple(patch_size, "patch_size")
    dropout = float_in_range(dropout, "dropout", 0, 1, "[)")
    regularizer = sgd_weight_decay(weight_decay)
    inputs = keras.Input(shape, name="image")
    x = BrightnessContrastNormalization(name="normalization")(_augmented(inputs, augment_flip, augment_shift))
    x = keras.layers.Conv2D(n, patch, activation="relu", kernel_regularizer=regularizer, name="conv")(x)
    x = QuadrantPooling(pool_grid, mode="max", name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"convnet_baseline_n{n}")


def coates_baseline(n=1600, patch_size=6, pool_grid=(2, 2), train_templates=False, num_classes=10,
                    input_shape=(32, 32, 3), zca_eps=0.1, weight_decay=0.0, name=None):
    """The single-layer network of Coates et al. (Fig. 3c): triangle k-means coding, quadrant sum pooling.

    Args:
      n: number of k-means centroids.
      train_templates: let SGD move the centroids (the paper found it does not help).
      zca_eps: added to the patch covariance's eigenvalues before the ZCA (Coates et al.'s 0.1).
      weight_decay: SGD weight decay of the linear classifier, for fine-tuning.
    The zoo's recipe (kernelzoo.zoo.simnet.recipe.CoatesRecipe) fits the classifier as Coates et al.:
    an L2-SVM on the fixed, standardised features (the "features" layer).
    """
    n = positive_int(n, "n")
    num_classes = positive_int(num_classes, "num_classes")
    shape = image_shape(input_shape)
    patch = normalize_tuple(patch_size, "patch_size")
    regularizer = sgd_weight_decay(weight_decay)
    inputs = keras.Input(shape, name="image")
    x = PatchWhitening(patch, zca_eps=zca_eps, name="patch_whitening")(inputs)
    x = TriangleCoding(n, trainable=boolean(train_templates, "train_templates"), name="triangle_coding")(x)
    x = QuadrantPooling(pool_grid, mode="sum", name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Normalization(name="features")(x)  # standardised: the fixed features the classifier sees
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"coates_baseline_n{n}")


# The four networks of the paper's comparison (Fig. 4/5), as the benchmark and the figure name them.
KINDS = ("simnet_wl1", "simnet_wl2", "convnet", "coates")


def build_kind(kind, n):
    """The zoo's model of `kind` (one of KINDS) with n templates, filters or centroids: the weighted l1 / l2
    SimNet, the ConvNet or the Coates et al. network, each with its builder's defaults otherwise."""
    kind = check_choice("kind", kind, KINDS)
    if kind.startswith("simnet"):
        return simnet_patch_labeling(n=n, p=int(kind[-1]), weighted=True)
    return (convnet_baseline if kind == "convnet" else coates_baseline)(n=n)


def parameter_count(model):
    """Trainable parameters (the paper's "learned parameters")."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))
