"""kernelzoo.ops.checks: the argument checks every package shares (each error names the argument)."""
import pathlib

import numpy as np
import pytest

from kernelzoo.ops import checks


def test_known_channels_names_the_layer():
    assert checks.known_channels((None, 8, 8, 3), "Mex") == 3
    with pytest.raises(ValueError, match="CKNConv2D needs a known number of input channels"):
        checks.known_channels((None, 8, 8, None), "CKNConv2D")


def test_checks_return_normalised_values():
    assert checks.check_choice("padding", "SAME", ("valid", "same")) == "same"
    assert checks.boolean(np.bool_(True), "flag") is True
    assert checks.positive_int(np.int64(3), "units") == 3 and type(checks.positive_int(np.int64(3), "u")) is int
    assert checks.nonnegative_int(0, "seed") == 0
    assert checks.int_in_range(18, "opset", 13, 18) == 18 and checks.int_in_range(-1, "axis") == -1
    assert checks.positive_ints([2, 3], "grids") == (2, 3) and checks.positive_ints((), "d", allow_empty=True) == ()
    assert checks.real(float("inf"), "xi") == float("inf") and checks.real(2, "offset") == 2.0
    assert checks.positive_float("0.5", "gamma") == 0.5 and checks.nonnegative_float(0, "decay") == 0.0
    assert checks.finite_float("-1e300", "offset") == -1e300
    assert checks.float_in_range(1, "eta", 0, 1) == 1.0 and checks.float_in_range(0.5, "f", 0, 1, "()") == 0.5
    assert checks.float_in_range(0, "eta", 0, 1) == 0.0 and checks.float_in_range(0, "dropout", 0, 1, "[)") == 0.0
    assert checks.real_or_reals(2, "xi", 3, "a real") == 2.0
    assert checks.real_or_reals([1, -np.inf], "c", 2, "2 reals") == [1.0, -np.inf]
    assert checks.normalize_tuple(3, "kernel_size") == (3, 3) and checks.normalize_tuple([2, 1], "strides") == (2, 1)
    assert checks.normalize_tuple(np.int64(2), "pool_size") == (2, 2)
    assert checks.normalize_tuple(np.array([2, 1]), "strides") == (2, 1)
    assert checks.normalize_padding("Valid") == "valid"
    assert checks.image_shape([32, 32, 3]) == (32, 32, 3)
    assert checks.image_batch(np.zeros((2, 4, 4, 1), np.uint8)).shape == (2, 4, 4, 1)
    assert checks.path(pathlib.Path("/tmp/x"), "data_dir") == "/tmp/x"
    assert checks.matrix([[1, 2], [3, 4]], "rows", min_rows=2).shape == (2, 2)
    assert checks.per_item(np.int64(3), 2, "strides", "block") == [3, 3]        # numpy scalars are one value
    assert checks.per_item(np.float32(0.5), 2, "sigmas", "layer") == [0.5, 0.5]
    assert checks.per_item("exp", 2, "kernels", "layer") == ["exp", "exp"]
    assert checks.per_item(None, 2, "embeddings", "block", allow_none=True) == [None, None]
    assert checks.per_item((1, np.int64(2)), 2, "strides", "block") == [1, 2]


@pytest.mark.parametrize("call, argument", [
    (lambda: checks.check_choice("similarity", "l3", ("l1", "l2")), "similarity"),
    (lambda: checks.boolean(1, "prior"), "prior"),
    (lambda: checks.positive_int(0, "units"), "units"),
    (lambda: checks.positive_int(True, "units"), "units"),
    (lambda: checks.positive_int(2.0, "units"), "units"),
    (lambda: checks.nonnegative_int(-1, "seed"), "seed"),
    (lambda: checks.int_in_range(19, "opset", 13, 18), "opset"),
    (lambda: checks.int_in_range(0.5, "axis"), "axis"),
    (lambda: checks.positive_ints([], "grids"), "grids"),
    (lambda: checks.positive_ints([2, 0], "grids"), "grids"),
    (lambda: checks.positive_ints(3, "grids"), "grids"),
    (lambda: checks.real(float("nan"), "offset"), "offset"),
    (lambda: checks.real(True, "offset"), "offset"),
    (lambda: checks.positive_float(0, "gamma"), "gamma"),
    (lambda: checks.positive_float("x", "gamma"), "gamma"),
    (lambda: checks.nonnegative_float(-1e-9, "decay"), "decay"),
    (lambda: checks.positive_float(float("inf"), "lr"), "lr"),
    (lambda: checks.nonnegative_float(float("inf"), "l2"), "l2"),
    (lambda: checks.finite_float(float("-inf"), "offset"), "offset"),
    (lambda: checks.finite_float(float("nan"), "offset"), "offset"),
    (lambda: checks.finite_float(False, "offset"), "offset"),
    (lambda: checks.float_in_range(1.5, "eta", 0, 1), "eta"),
    (lambda: checks.float_in_range(1.0, "dropout", 0, 1, "[)"), "dropout"),
    (lambda: checks.normalize_tuple((2, 0), "strides"), "strides"),
    (lambda: checks.normalize_tuple("ab", "strides"), "strides"),
    (lambda: checks.normalize_tuple((1.7, 2), "pool_size"), "pool_size"),
    (lambda: checks.normalize_tuple(("2", "2"), "pool_size"), "pool_size"),
    (lambda: checks.normalize_tuple("22", "pool_size"), "pool_size"),
    (lambda: checks.normalize_tuple((True, 2), "strides"), "strides"),
    (lambda: checks.normalize_tuple(2.0, "strides"), "strides"),
    (lambda: checks.normalize_tuple((2, 2, 2), "strides"), "strides"),
    (lambda: checks.normalize_padding("full"), "padding"),
    (lambda: checks.window_fits((5, 5), (2, 6), "valid", "pool_size"), "pool_size"),
    (lambda: checks.image_shape((32, 32)), "input_shape"),
    (lambda: checks.image_shape((32, 0, 3)), "input_shape"),
    (lambda: checks.real_or_reals([1.0, 2.0], "xi", 3, "one or 3 reals"), "xi"),
    (lambda: checks.real_or_reals([1.0, True], "xi", 2, "two reals"), "xi"),
    (lambda: checks.real_or_reals("1.5", "xi", 1, "a real"), "xi"),
    (lambda: checks.real_or_reals([[1.0]], "xi", 1, "a real"), "xi"),
    (lambda: checks.real_or_reals(float("nan"), "xi", 1, "a real"), "xi"),
    (lambda: checks.image_batch(np.zeros((4, 4, 1)), "x_train"), "x_train"),
    (lambda: checks.image_batch(np.zeros((0, 4, 4, 1)), "x_train"), "x_train"),
    (lambda: checks.image_batch(np.array([[[["a"]]]]), "x_train"), "x_train"),
    (lambda: checks.path("", "data_dir"), "data_dir"),
    (lambda: checks.path(3, "data_dir"), "data_dir"),
    (lambda: checks.matrix(np.zeros(5), "patches"), "patches"),
    (lambda: checks.matrix(np.zeros((1, 3)), "patches", min_rows=2), "patches"),
    (lambda: checks.matrix(np.zeros((3, 0)), "patches"), "patches"),
    (lambda: checks.matrix([[1.0, float("nan")]], "x"), "x"),
    (lambda: checks.matrix([["a"]], "x"), "x"),
    (lambda: checks.per_item((1, 2, 3), 2, "strides", "block"), "strides"),
    (lambda: checks.per_item(None, 2, "strides", "block"), "strides"),
    (lambda: checks.per_item({1, 2}, 2, "strides", "block"), "strides"),
])
def test_bad_values_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def test_checks_import_nothing_but_numpy():
    import subprocess
    import sys

    code = ("import sys, kernelzoo.ops.checks, kernelzoo.ops.shapes; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'kernelzoo.ops.api') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
