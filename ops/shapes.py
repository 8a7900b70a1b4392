"""Output sizes and padding amounts shared by every implementation of the ops.

TF/Keras conventions: "valid" keeps only full windows; "same" gives
ceil(size / stride) outputs and puts the odd padding element after the input.
The argument normalisers `normalize_tuple` / `normalize_padding` live in `kernelzoo.ops.checks`
(re-exported here for older imports).
"""
from kernelzoo.ops.checks import normalize_padding, normalize_tuple  # noqa: F401


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
    out = output_size(size, window, stride, padding)
    total = max((out - 1) * stride + window - size, 0)
    return (total // 2, total - total // 2)
