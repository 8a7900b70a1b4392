"""kernelzoo.ops: the SimNets similarity and MEX operators.

`similarity` and `mex` run a custom TensorFlow op (C++ kernels, built on first
use) when the TF backend can load it, else the composite `keras.ops` version,
which runs its large intermediates in blocks within `memory_budget(nbytes)`
(default 512 MiB, or $KERNELZOO_COMPOSITE_MEMORY_MB).
They load (with Keras) on first use, so `kernelzoo.ops.checks`, the argument checks
every package shares, imports nothing but numpy.
"""
import importlib

__all__ = ["similarity", "mex", "implementation", "selected_implementation", "describe_implementation", "log_gamma",
           "memory_budget"]
_HOME = {"memory_budget": "kernelzoo.ops.blockwise"}  # the rest live in kernelzoo.ops.api


def __getattr__(name):
    if name in __all__:
        value = getattr(importlib.import_module(_HOME.get(name, "kernelzoo.ops.api")), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
