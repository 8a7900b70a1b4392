"""A small timm-like model registry: names -> builders, weights and cards.

Each zoo folder declares its entries as data (a `PRESETS` dict in its
`presets` module, listed in PRESET_MODULES); files are looked up in that
folder. `load` verifies the SHA-256 of the weight file before opening it.
"""
import fnmatch
import hashlib
import importlib
import os

import keras

PRESET_MODULES = ("kernelzoo.zoo.kernelnet.presets", "kernelzoo.zoo.simnet.presets")
REQUIRED = ("description", "builder", "config", "inputs")


def _entries():
    """name -> entry dict (with its folder added), over all preset modules."""
    entries = {}
    for module_name in PRESET_MODULES:
        module = importlib.import_module(module_name)
        folder = os.path.dirname(module.__file__)
        for name, entry in module.PRESETS.items():
            missing = [key for key in REQUIRED if key not in entry]
            if missing:
                raise RuntimeError(f"registry entry {name!r} lacks {missing}")
            entries[name] = dict(entry, folder=folder)
    return entries


def _entry(name):
    entries = _entries()
    if not isinstance(name, str) or name not in entries:
        raise ValueError(f"name must be one of {sorted(entries)}, got {name!r}")
    return entries[name]


def _resolve(dotted):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def list_models(pattern=None):
    """Sorted model names, optionally filtered by a shell-style pattern."""
    if pattern is not None and not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string or None, got {pattern!r}")
    names = sorted(_entries())
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def info(name):
    """The registry entry of `name` (a copy)."""
    return dict(_entry(name))


def create(name, **overrides):
    """A freshly initialised (untrained, uncompiled) model; overrides go to the builder."""
    entry = _entry(name)
    return _resolve(entry["builder"])(**{**entry["config"], **overrides})


def sha256(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(name):
    """Path of the shipped weight file of `name` (ValueError if it has none)."""
    entry = _entry(name)
    if not entry.get("weights"):
        raise ValueError(f"name={name!r} has no pretrained weights")
    return os.path.join(entry["folder"], entry["weights"])


def load(name):
    """The pretrained model, compiled, after checking the file's SHA-256."""
    entry = _entry(name)
    _resolve(entry["builder"])  # importing the builder registers its layers
    path = weights_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights of {name!r} missing: {path}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise RuntimeError(f"SHA-256 mismatch for {path}: expected {entry['sha256']}, "
                           f"got {digest}")
    model = keras.models.load_model(path, compile=False)
    compile_args = entry.get("compile")
    if compile_args:
        model.compile(**{k: _resolve(v) if k == "loss" and "." in v else v
                         for k, v in compile_args.items()})
    return model


def card(name):
    """The model card (markdown) of `name`."""
    entry = _entry(name)
    if not entry.get("card"):
        raise ValueError(f"name={name!r} has no card")
    with open(os.path.join(entry["folder"], entry["card"]), encoding="utf-8") as handle:
        return handle.read()
