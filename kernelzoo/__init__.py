"""kernelzoo: similarity- and kernel-based deep networks for Keras 3.

Importing the package registers its Keras layers, so `keras.models.load_model`
can open any saved kernelzoo model.
"""
from kernelzoo._version import __version__
from kernelzoo import ops, layers, zoo, export

__all__ = ["__version__", "ops", "layers", "zoo", "export"]
