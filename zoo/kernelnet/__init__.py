"""The kernelNet family (Muller 2018): the MovieLens autoencoder, the MNIST grid classifiers and the
2D embedding network.

Importing it registers the family's Keras losses (masked_rating_loss, pixel_crossentropy); its
layers are general and live in kernelzoo.layers.
"""
from kernelzoo.zoo.kernelnet.embedding import kernelnet_embedding, pixel_crossentropy
from kernelzoo.zoo.kernelnet.mnist import kernelnet_mnist
from kernelzoo.zoo.kernelnet.movielens import kernelnet_movielens, masked_rating_loss

__all__ = ["kernelnet_movielens", "kernelnet_mnist", "kernelnet_embedding", "masked_rating_loss",
           "pixel_crossentropy"]
