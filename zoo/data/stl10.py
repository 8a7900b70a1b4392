"""STL-10 (Coates, Lee & Ng 2011): 5,000 labelled training images, 8,000 test images and 100,000
unlabelled images, 96x96 RGB, 10 classes.

`load_stl10(source=None, data_dir=None)` reads, in order:

1. a local copy in the dataset's standard binary form: a folder `stl10_binary/` (as extracted from
   `stl10_binary.tar.gz`) holding train_X.bin, train_y.bin, test_X.bin, test_y.bin,
   unlabeled_X.bin and class_names.txt; looked for at `source` when it is a path (a missing one is
   refused, not replaced by another copy), else under the data directory (`data_dir`, else
   $KERNELZOO_DATA_DIR) as DATA/stl10/stl10_binary, DATA/stl10, DATA/stl10_binary or DATA itself.
   Each *_X.bin holds uint8 images of 3 x 96 x 96 bytes stored channel by channel, each channel
   column-major (MATLAB order); *_y.bin holds labels 1..10.
2. TensorFlow Datasets "stl10" (splits train, test, unlabelled) when no data directory is set.

The unlabelled images (2.8 GB) are not read until `unlabelled()` of the result is called (a
memory map of unlabeled_X.bin, or the tfds split).
"""
import os
import re

import numpy as np

from kernelzoo.ops import checks
from kernelzoo.zoo.data._paths import data_root

SIZE = (96, 96, 3)
FILES = {"train_x": "train_X.bin", "train_y": "train_y.bin", "test_x": "test_X.bin", "test_y": "test_y.bin",
         "unlabelled_x": "unlabeled_X.bin", "class_names": "class_names.txt"}
REQUIRED = ("train_x", "train_y", "test_x", "test_y")
TFDS_NAME = re.compile(r"[A-Za-z]\w*(:\d+\.\d+\.\d+)?")  # "stl10", "stl10:1.0.0"; anything else is a path


class STL10:
    """Train, test (uint8 (N, 96, 96, 3), int64 labels 0..9), class_names, source; `unlabelled()`."""

    def __init__(self, train, test, class_names, source, unlabelled):
        self.train, self.test, self.class_names, self.source = train, test, tuple(class_names), source
        self._unlabelled = unlabelled

    def unlabelled(self):
        """The unlabelled images (N, 96, 96, 3) uint8 (read now; empty when the copy has none)."""
        return self._unlabelled()


def read_images(path):
    """uint8 (N, 96, 96, 3) from an STL-10 *_X.bin file (memory-mapped: rows are read when used)."""
    size = os.path.getsize(path)
    count, rest = divmod(size, int(np.prod(SIZE)))
    if rest:
        raise ValueError(f"{path!r}: {size} bytes is not a whole number of 3x96x96 images")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, 96, 96))
    return raw.transpose(0, 3, 2, 1)  # (N, C, W, H) column-major channels -> (N, H, W, C)


def read_labels(path, count):
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if labels.shape != (count,) or (count and (labels.min() < 0 or labels.max() > 9)):
        span = f"{labels.min() + 1}..{labels.max() + 1}" if labels.size else "-"
        raise ValueError(f"{path!r}: expected {count} labels in 1..10, got {labels.shape[0]} in {span}")
    return labels


def find_binary(root):
    """The folder under `root` that holds the STL-10 binary files, or None."""
    for folder in (os.path.join(root, "stl10", "stl10_binary"), os.path.join(root, "stl10"),
                   os.path.join(root, "stl10_binary"), root):
        if all(os.path.isfile(os.path.join(folder, FILES[key])) for key in REQUIRED):
            return folder
    return None


def load_binary(folder):
    """An STL10 from the standard binary folder."""
    paths = {key: os.path.join(folder, name) for key, name in FILES.items()}
    arrays = []
    for split in ("train", "test"):
        x = np.ascontiguousarray(read_images(paths[f"{split}_x"]))
        arrays.append((x, read_labels(paths[f"{split}_y"], len(x))))
    names = [f"class_{i}" for i in range(1, 11)]
    if os.path.isfile(paths["class_names"]):
        with open(paths["class_names"], encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
        if len(names) != 10:
            raise ValueError(f"{paths['class_names']!r}: expected 10 class names, got {len(names)}")
    unlabelled = paths["unlabelled_x"]

    def read_unlabelled():
        return read_images(unlabelled) if os.path.isfile(unlabelled) else np.zeros((0,) + SIZE, np.uint8)

    return STL10(arrays[0], arrays[1], names, f"{folder} (stl10 binary)", read_unlabelled)


def load_tfds(name="stl10", data_dir=None):
    """An STL10 from TensorFlow Datasets (`name` with splits train, test, unlabelled)."""
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()

    def split(which):
        images, labels = [], []
        for batch in tfds.as_numpy(builder.as_dataset(split=which, batch_size=1000)):
            images.append(np.asarray(batch["image"], np.uint8))
            labels.append(np.asarray(batch["label"], np.int64) if "label" in batch else None)
        if not images:
            return np.zeros((0,) + SIZE, np.uint8), np.zeros((0,), np.int64)
        labels = np.concatenate(labels) if labels[0] is not None else np.zeros((0,), np.int64)
        return np.concatenate(images), labels

    train, test = split("train"), split("test")
    return STL10(train, test, builder.info.features["label"].names, f"tfds:{name}", lambda: split("unlabelled")[0])


def load_stl10(source=None, data_dir=None):
    """STL-10 from a path, the data directory or tfds (module docstring); ValueError naming the argument
    whose copy is missing or malformed, or `dataset` for a `source` that is neither a path nor a tfds name (a
    mistyped path must not fall back on another copy)."""
    source = None if source is None else checks.path(source, "dataset")
    if source is not None and os.path.exists(source):
        folder = find_binary(source)
        if folder is None:
            raise ValueError(f"`dataset`={source!r}: expected the STL-10 binary files {sorted(FILES.values())} "
                             "(stl10_binary/)")
        return load_binary(folder)
    if source is not None and not TFDS_NAME.fullmatch(source):
        raise ValueError(f"`dataset`={source!r}: no such path (nor a TensorFlow Datasets name such as 'stl10')")
    root, argument = data_root(data_dir)
    if root is None:
        return load_tfds(source or "stl10")
    if source is not None and source.split(":")[0].lower() != "stl10":
        raise ValueError(f"`dataset`={source!r}: {argument} is read for STL-10 ('stl10') only; no such path either")
    folder = find_binary(root)
    if folder is None:
        raise ValueError(f"{argument}={root!r}: no STL-10 copy: expected the binary files "
                         f"{[FILES[k] for k in REQUIRED]} in {root}/stl10/stl10_binary, {root}/stl10, "
                         f"{root}/stl10_binary or {root}")
    return load_binary(folder)
