"""The semi-supervised data protocol of the family (paper 002 Sec. 5; issue 15).

A run sees one *pool*: every labelled training image of the dataset (CIFAR-10: 50,000; MNIST: 60,000;
STL-10: the 5,000 labelled ones), plus, for STL-10, the unlabelled split (`extra`, read only when
spatial contrasting runs):

- the supervised training set (`labelled`): `labels_per_class` images of each class drawn with the
  fixed `label_seed` (CIFAR-10 4k: 400 per class), or the whole pool;
- the spatial contrasting set (`unlabelled`): every pool image, labels ignored (+ `extra`);
- the validation set (`--holdout N`, `carve_validation`, the run's seed): N pool images that are
  not in the labelled subset when the pool has enough of them (CIFAR-10 4k: from the 46,000
  others, so the 4,000 labels stay exactly the final run's), else N of the labelled images (MNIST,
  STL-10), which then leave the supervised set. Validation images always leave the SC set too, so
  they are as unseen as the test images. The public reimplementation of the paper took its
  validation images from the labelled training images (tests/test_sc.py).
The test split is never used for a choice.
"""
import dataclasses

import numpy as np

from kernelzoo.ops.checks import int_in_range, nonnegative_int, positive_int
from kernelzoo.zoo.recipe import Data


@dataclasses.dataclass
class SCData(Data):
    """`Data` with the pool behind it (module docstring). `train` is pool[labelled]; `val` is set by
    `carve_validation`."""

    pool: tuple = None
    labelled: np.ndarray = None
    unlabelled: np.ndarray = None
    extra: object = None
    label_seed: int = None
    validation: np.ndarray = None


def labelled_subset(labels, per_class, seed):
    """Sorted indices of `per_class` examples of every class (classes 0..max), drawn with `seed`.

    ValueError naming `labels_per_class` when a class has fewer examples.
    """
    labels = np.asarray(labels)
    per_class = positive_int(per_class, "labels_per_class")
    rng = np.random.default_rng(nonnegative_int(seed, "label_seed"))
    chosen = []
    for label in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"`labels_per_class`={per_class}: class {label} has only {len(members)} training "
                             "images")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def semi_supervised(pool, test, source, class_names=None, labels_per_class=None, label_seed=0, extra=None):
    """SCData of a pool (x, y): the labelled subset (all when `labels_per_class` is None), SC on all."""
    x, y = pool
    if len(x) != len(y):
        raise ValueError(f"`pool` images and labels differ in length: {len(x)} and {len(y)}")
    everything = np.arange(len(x))
    labelled = everything if labels_per_class is None else labelled_subset(y, labels_per_class, label_seed)
    return SCData(train=(x[labelled], y[labelled]), test=test, source=source, class_names=class_names,
                  pool=(x, y), labelled=labelled, unlabelled=everything, extra=extra,
                  label_seed=None if labels_per_class is None else label_seed)


def as_sc_data(data):
    """`data` itself if it is SCData, else a plain Data seen as a pool that is all labelled."""
    if isinstance(data, SCData):
        return data
    return dataclasses.replace(semi_supervised(data.train, data.test, data.source, data.class_names), val=data.val,
                               dataset=data.dataset)


def carve_validation(data, size, seed):
    """`data` with `size` pool images moved to `val` (module docstring), out of the SC set as well."""
    data = as_sc_data(data)
    x, y = data.pool
    size = int_in_range(size, "holdout", 1, len(x) - 1)
    others = np.setdiff1d(np.arange(len(x)), data.labelled)
    candidates = others if len(others) >= size else data.labelled
    if candidates is data.labelled and size >= len(data.labelled):
        raise ValueError(f"`holdout`={size} leaves no labelled training image ({len(data.labelled)} labelled)")
    held = np.sort(np.random.default_rng(seed).permutation(candidates)[:size])
    labelled = np.setdiff1d(data.labelled, held)
    return dataclasses.replace(data, train=(x[labelled], y[labelled]), val=(x[held], y[held]), labelled=labelled,
                               unlabelled=np.setdiff1d(data.unlabelled, held), validation=held)


def sc_images(data):
    """The images spatial contrasting trains on: pool[unlabelled], then the extra unlabelled split."""
    data = as_sc_data(data)
    images = data.pool[0][data.unlabelled]
    if data.extra is not None:
        more = np.asarray(data.extra())
        if len(more):
            images = np.concatenate([images, more.reshape((len(more),) + images.shape[1:])])
    return images
