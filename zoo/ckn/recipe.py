"""How the unsupervised CKNs train (Mairal 2016 Sec. 4; issue 14): the recipe hooks `kernelzoo train` calls.

- initialise: spherical k-means anchors for each CKN layer in turn, on patches of its input sampled
  uniformly over the training images and positions; each layer is frozen (its Nystrom factor
  becomes a stored constant) before the next is fitted. Labels are not used; the whitening has
  nothing to fit. The run folder's first checkpoint holds this stage, for --resume.
- fit (`kernelzoo.zoo.frozen_features`): the linear classifier on the centred, normalised features
  of every training image ("features" layer), its L2 chosen on held-out training images; the
  presets use the reference's loss, the one-vs-rest squared hinge (an L2-SVM).

Design choices for ckn_cifar10_unsup_64_256, held-out accuracy with --limit-train 20000 --holdout 5000
--validate-only --kmeans-patches 100000 (15k training images, the same 5k held out):
  whitening=patches (per-image ZCA of 3x3 patches as channels, eps 0.1), logistic  0.7030 (l2 1e-3)
  whitening=image (the reference's), logistic                                     0.7140 (l2 3e-4)
  whitening=image, squared hinge                                                  0.7170 (l2 1e-3)
  whitening=image, squared hinge, nystrom_shift=0.01 (the reference's)            0.7176 (l2 1e-3)
"""
import numpy as np

from kernelzoo.zoo.ckn.kmeans import init_ckn_layers
from kernelzoo.zoo.frozen_features import FrozenFeaturesRecipe
from kernelzoo.zoo.recipe import Data, TinyRun


class UnsupervisedCKNRecipe(FrozenFeaturesRecipe):
    """Anchors without labels, then an L2-regularised linear classifier on the frozen features."""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--kmeans-patches", type=int, default=None,
                            help="patches sampled per CKN layer for spherical k-means")

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        return init_ckn_layers(model, np.asarray(data.train[0]), max_patches=hp["kmeans_patches"],
                               init=hp["kmeans_init"], max_iter=hp["kmeans_iterations"], seed=seed,
                               verbose=bool(verbose))


def tiny_runs():
    """A two-layer CKN on 12x12 stripes: k-means, then three L2 values and the refit."""
    from kernelzoo.zoo.data.synthetic import stripes
    data = Data(train=stripes(240, size=12), test=stripes(60, size=12, seed=1), source="stripes 12x12",
                class_names=("h", "v", "flat"))
    overrides = {"filters": (8, 16), "subsamplings": (2, 3)}
    hp = {"epochs": 4, "holdout": 60, "kmeans_patches": 3000, "l2_grid": (1.0, 0.1, 0.01)}
    return [TinyRun("ckn_cifar10_unsup_64_256", data, overrides, hp)]


def recipe_for(preset):
    """Every CKN-family preset so far is unsupervised (the supervised CKN-5 recipe is still to come)."""
    return UnsupervisedCKNRecipe()
