"""Output sizes and padding amounts shared by every implementation of the ops.

TF/Keras conventions: "valid" keeps only full windows; "same" gives
ceil(size / stride) outputs and puts the odd padding element after the input.
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
    out = output_size(size, window, stride, padding)
    total = max((out - 1) * stride + window - size, 0)
    return (total // 2, total - total // 2)


def normalize_tuple(value, name, length=2):
    """An int or a sequence of `length` positive ints -> tuple, else ValueError naming `name`."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * length
    try:
        value = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be an int or a tuple of {length} ints, got {value!r}") from None
    if len(value) != length or any(v < 1 for v in value):
        raise ValueError(f"`{name}` must be {length} positive ints, got {value!r}")
    return value


def normalize_padding(padding):
    """'valid' or 'same' (any case) -> lower case, else ValueError."""
    value = str(padding).lower()
    if value not in ("valid", "same"):
        raise ValueError(f"`padding` must be 'valid' or 'same', got {padding!r}")
    return value
