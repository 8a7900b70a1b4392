"""One loader for image-classification datasets: tfds names or local copies in their standard forms.

`load_images(name, data_dir=None)` returns an `ImageDataset` of uint8 arrays
(N, H, W, C) and int64 labels. Sources, in order:

1. `name` is a path (folder or archive): read it.
2. `data_dir` (else $KERNELZOO_DATA_DIR) is set: look for `name` in it (in
   data_dir/<name>, data_dir/<alias>, their .tar.gz, or data_dir itself) in any standard form:
   the CIFAR-10/100 python or binary folders or archives, the MNIST IDX files or
   mnist.npz, the STL-10 binary folder stl10_binary/ (its labelled train and test splits),
   a folder of class subfolders of images (train/<class>/*, test/<class>/*, possibly one
   folder down), or a .tar.gz of such a folder (read without extracting). Class folders
   and archives count in data_dir itself only when its name is the dataset's (a lone
   archive of another dataset is not it). Nothing is downloaded; a missing or malformed
   copy raises a ValueError naming the path and the expected files.
3. Otherwise TensorFlow Datasets `name` (any tfds image-classification dataset).

Decoded class-folder archives are cached as .npz under $KERNELZOO_CACHE/data
(default ~/.cache/kernelzoo/data), keyed by the archive's SHA-256.
JPEGs are decoded with Pillow (identical to tf.io.decode_jpeg with
dct_method="INTEGER_ACCURATE", never TF's default). Class folders: names starting with
"." (macOS ._* files, .ipynb_checkpoints) are skipped, an empty class folder or a folder
inside a class folder is refused; grey images (1-bit, grey + alpha, grey palettes) are
read as one channel, colour ones as RGB, and grey ones among colour ones as RGB (a warning);
16-bit grey is scaled to 8 bits (its high byte, as tf.io.decode_png), 32-bit grey (integer or
float, with no one range) is refused.
"""
import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
import warnings

import numpy as np

from kernelzoo.ops import checks
from kernelzoo.progress import progress
from kernelzoo.zoo.data import cifar, stl10
from kernelzoo.zoo.data._paths import ENV_VAR, data_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
ALIASES = {"cifar10": ("cifar10", "cifar-10"), "cifar100": ("cifar100", "cifar-100"), "mnist": ("mnist",),
           "stl10": ("stl10", "stl-10")}
SPLITS = ("train", "test")
WIDE_MODES = {"I": "integer", "F": "float"}  # Pillow modes of 32-bit grey: their range is the file's own


class ImageDataset:
    """Train and test arrays of an image-classification dataset.

    Attributes: x_train, y_train, x_test, y_test (uint8 (N, H, W, C) / int64 (N,)),
    class_names (list of str), source (where it was read from).
    """

    def __init__(self, x_train, y_train, x_test, y_test, class_names, source):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.class_names = list(class_names)
        self.source = source
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if x.ndim != 4 or x.dtype != np.uint8 or y.shape != (x.shape[0],):
                raise ValueError(f"{source}: {split} images must be uint8 (N, H, W, C) with N labels, "
                                 f"got {x.dtype} {x.shape} and labels {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise ValueError(f"{source}: {split} labels must lie in [0, {len(self.class_names)})")
        if len(x_train) and len(x_test) and x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f"{source}: train and test images differ in shape, {x_train.shape[1:]} and "
                             f"{x_test.shape[1:]}")

    @property
    def train(self):
        return self.x_train, self.y_train

    @property
    def test(self):
        return self.x_test, self.y_test

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)

    def __repr__(self):
        return (f"ImageDataset({self.source}: train {self.x_train.shape}, test {self.x_test.shape}, "
                f"{self.num_classes} classes)")


def load_images(name, data_dir=None, *, cache=True, verbose=True):
    """An ImageDataset from a path, a local data directory, or tfds (see the module docstring).

    Args:
      name: a dataset name ("cifar10", "mnist", "cifar100", "stl10", any tfds image
        dataset) or the path of a local copy (folder or archive).
      data_dir: local root to read from (default $KERNELZOO_DATA_DIR); when set, nothing downloads.
      cache: cache decoded class-folder archives as .npz (outside the repository).
      verbose: a progress bar while images are decoded.
    """
    name = checks.path(name, "name")
    if data_dir is not None:
        data_dir = checks.path(data_dir, "data_dir")
    if os.path.exists(name):
        return _load_local(name, _guess_name(name), cache, source_arg="name", verbose=verbose)
    root, argument = data_root(data_dir)
    if root is not None:
        if not os.path.isdir(root):
            raise ValueError(f"{argument}={root!r} is not a directory")
        key = _key(name)
        for candidate in _candidates(root, name):
            if os.path.exists(candidate):
                return _load_local(candidate, key, cache, source_arg=argument, verbose=verbose)
        try:
            return _load_local(root, key, cache, source_arg=argument, verbose=verbose,
                               any_form=_guess_name(root) == _guess_name(key))
        except ValueError as error:
            raise ValueError(f"{argument}={root!r}: no copy of {name!r} found in {_candidates(root, name)} or in "
                             f"{root!r} itself. {error}") from None
    return _load_tfds(name)


def _key(name):
    """The ALIASES key of dataset `name` ("CIFAR-10", "cifar_10" -> "cifar10"); any other name as given."""
    key = name.lower().replace("_", "").replace("-", "")
    return key if key in ALIASES else name


def _candidates(root, name):
    """Where data_dir `root` may hold dataset `name`: a folder or a .tar.gz named after it (or an alias)."""
    aliases = ALIASES.get(_key(name), (name,))
    return [os.path.join(root, alias + suffix) for alias in aliases for suffix in ("", ".tar.gz", ".tgz")]


def load_dataset(name, data_dir=None):
    """The one entry point for the zoo's datasets: ratings names go to kernelzoo.zoo.data.ratings.

    "ml-100k" / "ml-1m" (local copies) and "movielens/..." (tfds) -> `ratings.load_ratings` (a dict of rating
    triples); anything else -> load_images(name, data_dir) (an ImageDataset).
    """
    key = checks.path(name, "name").lower()
    key = {"ml100k": "ml-100k", "movielens-100k": "ml-100k", "ml1m": "ml-1m", "movielens-1m": "ml-1m"}.get(key, key)
    if key in ("ml-100k", "ml-1m") or key.startswith("movielens/"):
        from kernelzoo.zoo.data.ratings import load_ratings
        return load_ratings(key, data_dir)
    return load_images(name, data_dir)


def holdout_split(x, y, size, seed=0):
    """((x_rest, y_rest), (x_held, y_held)): `size` examples held out by a seeded permutation."""
    size = checks.int_in_range(size, "size", 1, len(x) - 1)
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length, got {len(x)} and {len(y)}")
    order = np.random.default_rng(seed).permutation(len(x))
    held, rest = np.sort(order[:size]), np.sort(order[size:])
    return (x[rest], y[rest]), (x[held], y[held])


# ----------------------------------------------------------------------------- local copies


def _guess_name(path):
    base = os.path.basename(os.path.normpath(path)).lower()
    if "cifar-100" in base or "cifar100" in base:
        return "cifar100"
    if "cifar" in base:
        return "cifar10"
    if "mnist" in base:
        return "mnist"
    if "stl10" in base.replace("-", ""):
        return "stl10"
    return base


def _expected(name, any_form=True):
    forms = "a folder train/<class>/*.jpg|png + test/<class>/* (possibly one level down) or a .tar.gz of it"
    if not any_form:
        forms = f"a subfolder {name}/ holding {forms}"
    if name in cifar.CIFAR_FORMATS:
        return f"{cifar.expected_files(name)}, or {forms}"
    if name == "mnist":
        return f"the four MNIST IDX .gz files or mnist.npz, or {forms}"
    if name == "stl10":
        return f"the STL-10 binary files {[stl10.FILES[key] for key in stl10.REQUIRED]} (stl10_binary/), or {forms}"
    return forms


def _load_local(path, name, cache, source_arg, verbose=True, any_form=True):
    """The copy of dataset `name` at `path`; class folders and archives only with `any_form` (`path` is the
    dataset's own: not a data directory that happens to hold another dataset)."""
    where = f"{source_arg}: {path!r}"
    if name in cifar.CIFAR_FORMATS:
        found = cifar.find_cifar(path, name)
        if found is not None:
            train, test, class_names = cifar.load_cifar(*found, name)
            return ImageDataset(*train, *test, class_names, source=f"{found[1]} ({found[0]})")
    if name == "mnist" and os.path.isdir(path):
        from kernelzoo.zoo.data import mnist  # the kernelNet engineer's IDX / npz reader
        folders = (os.path.join(path, "mnist"), path)
        if any(all(os.path.isfile(os.path.join(f, n)) for n in mnist.IDX_FILES.values())
               or os.path.isfile(os.path.join(f, mnist.NPZ_FILE)) for f in folders):
            (x_train, y_train), (x_test, y_test) = mnist.load_mnist(path)
            return ImageDataset(x_train[..., None], y_train.astype(np.int64), x_test[..., None],
                                y_test.astype(np.int64), [str(i) for i in range(10)], source=f"{path} (mnist)")
    binary = stl10.find_binary(path) if name == "stl10" else None
    if binary is not None:
        copy = stl10.load_binary(binary)  # its labelled splits (the SC recipe's load_stl10 adds the unlabelled one)
        return ImageDataset(*copy.train, *copy.test, copy.class_names, source=copy.source)
    folder = _find_class_folders(path) if any_form else None
    if folder is not None:
        return _read_class_folders(folder, verbose)
    archive = _find_archive(path) if any_form else None
    if archive is not None:
        return _read_class_archive(archive, cache, verbose)
    raise ValueError(f"{where}: expected {_expected(name, any_form)}")


def _has_splits(folder):
    return all(os.path.isdir(os.path.join(folder, s)) for s in SPLITS)


def _find_class_folders(path):
    if not os.path.isdir(path):
        return None
    if _has_splits(path):
        return path
    subfolders = sorted(e.path for e in os.scandir(path) if e.is_dir())
    matches = [f for f in subfolders if _has_splits(f)]
    return matches[0] if len(matches) == 1 else None


def _find_archive(path):
    if os.path.isfile(path) and path.endswith((".tar.gz", ".tgz", ".tar")):
        return path
    if os.path.isdir(path):
        archives = sorted(e.path for e in os.scandir(path) if e.is_file() and e.name.endswith((".tar.gz", ".tgz")))
        archives = [a for a in archives if not any(a.endswith(f[1]) or a.endswith(f[3])
                                                    for f in cifar.CIFAR_FORMATS.values())]
        if len(archives) == 1:
            return archives[0]
    return None


def _hidden(name):
    """Names starting with "." (macOS ._* files, .ipynb_checkpoints, .DS_Store): never images or classes."""
    return name.startswith(".")


def _decode(raw, where):
    """(H, W, 1) for a grey image, (H, W, 3) for a colour one (alpha dropped); ValueError for 32-bit pixels."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(raw)) as image:
            mode = image.mode
            array = None if mode in WIDE_MODES else _pixels(image)
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds
        raise ValueError(f"{where!r} is not a readable image: {error}") from None
    if array is None:
        raise ValueError(f"{where!r}: 32-bit {WIDE_MODES[mode]} pixels have no one scaling to 8 bits: "
                         "save the image with 8 or 16 bits per channel")
    return array[..., None] if array.ndim == 2 else array


def _pixels(image):
    """uint8 pixels of a Pillow image in its `_base_mode`; 16-bit grey by its high byte (as tf.io.decode_png), not
    clipped to 255."""
    if image.mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    return np.asarray(image.convert(_base_mode(image)), dtype=np.uint8)


def _base_mode(image):
    """"L" for grey modes (1-bit, grey + alpha) and palettes of greys, else "RGB"."""
    from PIL import ImageMode
    if image.mode != "P":
        return ImageMode.getmode(image.mode).basemode
    palette = np.asarray(image.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
    used = palette[np.unique(np.asarray(image)).clip(max=len(palette) - 1)]
    return "L" if (used == used[:, :1]).all() else "RGB"


def _channels(images, where):
    """3 when any image is colour (the grey ones are then read as RGB: said once), else 1."""
    grey = [name for name, image in images if image.shape[-1] == 1]
    if not grey or len(grey) == len(images):
        return images[0][1].shape[-1] if images else 1
    warnings.warn(f"{where!r}: {len(grey)} of {len(images)} images are grey among colour ones (e.g. {grey[0]}): "
                  "all are read as RGB", stacklevel=2)
    return 3


def _stack(images, where, channels):
    """One (N, H, W, channels) array of (file, image) pairs; ValueError naming a file of each size."""
    images = [(name, np.repeat(image, channels, axis=-1) if image.shape[-1] != channels else image)
              for name, image in images]
    first = {}
    for name, image in images:
        first.setdefault(image.shape, name)
    if len(first) != 1:
        sizes = ", ".join(f"{name} {shape}" for shape, name in sorted(first.items())[:4])
        raise ValueError(f"{where!r}: images have different sizes ({sizes}); resize them first")
    return np.stack([image for _, image in images])


def _check_classes(records, where):
    """ValueError for an empty class folder: dropping it would change the classes (and their labels) without a
    word. `records`: {split: {class: [...]}}."""
    for split in SPLITS:
        for cls, items in records.get(split, {}).items():
            if not items:
                raise ValueError(f"{where!r}: the class folder {split}/{cls}/ holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")


def _nested(where, folder):
    """The error for a folder inside a class folder (both readers refuse it: its images would silently not count)."""
    return ValueError(f"{where!r}: {folder} is a folder inside a class folder (its images would not be read): "
                      "move them up into the class folder, or remove it")


def _several(where, tops):
    """The error for an archive with train/ and test/ in two folders: read together, two datasets would merge into
    one (in a folder, `_find_class_folders` finds no one dataset folder either)."""
    folders = " and ".join(f"{top}/" if top else "its top" for top in tops)
    return ValueError(f"{where!r}: {folders} both hold train/ or test/: expected one dataset, train/<class>/* + "
                      "test/<class>/* at the top or one folder down")


def _split_arrays(records, where):
    """records: {split: {class: [(sort key, file, decoded)]}} -> ImageDataset."""
    for split in SPLITS:
        if not records.get(split):
            raise ValueError(f"{where!r}: no class subfolders with images under '{split}/'")
    class_names = sorted(records["train"])
    if sorted(records["test"]) != class_names:
        raise ValueError(f"{where!r}: train classes {class_names} differ from test classes {sorted(records['test'])}")
    ordered = {split: [(label, name, image) for label, cls in enumerate(class_names)
                       for _, name, image in sorted(records[split][cls], key=lambda item: item[0])]
               for split in SPLITS}
    channels = _channels([(name, image) for split in SPLITS for _, name, image in ordered[split]], where)
    arrays = []
    for split in SPLITS:
        arrays += [_stack([(name, image) for _, name, image in ordered[split]], where, channels),
                   np.asarray([label for label, _, _ in ordered[split]], np.int64)]
    return ImageDataset(*arrays, class_names, source=where)


def _list_classes(folder, split):
    """{class: [image paths]} of folder/split/ (hidden names skipped); ValueError for a folder in a class folder."""
    classes = {}
    for cls in sorted(e.name for e in os.scandir(os.path.join(folder, split)) if e.is_dir() and not _hidden(e.name)):
        entries = sorted((e for e in os.scandir(os.path.join(folder, split, cls)) if not _hidden(e.name)),
                         key=lambda entry: entry.name)
        nested = [e.name for e in entries if e.is_dir()]
        if nested:
            raise _nested(folder, f"{split}/{cls}/{nested[0]}/")
        classes[cls] = [e.path for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS)]
    return classes


def _read_class_folders(folder, verbose=True):
    listing = {split: _list_classes(folder, split) for split in SPLITS}
    _check_classes(listing, folder)  # before decoding anything
    files = [(split, cls, path) for split in SPLITS for cls, paths in listing[split].items() for path in paths]
    records = {split: {} for split in SPLITS}
    for split, cls, path in progress(files, label=f"decoding {folder}", verbose=verbose, unit="image"):
        records[split].setdefault(cls, []).append((os.path.basename(path), path, _decode(_read(path), path)))
    return _split_arrays(records, folder)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _cache_path(archive):
    """The cache file of an archive, named by its content: a copy of the same file (a fresh checkout, another
    folder, a new mtime) reuses it, a changed file gets its own."""
    from kernelzoo.zoo.registry import sha256
    key = hashlib.sha256(f"{sha256(archive)}|v3".encode()).hexdigest()  # v3: 16-bit grey scaled, not clipped
    root = os.environ.get("KERNELZOO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "kernelzoo"))
    return os.path.join(root, "data", f"{os.path.basename(archive).split('.')[0]}-{key[:16]}.npz")


def _read_class_archive(archive, cache, verbose=True):
    cached = _cache_path(archive) if cache else None
    if cached and os.path.isfile(cached):
        with np.load(cached) as npz:
            return ImageDataset(npz["x_train"], npz["y_train"], npz["x_test"], npz["y_test"],
                                [str(c) for c in npz["class_names"]], source=archive)
    records, tops = {split: {} for split in SPLITS}, set()
    try:
        handle = tarfile.open(archive, "r:*")
    except (OSError, tarfile.TarError) as error:
        raise ValueError(f"{archive!r} is not a readable tar archive: {error}") from None
    with handle:
        for member in progress(handle, label=f"decoding {archive}", verbose=verbose, unit="file"):
            place = _archive_place(member, archive)
            if place is None:
                continue
            top, split, cls, filename = place
            tops.add(top)
            if len(tops) > 1:
                raise _several(archive, sorted(tops))
            images = records[split].setdefault(cls, [])  # a class folder counts even when empty
            if filename is not None and filename.lower().endswith(IMAGE_EXTENSIONS):
                where = f"{archive}:{member.name}"
                images.append((filename, where, _decode(handle.extractfile(member).read(), where)))
    _check_classes(records, archive)
    data = _split_arrays(records, archive)
    if cached:
        _write_cache(cached, data)
    return data


def _archive_place(member, archive):
    """(folder, split, class, file name or None for the class folder) of a tar member under <split>/<class>/ at the
    archive's top (folder "") or one folder down (as `_find_class_folders`); None for anything else, hidden names
    included."""
    parts = [part for part in member.name.split("/") if part not in ("", ".")]
    top = next((i for i in (0, 1) if len(parts) > i + 1 and parts[i] in SPLITS), None)
    if top is None or any(_hidden(part) for part in parts) or not (member.isdir() or member.isfile()):
        return None
    split, cls, inside = parts[top], parts[top + 1], parts[top + 2:]
    if len(inside) > 1 or (inside and member.isdir()):
        raise _nested(archive, f"{split}/{cls}/{inside[0]}/")
    if not inside and not member.isdir():
        return None  # a file beside the class folders
    return "/".join(parts[:top]), split, cls, inside[0] if inside else None


def _write_cache(cached, data):
    """Save the decoded arrays to `cached` through a temporary file of this writer's own, so runs that decode
    the same archive at once (they share the cache) each rename a whole file and never another's half."""
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=os.path.basename(cached) + ".", suffix=".tmp.npz",
                                     dir=os.path.dirname(cached))
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test,
                     class_names=np.asarray(data.class_names))
        os.replace(temporary, cached)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


# ----------------------------------------------------------------------------- tfds


def _load_tfds(name):
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name)
    except Exception as error:  # noqa: BLE001 - tfds raises DatasetNotFoundError and friends
        raise ValueError(f"`name`={name!r} is neither a local path nor a TensorFlow Datasets dataset "
                         f"(and neither data_dir nor {ENV_VAR} is set): {error}") from None
    features = builder.info.features
    if "label" not in features or "image" not in features:
        raise ValueError(f"`name`={name!r}: tfds dataset without 'image' and 'label' features")
    builder.download_and_prepare()
    arrays = []
    for split in SPLITS:
        x, y = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        arrays += [np.asarray(x, np.uint8), np.asarray(y, np.int64)]
    return ImageDataset(*arrays, features["label"].names, source=f"tfds:{name}")
