"""MNIST as uint8 arrays: local IDX gz files or mnist.npz, else tfds."""
import gzip
import os

import numpy as np

from kernelzoo.zoo.data._paths import data_root

IDX_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
NPZ_FILE = "mnist.npz"


def _read_idx(path, images):
    """One gzip IDX file (magic 2051 images / 2049 labels, big-endian header)."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path!r} is not a readable gzip IDX file: {err}")
    header = 16 if images else 8
    if len(raw) < header:
        raise ValueError(f"{path!r}: truncated IDX header")
    magic, count = np.frombuffer(raw[:8], ">i4")
    if magic != (2051 if images else 2049):
        raise ValueError(f"{path!r}: bad IDX magic {magic}")
    shape = (count,)
    if images:
        rows, cols = np.frombuffer(raw[8:16], ">i4")
        shape = (count, rows, cols)
    data = np.frombuffer(raw, np.uint8, offset=header)
    if data.size != np.prod(shape):
        raise ValueError(f"{path!r}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _find_local(root, argument):
    """(kind, folder) for IDX files or mnist.npz under root or root/mnist; a ValueError naming `argument` (what set
    root: data_dir or the environment variable) when neither is there."""
    for folder in (os.path.join(root, "mnist"), root):
        if all(os.path.isfile(os.path.join(folder, f)) for f in IDX_FILES.values()):
            return "idx", folder
        if os.path.isfile(os.path.join(folder, NPZ_FILE)):
            return "npz", folder
    raise ValueError(
        f"{argument}={root!r}: expected the four MNIST IDX files {sorted(IDX_FILES.values())} "
        f"or {NPZ_FILE!r} in {os.path.join(root, 'mnist')!r} or in {root!r}")


def _check(arrays, where):
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or len(x) != len(y):
            raise ValueError(f"{where}: x_{split} {x.shape} and y_{split} {y.shape} "
                             "must be (N, H, W) and (N,)")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_mnist(data_dir=None):
    """((x_train, y_train), (x_test, y_test)) with uint8 images (N, 28, 28).

    Reads `data_dir` (else $KERNELZOO_DATA_DIR) when set, never downloading;
    otherwise loads tfds `mnist`.
    """
    root, argument = data_root(data_dir)
    if root is None:
        import tensorflow_datasets as tfds

        out = {}
        for split in ("train", "test"):
            x, y = tfds.as_numpy(tfds.load("mnist", split=split, batch_size=-1,
                                           as_supervised=True))
            out[f"x_{split}"], out[f"y_{split}"] = x[..., 0], y
        return _check(out, "tfds mnist")
    kind, folder = _find_local(root, argument)
    if kind == "npz":
        path = os.path.join(folder, NPZ_FILE)
        with np.load(path) as npz:
            missing = set(IDX_FILES) - set(npz.files)
            if missing:
                raise ValueError(f"{path!r} lacks the arrays {sorted(missing)}")
            return _check({k: npz[k] for k in IDX_FILES}, path)
    arrays = {key: _read_idx(os.path.join(folder, name), key.startswith("x"))
              for key, name in IDX_FILES.items()}
    return _check(arrays, folder)
