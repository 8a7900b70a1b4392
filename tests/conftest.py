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
    """Runs the test body with kernelzoo.ops forced to one implementation."""
    if request.param == "custom" and not _custom_available():
        pytest.skip("custom op library not available (no compiler?)")
    from kernelzoo.ops import implementation
    with implementation(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
