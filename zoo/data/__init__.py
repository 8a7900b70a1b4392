"""Dataset loaders for the zoo: image classification (tfds names, CIFAR archives,
MNIST files, folders of images) and MovieLens ratings.

A local directory (the `data_dir` argument, else the `KERNELZOO_DATA_DIR`
environment variable) is read when given and nothing is downloaded; without
one, the loaders fall back to TensorFlow Datasets.
"""
from kernelzoo.zoo.data.images import ImageDataset, holdout_split, load_dataset, load_images
from kernelzoo.zoo.data.mnist import load_mnist
from kernelzoo.zoo.data.ratings import (load_ml1m, load_ml100k, load_ml100k_fold, load_ratings, load_tfds_ratings,
                                        random_split, rating_matrix)

__all__ = ["load_images", "load_dataset", "ImageDataset", "holdout_split", "load_mnist", "load_ml100k",
           "load_ml100k_fold", "load_ml1m", "load_ratings", "load_tfds_ratings", "random_split", "rating_matrix"]
