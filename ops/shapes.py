"""Output sizes and padding amounts shared by every implementation of the ops.

TF/Keras conventions: "valid" keeps only full windows; "same" gives
ceil(size / stride) outputs and puts the odd padding element after the input.
No imports: the standalone GPU harness (`capi.py`, `gpu_check.py`, run where kernelzoo's
dependencies are not installed) uses it too. The argument normalisers live in `kernelzoo.ops.checks`.
"""


def output_size(size, window, stride, padding):
    """Spatial output length of a window sliding over `size` inputs."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return (size - window) // stride + 1


def pad_amounts(size, window, stride, padding):
    """(before, after) padding that "same" adds on one spatial axis."""
    if padding != "same":
        return (0, 0)
    total = max(same_overhang(size, window, stride), 0)
    return (total // 2, total - total // 2)


def same_overhang(size, window, stride):
    """How far "same"'s windows reach past the input on one axis (negative: they stop short); arithmetic only, so a
    traced tensor `size` works too (its padding is `ops.maximum` of this and 0, split as in `pad_amounts`)."""
    return (-(-size // stride) - 1) * stride + window - size
