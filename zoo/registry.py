"""The zoo's registry (timm's shape): model names -> typed presets, builders, weights and cards.

A family is a package `kernelzoo.zoo.<family>` listed in FAMILIES with a `presets` module
(`PRESETS`, a tuple of Preset) and a `recipe` module (`recipe_for(preset)`, the hooks that
train and measure it); its weight files and cards sit in its folder (docs/adding-a-family.md).
`load` checks a weight file's SHA-256 before opening it.
"""
import fnmatch
import functools
import hashlib
import importlib
import inspect
import os
import zipfile
import zlib

import keras

from kernelzoo.ops.checks import boolean, check_choice
from kernelzoo.zoo.preset import Preset

FAMILIES = ("ckn", "kernelnet", "layerwise", "sc", "simnet")


@functools.cache
def _presets():
    """name -> Preset over every family (a family's presets validate when its module is imported)."""
    presets = {}
    for family in FAMILIES:
        for preset in importlib.import_module(f"kernelzoo.zoo.{family}.presets").PRESETS:
            if not isinstance(preset, Preset) or preset.family != family:
                raise RuntimeError(f"kernelzoo.zoo.{family}.presets.PRESETS holds {preset!r}, not a "
                                   f"Preset of family {family!r}")
            if preset.name in presets:
                raise RuntimeError(f"preset name {preset.name!r} is defined twice")
            presets[preset.name] = preset
    return presets


class ChecksumError(ValueError):
    """A weight file whose SHA-256 is not its preset's (a bad download or an edited file)."""


def info(name):
    """The Preset called `name` (ValueError listing the known names otherwise)."""
    presets = _presets()
    return presets[check_choice("name", name, sorted(presets))]


def list_models(pattern=None, pretrained=None):
    """Sorted model names, filtered by a shell-style `pattern` and by having weights (`pretrained`)."""
    if pattern is not None and not isinstance(pattern, str):
        raise ValueError(f"`pattern` must be a string or None, got {pattern!r}")
    pretrained = None if pretrained is None else boolean(pretrained, "pretrained")
    return [name for name, preset in sorted(_presets().items())
            if (pattern is None or fnmatch.fnmatch(name, pattern))
            and (pretrained is None or preset.pretrained == pretrained)]


def family_presets(family):
    """The presets of one family, in name order."""
    family = check_choice("family", family, FAMILIES)
    return [preset for _, preset in sorted(_presets().items()) if preset.family == family]


def folder(preset):
    """The folder of the preset's family (weights and cards live there)."""
    return os.path.dirname(importlib.import_module(f"kernelzoo.zoo.{preset.family}").__file__)


def resolve(dotted):
    """The object at a dotted path such as a preset's builder."""
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def builder_arguments(preset):
    """The keyword arguments the preset's builder accepts."""
    return set(inspect.signature(resolve(preset.builder)).parameters)


def recipe(preset):
    """The family recipe (training and evaluation hooks) of a Preset or a model name."""
    preset = info(preset) if isinstance(preset, str) else preset
    return importlib.import_module(f"kernelzoo.zoo.{preset.family}.recipe").recipe_for(preset)


def create(name, **overrides):
    """A freshly initialised (untrained, uncompiled) model; overrides go to the builder."""
    preset = info(name)
    return resolve(preset.builder)(**{**preset.config, **overrides})


def sha256(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_preset(digest):
    """The pretrained preset whose weight file has the SHA-256 `digest` (of a file: `sha256(path)`; a copy of shipped
    weights is recognised by its content wherever it lies), or None."""
    return next((preset for preset in _presets().values() if preset.pretrained and preset.sha256 == digest), None)


def weights_path(name):
    """Path of the shipped weight file of `name` (ValueError if it has none)."""
    preset = info(name)
    if not preset.pretrained:
        raise ValueError(f"name={name!r} has no pretrained weights")
    return os.path.join(folder(preset), preset.weights)


def load(name, compile=True):
    """The pretrained model after checking its file's SHA-256 (ChecksumError when it differs); compiled by its recipe
    unless compile=False."""
    preset = info(name)
    path = weights_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights of {name!r} missing: {path}")
    digest = sha256(path)
    if digest != preset.sha256:
        raise ChecksumError(f"SHA-256 mismatch for {path}: expected {preset.sha256}, got {digest}")
    model = load_file(path)
    if compile:
        recipe(preset).compile(model, dict(preset.recipe))
    return model


def load_file(path):
    """The uncompiled model in the Keras file `path` (every zoo layer registered).

    ValueError naming the file when a .keras file is not a whole zip archive (Keras calls a truncated one
    "File not found") or a member of it is damaged.
    """
    import kernelzoo  # noqa: F401  (registers the custom layers)
    path = os.fspath(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a whole .keras (zip) file: truncated or damaged")
    try:
        return keras.models.load_model(path, compile=False)
    except (zipfile.BadZipFile, zlib.error, OSError) as error:
        raise ValueError(f"{path!r} is damaged: {error}") from None


def card(name):
    """The model card (markdown) of `name`."""
    preset = info(name)
    with open(os.path.join(folder(preset), preset.card), encoding="utf-8") as handle:
        return handle.read()
