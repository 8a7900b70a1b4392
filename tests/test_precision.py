"""zoo/precision.py: mixed_bfloat16 on hardware that only emulates bfloat16 is announced, not silent."""
import warnings

import pytest
import tensorflow as tf

from kernelzoo.zoo import precision


@pytest.mark.parametrize("flags", [set(), {"avx2", "fma"}])
def test_emulated_bfloat16_warns(monkeypatch, flags):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda device_type=None: [])  # no GPU either
    with pytest.warns(RuntimeWarning, match="emulated"):
        precision.warn_if_emulated("mixed_bfloat16")


@pytest.mark.parametrize("name, flags", [("mixed_bfloat16", {"amx_bf16"}), ("mixed_bfloat16", {"avx512_bf16"}),
                                         ("float32", set())])
def test_native_bfloat16_or_float32_is_quiet(monkeypatch, name, flags):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_emulated(name)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision"):
        precision.warn_if_emulated("float16")
