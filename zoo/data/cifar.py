"""CIFAR-10 / CIFAR-100 in their official distribution forms, as uint8 arrays.

Python version (`cifar-10-batches-py/`, `cifar-100-python/`, or the .tar.gz
archives holding them) and binary version (`cifar-10-batches-bin/`,
`cifar-100-binary/`, or their .tar.gz archives). Images come back (N, 32, 32, 3)
uint8 in the official order.
"""
import io
import os
import pickle
import tarfile

import numpy as np

CIFAR_FORMATS = {
    # name: (python folder, python archive, binary folder, binary archive)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar-10-batches-bin", "cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", "cifar-100-binary", "cifar-100-binary.tar.gz"),
}
_PY_FILES = {"cifar10": (["data_batch_%d" % i for i in range(1, 6)], ["test_batch"], "batches.meta"),
             "cifar100": (["train"], ["test"], "meta")}
_BIN_FILES = {"cifar10": (["data_batch_%d.bin" % i for i in range(1, 6)], ["test_batch.bin"], "batches.meta.txt"),
              "cifar100": (["train.bin"], ["test.bin"], "fine_label_names.txt")}


def expected_files(name):
    """Human-readable list of what a local CIFAR copy may look like (for error messages)."""
    py_dir, py_tar, bin_dir, bin_tar = CIFAR_FORMATS[name]
    train, test, meta = _PY_FILES[name]
    btrain, btest, bmeta = _BIN_FILES[name]
    return (f"{py_dir}/ ({', '.join(train + test + [meta])}), {py_tar}, "
            f"{bin_dir}/ ({', '.join(btrain + btest + [bmeta])}) or {bin_tar}")


def find_cifar(folder, name):
    """(kind, path) of a CIFAR copy in `folder` (or `folder` itself being one), or None."""
    py_dir, py_tar, bin_dir, bin_tar = CIFAR_FORMATS[name]
    train, test, meta = _PY_FILES[name]
    btrain, btest, bmeta = _BIN_FILES[name]
    for candidate in (os.path.join(folder, py_dir), folder):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in train + test):
            return "python", candidate
    for candidate in (os.path.join(folder, bin_dir), folder):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in btrain + btest):
            return "binary", candidate
    if os.path.isfile(os.path.join(folder, py_tar)):
        return "python-tar", os.path.join(folder, py_tar)
    if os.path.isfile(os.path.join(folder, bin_tar)):
        return "binary-tar", os.path.join(folder, bin_tar)
    if os.path.isfile(folder) and folder.endswith(py_tar):
        return "python-tar", folder
    if os.path.isfile(folder) and folder.endswith(bin_tar):
        return "binary-tar", folder
    return None


def load_cifar(kind, path, name):
    """((x_train, y_train), (x_test, y_test), class_names) from a copy found by `find_cifar`."""
    if kind in ("python", "binary"):
        reader = lambda member: _read_file(os.path.join(path, member))  # noqa: E731
        return _assemble(kind, reader, name, path)
    try:
        archive = tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as error:
        raise ValueError(f"{path!r} is not a readable tar archive: {error}") from None
    with archive:
        members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}

        def reader(member):
            if member not in members:
                raise ValueError(f"{path!r} lacks {member!r} (expected {expected_files(name)})")
            return archive.extractfile(members[member]).read()

        return _assemble(kind.split("-")[0], reader, name, path)


def _read_file(path):
    if not os.path.isfile(path):
        raise ValueError(f"missing {path!r}")
    with open(path, "rb") as handle:
        return handle.read()


def _assemble(kind, reader, name, where):
    if kind == "python":
        train, test, meta = _PY_FILES[name]
        label_key = b"labels" if name == "cifar10" else b"fine_labels"
        names_key = b"label_names" if name == "cifar10" else b"fine_label_names"
        parts = {split: [_python_batch(reader(f), label_key, f"{where}/{f}") for f in files]
                 for split, files in (("train", train), ("test", test))}
        try:
            class_names = [c.decode() for c in pickle.loads(reader(meta), encoding="bytes")[names_key]]
        except (ValueError, pickle.UnpicklingError, KeyError, EOFError):
            class_names = None
    else:
        train, test, meta = _BIN_FILES[name]
        parts = {split: [_binary_batch(reader(f), name, f"{where}/{f}") for f in files]
                 for split, files in (("train", train), ("test", test))}
        try:
            class_names = [line.strip() for line in reader(meta).decode().splitlines() if line.strip()]
        except ValueError:
            class_names = None
    arrays = [(np.concatenate([p[0] for p in parts[s]]), np.concatenate([p[1] for p in parts[s]]))
              for s in ("train", "test")]
    classes = 10 if name == "cifar10" else 100
    if not class_names or len(class_names) != classes:
        class_names = [str(i) for i in range(classes)]
    return arrays[0], arrays[1], class_names


def _python_batch(raw, label_key, where):
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[label_key], np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as error:
        raise ValueError(f"{where!r} is not a CIFAR python batch (pickled dict with b'data' and "
                         f"{label_key!r}): {error}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise ValueError(f"{where!r}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _binary_batch(raw, name, where):
    label_bytes = 1 if name == "cifar10" else 2
    record = label_bytes + 3072
    if len(raw) == 0 or len(raw) % record:
        raise ValueError(f"{where!r}: size {len(raw)} is not a multiple of the {record}-byte CIFAR record")
    table = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = table[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: (coarse, fine): keep fine
    return table[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def write_python_copy(folder, x_train, y_train, x_test, y_test, class_names, batches=5):
    """Write arrays as a cifar-10-batches-py folder (used by the tests)."""
    os.makedirs(folder, exist_ok=True)
    parts = np.array_split(np.arange(len(x_train)), batches)
    for i, idx in enumerate(parts, 1):
        _dump(os.path.join(folder, f"data_batch_{i}"), x_train[idx], y_train[idx])
    _dump(os.path.join(folder, "test_batch"), x_test, y_test)
    with open(os.path.join(folder, "batches.meta"), "wb") as handle:
        pickle.dump({b"label_names": [c.encode() for c in class_names]}, handle)


def _dump(path, x, y):
    with open(path, "wb") as handle:
        pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": [int(v) for v in y]}, handle)


def binary_records(x, y):
    """CIFAR-10 binary bytes for arrays (used by the tests)."""
    out = io.BytesIO()
    for image, label in zip(x, y):
        out.write(bytes([int(label)]))
        out.write(image.transpose(2, 0, 1).tobytes())
    return out.getvalue()
