"""kernelzoo.ops: the SimNets similarity and MEX operators.

`similarity` and `mex` run a custom TensorFlow op (C++ kernels, built on first
use) when the TF backend can load it, else the composite `keras.ops` version.
"""
from kernelzoo.ops.api import (describe_implementation, implementation, log_gamma, mex, selected_implementation,
                               similarity)

__all__ = ["similarity", "mex", "implementation", "selected_implementation", "describe_implementation", "log_gamma"]
