"""Argument checks shared by the whole package: each raises ValueError naming the argument."""
import numpy as np


def check_choice(name, value, choices):
    """`value` lower-cased if it is one of `choices`."""
    normalized = str(value).lower()
    if normalized not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return normalized


def positive_int(value, name):
    return _int_at_least(value, name, 1, "a positive int")


def nonnegative_int(value, name):
    return _int_at_least(value, name, 0, "an int >= 0")


def positive_float(value, name):
    value = _float(value, name, "a positive number")
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    return value


def nonnegative_float(value, name):
    value = _float(value, name, "a number >= 0")
    if not value >= 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}")
    return value


def image_shape(value, name="input_shape"):
    """(height, width, channels) as a tuple of positive ints."""
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be (height, width, channels), got {value!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"`{name}` must be 3 positive ints (height, width, channels), got {value!r}")
    return shape


def _int_at_least(value, name, minimum, description):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be {description}, got {value!r}")
    return int(value)


def _float(value, name, description):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be {description}, got {value!r}") from None
