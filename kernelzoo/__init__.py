"""kernelzoo: similarity- and kernel-based deep networks for Keras 3.

`import kernelzoo` is light: the subpackages (`kernelzoo.ops`, `.layers`, `.zoo`, `.export`) load
on first use, and Keras learns every kernelzoo layer, initializer, constraint and loss by its
registered name as soon as Keras is imported (kernelzoo/_registration.py), so
`keras.models.load_model` opens any saved kernelzoo model after `import kernelzoo`.
"""
import importlib

from kernelzoo import _registration
from kernelzoo._version import __version__

_SUBPACKAGES = ("ops", "layers", "zoo", "export")
__all__ = ["__version__", *_SUBPACKAGES]

_registration.install()


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
