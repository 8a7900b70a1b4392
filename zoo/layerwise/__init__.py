"""The layerwise family (Malach & Shalev-Shwartz, *Provable guarantees on learning hierarchical
generative models with deep CNNs*, ICLR 2019 submission; paper 003): the hierarchical generative
model and its synthetic digits (`generative`), gradient descent on the two-layer CNN of the two-level
analysis (`theory`), the layer-wise algorithm (`algorithm`: per block k-means on patches w.r.t. the
cosine distance, convolution with the centroids + ReLU with a fixed bias, pooling, a Conv1x1 trained
with a temporary linear head; then a classifier), the network it trains (`layerwise_cnn`, a vanilla
CNN), the paper's SGD baseline (`tf_tutorial_cnn`: the TensorFlow CIFAR-10 tutorial CNN, Fig. 3's CNN and
CNN(Random) columns), the recipes and the presets.

This package registers its Keras layers (CentroidConv2D, PerImageStandardization, LocalResponseNormalization)
for `keras.models.load_model`.
"""
from kernelzoo.zoo.layerwise.layers import CentroidConv2D, LocalResponseNormalization, PerImageStandardization
from kernelzoo.zoo.layerwise.models import layerwise_cnn, tf_tutorial_cnn

__all__ = ["layerwise_cnn", "tf_tutorial_cnn", "CentroidConv2D", "LocalResponseNormalization",
           "PerImageStandardization"]
