"""How the CKNs train (Mairal 2016 Sec. 4; issue 14): the recipe hooks `kernelzoo train` calls.

Both recipes start from spherical k-means anchors for each CKN layer in turn, on patches of its input
sampled uniformly over the training images and positions; each layer is frozen (its Nystrom factor
becomes a precomputed weight) before the next is fitted. Labels are not used; the whitening has nothing to fit.

UnsupervisedCKNRecipe (the ckn_cifar10_unsup_* presets): the anchors stay as k-means set them.
- fit (`kernelzoo.zoo.frozen_features`): the linear classifier on the centred, normalised features
  of every training image ("features" layer), its L2 chosen on held-out training images; the
  presets use the reference's loss, the one-vs-rest squared hinge (an L2-SVM). The run folder's first
  checkpoint holds the k-means stage, for --resume. ckn_cifar10_unsup_512_8192 caches its 73,728 features
  per image in float16 (`feature_dtype`, its card).

Design choices for ckn_cifar10_unsup_64_256, held-out accuracy with --limit-train 20000 --holdout 5000
--validate-only --kmeans-patches 100000 (15k training images, the same 5k held out):
  whitening=patches (per-image ZCA of 3x3 patches as channels, eps 0.1), logistic  0.7030 (l2 1e-3)
  whitening=image (the reference's), logistic                                     0.7140 (l2 3e-4)
  whitening=image, squared hinge                                                  0.7170 (l2 1e-3)
  whitening=image, squared hinge, nystrom_shift=0.01 (the reference's)            0.7176 (l2 1e-3)

SupervisedCKNRecipe (ckn_cifar10_sup5; the reference's experiments/cifar10_sup.py as cifar10_sup.sh runs it):
- initialise: the k-means anchors, then the classifier fitted by L-BFGS on the features of the training images
  (squared hinge, L2 = alpha D / N s^2: the reference's Linear.fit, s the mean per-image RMS of the D features,
  N images, `classifier_alpha` its --alpha), then every CKN layer unfrozen.
- compile / fit: anchors (on the sphere: the layer's parameterisation, renormalised after every step) and
  classifier trained together by SGD with momentum on the one-vs-rest squared hinge with the Keras loop; the lr
  divided by 10 at each epoch of `lr_milestones` (schedule "milestones"). `alternating` (default, the reference's
  --alternating): before every epoch after the first the classifier is refitted by L-BFGS from its current
  weights on the current features (ClassifierRefit). `augment`: the reference's --augmentation inside the model.
- `precision`: "float32" or "mixed_bfloat16" (the CKN layers' patch-anchor products in bfloat16, see
  CKNConv2D); model.keras is always float32 with its CKN layers frozen (the Nystrom factors precomputed weights:
  it exports without eigendecomposition), the checkpoints keep them trainable for --resume.
"""
import argparse
import inspect

import keras
import numpy as np

from kernelzoo.ops.checks import boolean, check_choice, int_in_range, nonnegative_float, positive_int
from kernelzoo.zoo.ckn.kmeans import INITS, ckn_layers, init_ckn_layers
from kernelzoo.zoo.ckn.models import ckn
from kernelzoo.zoo.frozen_features import FrozenFeaturesRecipe, feature_extractor
from kernelzoo.zoo.linear_classifier import fit_logistic, one_vs_rest_squared_hinge
from kernelzoo.zoo.precision import MixedPrecisionMixin, float32_copy
from kernelzoo.zoo.recipe import Data, Recipe, TinyRun

# What SupervisedCKNRecipe reads besides recipe.DEFAULTS (a preset's recipe overrides them): the reference's
# values (experiments/cifar10_sup.py: --sampling-patches 150000, spherical k-means of at most 100 steps,
# --alpha 0.001 as cifar10_sup.sh runs it); L-BFGS stops earlier than its 5000 steps on standardised features.
# `alternating`: cifar10_sup.sh's --alternating, the classifier refitted by L-BFGS before every epoch after the first.
SUPERVISED_DEFAULTS = {"kmeans_patches": 150_000, "kmeans_init": "k-means++", "kmeans_iterations": 100,
                       "classifier_alpha": 1e-3, "lbfgs_iterations": 1000, "augment": False,
                       "alternating": True, "holdout": 5000}


def add_kmeans_option(parser):
    parser.add_argument("--kmeans-patches", type=int, default=None,
                        help="patches sampled per CKN layer for spherical k-means")


def check_kmeans(hp):
    """`hp`, once the k-means hyper-parameters it holds are checked, so that a bad value is named before any work
    (both recipes; a frozen-features preset of another family has none)."""
    if "kmeans_init" in hp:
        check_choice("kmeans_init", hp["kmeans_init"], INITS)
    for key in ("kmeans_patches", "kmeans_iterations"):
        if key in hp:
            positive_int(hp[key], key)
    return hp


def kmeans_anchors(model, images, hp, seed, verbose):
    """Every CKN layer's anchors by spherical k-means, in order, each frozen once set; {layer: report}.
    `kmeans_patches` is checked against the widest layer first: too few would fail at its k-means, after the others'."""
    widest = max((layer.filters for layer in ckn_layers(model)), default=1)
    patches = int_in_range(hp["kmeans_patches"], "kmeans_patches", widest)
    return init_ckn_layers(model, np.asarray(images), max_patches=patches, init=hp["kmeans_init"],
                           max_iter=hp["kmeans_iterations"], seed=seed, verbose=bool(verbose))


def check_anchors_override(overrides, recipe):
    """`overrides` (or {}), refused when their `trainable_anchors` contradicts `recipe`'s `trainable_anchors`: its
    initialise would overturn it (k-means freezes the layers, the supervised recipe then unfreezes them)."""
    overrides = overrides or {}
    if ("trainable_anchors" in overrides
            and boolean(overrides["trainable_anchors"], "trainable_anchors") != recipe.trainable_anchors):
        raise ValueError(f"`trainable_anchors`={overrides['trainable_anchors']!r} contradicts the preset's recipe, "
                         f"{type(recipe).__name__}, whose anchors are {'' if recipe.trainable_anchors else 'not '}"
                         "learned (the preset's `trainable_anchors` chooses the recipe)")
    return overrides


class UnsupervisedCKNRecipe(FrozenFeaturesRecipe):
    """Anchors without labels, then an L2-regularised linear classifier on the frozen features."""

    trainable_anchors = False

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_kmeans_option(parser)

    def hyperparameters(self, preset, **changes):
        """The frozen-features recipe's, the k-means ones checked (`check_kmeans`)."""
        return check_kmeans(super().hyperparameters(preset, **changes))

    def build(self, preset, data, overrides=None, hp=None):
        """A `trainable_anchors` override must agree with the recipe (`check_anchors_override`)."""
        return super().build(preset, data, check_anchors_override(overrides, self), hp)

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        return kmeans_anchors(model, data.train[0], hp, seed, verbose)


class SupervisedCKNRecipe(MixedPrecisionMixin, Recipe):
    """k-means anchors and an L-BFGS classifier, then both trained by SGD (module docstring)."""

    checkpoints_initialisation = True  # CKN-5's k-means and L-BFGS: about an hour on 2 cores
    trainable_anchors = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_kmeans_option(parser)
        parser.add_argument("--augment", action="store_true", default=None,
                            help="supervised CKN: random shifts (up to 4 pixels) and mirroring in training")
        parser.add_argument("--alternating", action=argparse.BooleanOptionalAction, default=None,
                            help="supervised CKN: refit the classifier by L-BFGS before every epoch (default: the "
                                 "preset's; the reference's --alternating)")
        parser.add_argument("--classifier-alpha", type=float, default=None,
                            help="supervised CKN: the classifier's scale-free L2 alpha (L2 = alpha D / N s^2; "
                                 "default 1e-3, the reference's --alpha)")

    def hyperparameters(self, preset, **changes):
        hp = check_kmeans({**SUPERVISED_DEFAULTS, **super().hyperparameters(preset, **changes)})
        boolean(hp["augment"], "augment")
        boolean(hp["alternating"], "alternating")
        nonnegative_float(hp["classifier_alpha"], "classifier_alpha")
        positive_int(hp["lbfgs_iterations"], "lbfgs_iterations")
        return hp

    def build(self, preset, data, overrides=None, hp=None):
        """The builder's `augment` is the recipe's; a `trainable_anchors` override must agree with the recipe
        (`check_anchors_override`)."""
        augment = {} if hp is None else {"augment": hp["augment"]}
        return super().build(preset, data, {**augment, **check_anchors_override(overrides, self)}, hp)

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        """k-means anchors, the classifier fitted on their features, then the CKN layers unfrozen; the report."""
        x, y = data.train
        report = {"kmeans": kmeans_anchors(model, x, hp, seed, verbose)}
        report["classifier"] = fit_classifier(model, x, y, hp["classifier_alpha"], hp["lbfgs_iterations"],
                                              hp["batch_size"])
        if verbose:
            print(f"classifier: L2 {report['classifier']['l2']:.3g}, loss {report['classifier']['loss']:.4f} "
                  f"({report['classifier']['iterations']} L-BFGS iterations)", flush=True)
        for layer in ckn_layers(model):
            layer.trainable = True
        return report

    def fit(self, model, data, out_dir, hp, *, callbacks=None, verbose=1, **kwargs):
        """The Keras loop; with `alternating`, a ClassifierRefit before every epoch but the first."""
        if hp["alternating"]:
            images, labels = self.targets(model, data, "train")
            refit = ClassifierRefit(images, labels, hp["classifier_alpha"], hp["lbfgs_iterations"], hp["batch_size"],
                                    verbose=verbose)
            callbacks = [refit, *(callbacks or [])]
        return super().fit(model, data, out_dir, hp, callbacks=callbacks, verbose=verbose, **kwargs)

    def loss(self, model):
        return one_vs_rest_squared_hinge

    def saved_model(self, model, hp):
        """model.keras (and the model `fit` returns) is `frozen_float32` of the trained model, at any precision."""
        return frozen_float32(model)


def frozen_float32(model):
    """An uncompiled float32 copy of `model` (same weights) with its CKN layers frozen: their Nystrom factors
    precomputed weights, so it exports without eigendecomposition."""
    copy = float32_copy(model)
    for layer in ckn_layers(copy):
        layer.trainable = False
    return copy


def fit_classifier(model, images, labels, alpha, max_iter, batch_size=128, warm_start=False):
    """The "logits" Dense fitted by L-BFGS (squared hinge) on the "features" of `images`, with the reference's
    scale-free L2 alpha D / N s^2 (s: the features' mean per-image RMS); its report with l2 and s. `warm_start`:
    L-BFGS starts from the layer's current weights (the reference's refits), else from zeros."""
    features = feature_extractor(model).predict(np.asarray(images), batch_size=batch_size, verbose=0)
    scale = float(np.mean(np.sqrt(np.mean(np.square(features, dtype="float64"), axis=1))))
    l2 = alpha * features.shape[1] / len(features) * scale ** 2
    head = model.get_layer("logits")
    start = head.get_weights() if warm_start else None
    kernel, bias, report = fit_logistic(features, labels, head.units, l2, start=start, max_iter=max_iter,
                                        loss="squared_hinge")
    head.set_weights([kernel, bias])
    return dict(report, alpha=alpha, feature_scale=scale)


class ClassifierRefit(keras.callbacks.Callback):
    """Before every epoch but the first (whose classifier is the initial fit), refit the classifier by L-BFGS on the
    current features of the training images, from its current weights: the reference's alternating optimisation
    (experiments/cifar10_sup.py --alternating). The unnormalised features are small (RMS ~0.01), so SGD alone
    barely moves the classifier (ckn_cifar10_sup5.md). Deterministic, so a resumed run refits as an unbroken one."""

    def __init__(self, images, labels, alpha, max_iter, batch_size, verbose=0):
        super().__init__()
        self.images, self.labels = images, labels
        self.alpha, self.max_iter, self.batch_size, self.verbose = alpha, max_iter, batch_size, verbose

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            return
        report = fit_classifier(self.model, self.images, self.labels, self.alpha, self.max_iter, self.batch_size,
                                warm_start=True)
        if self.verbose:
            print(f"classifier refitted: loss {report['loss']:.4f} ({report['iterations']} L-BFGS iterations)",
                  flush=True)


def tiny_runs():
    """Two-layer CKNs on 12x12 stripes. Unsupervised: k-means, then three L2 values and the refit. Supervised: the
    CKN-5 recipe on two layers of 8 anchors (3x3 exp, 1x1 poly2), k-means and L-BFGS, then 4 SGD epochs (lr / 10
    after 2 and 3); its classifier starts strongly regularised (alpha 10), so the SGD epochs have loss to remove,
    and is not refitted between epochs (a refit would put that regularised fit back before every epoch; the
    alternating scheme has its own tests in tests/test_ckn_supervised.py)."""
    from kernelzoo.zoo.data.synthetic import stripes
    data = Data(train=stripes(240, size=12), test=stripes(60, size=12, seed=1), source="stripes 12x12",
                class_names=("h", "v", "flat"))
    unsupervised = TinyRun("ckn_cifar10_unsup_64_256", data, {"filters": (8, 16), "subsamplings": (2, 3)},
                           {"epochs": 4, "holdout": 60, "kmeans_patches": 3000, "l2_grid": (1.0, 0.1, 0.01)})
    supervised = TinyRun("ckn_cifar10_sup5", data, {"filters": (8, 8), "kernel_sizes": (3, 1), "subsamplings": (2, 3),
                                                    "kernels": ("exp", "poly2")},
                         {"epochs": 4, "batch_size": 16, "lr_milestones": (2, 3), "kmeans_patches": 3000,
                          "kmeans_iterations": 20, "classifier_alpha": 10.0, "alternating": False})
    return [unsupervised, supervised]


def recipe_for(preset):
    """SupervisedCKNRecipe when the preset's anchors are learned (`trainable_anchors`, by default), else
    UnsupervisedCKNRecipe."""
    learned = preset.config.get("trainable_anchors", inspect.signature(ckn).parameters["trainable_anchors"].default)
    return SupervisedCKNRecipe() if learned else UnsupervisedCKNRecipe()
