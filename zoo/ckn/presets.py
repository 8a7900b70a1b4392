"""The CKN family's presets (Mairal 2016; issue 14): unsupervised two-layer CKNs and the supervised CKN-5 on CIFAR-10.

Every model takes raw 0-255 CIFAR pixels (the whitening is inside). The paper figures are the
reference implementation's (CKN-Pytorch-image README), which chose its regularisation (unsupervised) or its
epoch (supervised) on the test set; ours are chosen on 5,000 held-out training images.
"""
from kernelzoo.zoo.preset import CIFAR10_CLASSES, CIFAR10_JPEG_TEST, DatasetSpec, Figure, InputSpec, Preset

_INPUTS = InputSpec((32, 32, 3), "uint8", "RGB pixels 0-255; the whitening is inside the model")
_CIFAR10 = DatasetSpec("cifar10", "DATA/cifar10: the CIFAR-10 python or binary archive/folder, or a "
                                  "train/<class>/, test/<class>/ image folder or its .tar.gz", "test")
_REFERENCE = "CKN-Pytorch-image README (regularisation picked on the test set)"
# Unsupervised init and classifier (zoo/ckn/recipe.py): the reference's image whitening, k-means on 300k
# patches per layer, one-vs-rest squared hinge (the reference's loss) with its L2 chosen on 5k held-out
# training images over 3e-3 .. 1e-5 (half decades; the held-out optimum of the 64/256 model on 15k-45k
# training images lies at 1e-3 .. 1e-4).
_UNSUPERVISED = {"batch_size": 128, "kmeans_patches": 300_000,
                 "kmeans_init": "k-means++", "kmeans_iterations": 30, "holdout": 5000,
                 "l2_grid": (3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5),
                 "l2_patience": 3, "lbfgs_iterations": 1000, "classifier_loss": "squared_hinge"}


def _unsupervised(filters, kernel_sizes, paper, weights=None, sha256=None, measured=None, **recipe):
    name = f"ckn_cifar10_unsup_{filters[0]}_{filters[1]}"
    return Preset(name=name, family="ckn", builder="kernelzoo.zoo.ckn.models.ckn",
                  config={"filters": filters, "kernel_sizes": kernel_sizes, "subsamplings": (2, 6), "kernels": "exp",
                          "sigmas": 0.6, "whitening": "image", "trainable_anchors": False},
                  description=f"unsupervised CKN, 2 layers of {filters[0]} and {filters[1]} anchors (patches "
                              f"{kernel_sizes[0]}x{kernel_sizes[0]}, {kernel_sizes[1]}x{kernel_sizes[1]}; "
                              "pooling 2, 6), "
                              "spherical k-means + linear classifier (squared hinge), CIFAR-10",
                  inputs=_INPUTS, task="classification", dataset=_CIFAR10, class_names=CIFAR10_CLASSES,
                  recipe={**_UNSUPERVISED, **recipe}, card="ckn_cifar10_unsup.md", weights=weights, sha256=sha256,
                  measured=None if measured is None else Figure(measured, CIFAR10_JPEG_TEST), paper=paper)


# The reference's CKN-5 (ckn/models.py SupCKNetCifar10_5): the exp kernels' sigma 0.5, its Nystrom shift 0.01, no
# feature normalisation (the classifier reads the flattened last map, with a bias). Its training (cifar10_sup.sh,
# experiments/cifar10_sup.py): SGD, momentum 0.9, lr 0.1, batch 128, 105 epochs, lr / 10 at epochs 60, 85, 100
# (MultiStepLR); the rest of the recipe is the recipe module's SUPERVISED_DEFAULTS.
_SUPERVISED_5 = Preset(
    name="ckn_cifar10_sup5", family="ckn", builder="kernelzoo.zoo.ckn.models.ckn",
    config={"filters": (128,) * 5, "kernel_sizes": (3, 1, 3, 1, 3), "subsamplings": (2, 1, 2, 1, 3),
            "kernels": ("exp", "poly2", "exp", "poly2", "exp"), "sigmas": 0.5, "whitening": "image",
            "nystrom_shift": 0.01, "trainable_anchors": True, "normalize_features": False},
    description="supervised CKN-5, 5 layers of 128 anchors (patches 3,1,3,1,3; pooling 2,1,2,1,3; exp kernels "
                "sigma 0.5 on the 3x3 layers, poly2 on the 1x1), anchors and classifier trained by SGD from "
                "spherical k-means (squared hinge), CIFAR-10",
    inputs=_INPUTS, task="classification", dataset=_CIFAR10, class_names=CIFAR10_CLASSES,
    recipe={"epochs": 105, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
            "schedule": "milestones", "lr_milestones": (60, 85, 100)},
    card="ckn_cifar10_sup5.md",
    paper=Figure(0.861, "CKN-Pytorch-image README, CKN-5 (best epoch on the test set, no augmentation)"))

PRESETS = (
    _unsupervised((64, 256), (3, 3), Figure(0.775, _REFERENCE), weights="ckn_cifar10_unsup_64_256.keras",
                  sha256="466a5ba6848e7f6456e3dc97e628448c498b755155ae38636d2e8caa2c1cf1c2", measured=0.7476),
    _unsupervised((256, 1024), (3, 3), Figure(0.820, _REFERENCE), weights="ckn_cifar10_unsup_256_1024.keras",
                  sha256="e36e186e0fd147660e4d9f75e49c80de0a4b1e6da6ca0d800bdc25f67d0caf9f", measured=0.7852),
    # Its features cached in float16 (kernelzoo.zoo.frozen_features; the card says why).
    _unsupervised((512, 8192), (3, 2), Figure(0.840, _REFERENCE), feature_dtype="float16"),
    _SUPERVISED_5,
)
