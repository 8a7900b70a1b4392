"""Argument checks shared by the whole package: each returns the normalised value or raises
ValueError naming the argument. Only numpy here, so every package can use it.
"""
import numbers
import os

import numpy as np


def check_choice(name, value, choices):
    """`value` lower-cased if it is one of `choices`."""
    normalized = str(value).lower()
    if normalized not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    return normalized


def boolean(value, name):
    """`value` as a bool; only True/False (numpy's too) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}")
    return bool(value)


def positive_int(value, name):
    """`value` as an int >= 1 (bools are not ints)."""
    return int_in_range(value, name, 1)


def nonnegative_int(value, name):
    """`value` as an int >= 0."""
    return int_in_range(value, name, 0)


def int_in_range(value, name, low=None, high=None):
    """`value` as an int, at least `low` and at most `high` where given (bools are not ints)."""
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if high is not None:
            wanted = f"an int in [{low}, {high}]" if low is not None else f"an int <= {high}"
        elif low is not None:
            wanted = {0: "an int >= 0", 1: "a positive int"}.get(low, f"an int >= {low}")
        else:
            wanted = "an int"
        raise ValueError(f"`{name}` must be {wanted}, got {value!r}")
    return int(value)


def positive_ints(value, name, allow_empty=False):
    """A sequence of positive ints as a tuple."""
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or (not items and not allow_empty) or not all(_is_int(v) and v >= 1 for v in items):
        what = "a sequence" if allow_empty else "a non-empty sequence"
        raise ValueError(f"`{name}` must be {what} of positive ints, got {value!r}")
    return tuple(int(v) for v in items)


def per_item(value, count, name, item, allow_none=False):
    """`value` repeated `count` times if it is one value (a str or number, numpy's too; None where `allow_none`),
    else its `count` items as a list (one per `item`, e.g. "layer")."""
    if isinstance(value, (str, numbers.Number, np.generic)) or (allow_none and value is None):
        return [value] * count
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or len(items) != count:
        raise ValueError(f"`{name}` must be one value or {count} values (one per {item}), got {value!r}")
    return items


def real(value, name):
    """`value` as a float: any real number, +-inf included; NaN and bools are refused."""
    value = _float(value, name, "a real number")
    if np.isnan(value):
        raise ValueError(f"`{name}` must be a real number, got NaN")
    return value


def finite_float(value, name):
    """`value` as a float: any real number but +-inf; NaN and bools are refused."""
    value = _float(value, name, "a finite number")
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return value


def positive_float(value, name):
    """`value` as a finite float > 0 (an infinite rate, scale or epsilon is always a mistake)."""
    value = _float(value, name, "a positive number")
    if not (value > 0 and np.isfinite(value)):
        raise ValueError(f"`{name}` must be > 0 and finite, got {value!r}")
    return value


def nonnegative_float(value, name):
    """`value` as a finite float >= 0."""
    value = _float(value, name, "a number >= 0")
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"`{name}` must be >= 0 and finite, got {value!r}")
    return value


def real_or_reals(value, name, count, description):
    """`value`, a real or a list of `count` reals (+-inf included; NaN, bools and strings refused), as a float or a
    list of floats; ValueError saying that `name` must be `description`."""
    try:
        values = np.asarray(value, dtype="float64")
    except (TypeError, ValueError):
        values = None
    if (values is None or values.ndim > 1 or (values.ndim == 1 and len(values) != count) or np.any(np.isnan(values))
            or any(isinstance(v, (bool, np.bool_, str, bytes)) for v in np.asarray(value, dtype=object).ravel())):
        raise ValueError(f"`{name}` must be {description}, got {value!r}")
    return float(values) if values.ndim == 0 else [float(v) for v in values]


def float_in_range(value, name, low, high, interval="[]"):
    """`value` as a float between `low` and `high`; `interval` "[]", "[)", "(]" or "()" says which ends count."""
    text = f"{interval[0]}{low}, {high}{interval[1]}"
    number = _float(value, name, f"a number in {text}")
    above = number >= low if interval[0] == "[" else number > low
    below = number <= high if interval[1] == "]" else number < high
    if not (above and below):
        raise ValueError(f"`{name}` must be a number in {text}, got {value!r}")
    return number


def normalize_tuple(value, name, length=2):
    """A positive int or a sequence of `length` of them -> tuple (Keras's `standardize_tuple`).

    Each element is checked as `positive_ints` checks it: floats, strings and bools are refused, not truncated.
    """
    try:
        items = positive_ints((value,) * length if _is_int(value) else value, name)
    except ValueError:
        items = ()
    if len(items) != length:
        raise ValueError(f"`{name}` must be a positive int or a tuple of {length} positive ints, got {value!r}")
    return items


def normalize_padding(padding, name="padding"):
    """'valid' or 'same' (any case) -> lower case."""
    return check_choice(name, padding, ("valid", "same"))


def image_shape(value, name="input_shape"):
    """(height, width, channels) as a tuple of positive ints."""
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be (height, width, channels), got {value!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"`{name}` must be 3 positive ints (height, width, channels), got {value!r}")
    return shape


def known_channels(input_shape, layer):
    """The channel count (last axis) of a layer's `input_shape`; ValueError naming `layer` when it is unknown."""
    channels = input_shape[-1]
    if channels is None:
        raise ValueError(f"{layer} needs a known number of input channels, got input shape {input_shape}")
    return int(channels)


def window_fits(size, window, padding, name):
    """ValueError naming `name` when a "valid" `window` is larger than the known spatial `size` (h, w)."""
    if padding == "valid" and all(s is not None for s in size) and (window[0] > size[0] or window[1] > size[1]):
        raise ValueError(f"`{name}` {tuple(window)} is larger than the input's spatial size {tuple(size)} "
                         "(use padding='same' or a smaller window)")


def image_batch(value, name="images"):
    """`value` as a non-empty numeric numpy array of images (N, H, W, C)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be an array (N, H, W, C), got {type(value).__name__}: {error}") from None
    if array.ndim != 4 or not array.size or array.dtype.kind not in "uif":
        raise ValueError(f"`{name}` must be a non-empty numeric 4D array (N, H, W, C), got "
                         f"{array.dtype} {array.shape}")
    return array


def matrix(value, name, min_rows=1):
    """`value` as a finite numeric numpy array (rows, dims), at least `min_rows` rows and one column."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a 2D array (rows, dims), got {type(value).__name__}: {error}") from None
    if array.ndim != 2 or array.shape[0] < min_rows or not array.shape[1] or array.dtype.kind not in "uif":
        raise ValueError(f"`{name}` must be a numeric 2D array (rows, dims) with at least {min_rows} row(s), got "
                         f"{array.dtype} {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite (found NaN or inf)")
    return array


def path(value, name):
    """`value` (a str or os.PathLike, not empty) as a str."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a path (a non-empty str or os.PathLike), got {value!r}")
    return value


def _is_int(value):
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _float(value, name, description):
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be {description}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be {description}, got {value!r}") from None
