"""Shared fixtures: run op/layer tests under each available implementation."""
import os

import numpy as np
import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _custom_available():
    try:
        from kernelzoo.ops import library
    except ImportError:
        return False
    return library.available()


@pytest.fixture(params=["composite", "custom"])
def impl(request):
    """Runs the test body with kernelzoo.ops forced to one implementation.

    The custom case skips only on a machine without a C++ compiler: where one
    exists, a library that fails to build fails the test (CI must not pass silently).
    """
    if request.param == "custom" and not _custom_available():
        from kernelzoo.ops import library
        if library._compiler() is not None:
            pytest.fail(f"a C++ compiler exists but the custom op library is unavailable: {library.failure_reason()}")
        pytest.skip("no C++ compiler: the custom op library cannot be built")
    from kernelzoo.ops import implementation
    with implementation(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
