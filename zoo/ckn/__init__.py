"""The CKN family (Mairal 2014/2016, paper 004): convolutional kernel networks on CIFAR-10.

The layer is `kernelzoo.layers.CKNConv2D`; this package holds the family's whitening layers
(ImageWhitening, PerImageWhitening, registered for `keras.models.load_model`), the `ckn` builder, spherical k-means,
the linear classifier (squared hinge or logistic), the recipe and the presets.
"""
from kernelzoo.zoo.ckn.kmeans import init_ckn_layers, spherical_kmeans
from kernelzoo.zoo.ckn.models import ckn
from kernelzoo.zoo.ckn.preprocessing import ImageWhitening, PerImageWhitening

__all__ = ["ckn", "ImageWhitening", "PerImageWhitening", "spherical_kmeans", "init_ckn_layers"]
