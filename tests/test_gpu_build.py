"""The GPU side of the op library on a machine without a GPU: the nvcc build, its fallbacks, the self-check.

* With nvcc here, the one library the suite builds (shared cache) holds GPU kernels for
  every op and still loads; `kernelzoo build-ops` lists the kernels per device.
* Without nvcc ($NVCC pointing nowhere, PATH without it) the library is the CPU-only
  build, keyed as before, and the ops pass their tests; a failing nvcc warns with its
  output and falls back the same way. Both share that CPU-only build (shared cache).
* The GPU self-check, run on the CPU kernels: a fault injected into one op's output
  (the `selfcheck._fault` hook) warns once and routes that op alone to the composite.
"""
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from kernelzoo import ops
from kernelzoo.ops import api, custom, library, selfcheck

if library._compiler() is None:
    pytest.skip("no C++ compiler: the custom ops cannot be built", allow_module_level=True)

NVCC, _ = library._nvcc()
TESTS = os.path.dirname(os.path.abspath(__file__))


def _env(**overrides):
    env = dict(os.environ, KERNELZOO_OPS="auto", **overrides)
    env.pop(library.GPU_KERNELS_ENV, None)
    return env


def _path_without_nvcc():
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.path.exists(os.path.join(d, "nvcc")))


def _build_ops(env):
    result = subprocess.run([sys.executable, "-m", "kernelzoo.cli", "build-ops"], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.skipif(NVCC is None, reason="no nvcc: the GPU kernels cannot be built here")
def test_with_nvcc_the_library_has_gpu_kernels_for_every_op_and_loads_without_a_gpu():
    """No silent fallback: where nvcc exists the library this suite uses must carry the GPU kernels."""
    import tensorflow as tf

    library.load()  # on this machine: no GPU, no CUDA driver
    info = library.build_info()
    assert info.gpu_kernels, (f"nvcc is at {NVCC} but the GPU kernels were not built: "
                              f"{info.gpu_status}\n{info.gpu_failure}")
    assert library.gpu_kernel_ops() == set(library.OP_NAMES)
    assert "-lcudart_static" in info.flags and "sm_90" in info.gpu_status
    if not tf.config.list_physical_devices("GPU"):
        with ops.implementation("auto"):
            assert api.selected_implementation() == "custom"  # the CPU kernels of the same library
    out = _build_ops(_env()).stdout
    assert "GPU kernels: built with" in out
    assert f"  CPU: {', '.join(library.OP_NAMES)}" in out and f"  GPU: {', '.join(library.OP_NAMES)}" in out


def test_cuda_arch_list_and_gencode_flags(monkeypatch):
    monkeypatch.delenv(library.CUDA_ARCH_ENV, raising=False)
    assert library.cuda_arch_list() == ("80", "90")
    assert library._gencode_flags(("80", "90")) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
        "-gencode", "arch=compute_90,code=compute_90"]
    monkeypatch.setenv(library.CUDA_ARCH_ENV, "sm_86; 90a")
    assert library.cuda_arch_list() == ("86", "90a")
    monkeypatch.setenv(library.CUDA_ARCH_ENV, "ampere")
    with pytest.raises(ValueError, match="KERNELZOO_CUDA_ARCH"):
        library.cuda_arch_list()


def test_without_nvcc_the_library_is_cpu_only_and_the_ops_pass_their_tests():
    env = _env(NVCC="/nonexistent/nvcc", PATH=_path_without_nvcc())
    result = _build_ops(env)
    assert "GPU kernels: not built: $NVCC=/nonexistent/nvcc is not an executable" in result.stdout
    assert f"  CPU: {', '.join(library.OP_NAMES)}" in result.stdout and "  GPU:" not in result.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            os.path.join(TESTS, "test_custom_ops.py"), "-k",
                            "test_similarity_numerical_gradient or test_mex_extremes_and_mean or test_kernels_and_cli"],
                           env=env, capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert " passed" in tests.stdout


_FAILING_NVCC_SCRIPT = r"""
import json, warnings
import numpy as np
from kernelzoo import ops
from kernelzoo.ops import library
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    library.load()
info = library.build_info()
x = np.random.default_rng(0).normal(size=(1, 5, 5, 4)).astype("float32")
with ops.implementation("custom"):
    custom = np.asarray(ops.mex(x, 0.7, pool_size=2, num_instances=2))
with ops.implementation("composite"):
    reference = np.asarray(ops.mex(x, 0.7, pool_size=2, num_instances=2))
print(json.dumps({"path": info.path, "gpu_kernels": info.gpu_kernels, "gpu_status": info.gpu_status,
                  "gpu_failure": info.gpu_failure, "warnings": [str(w.message) for w in caught],
                  "error": float(np.max(np.abs(custom - reference)))}))
"""


def test_a_failing_nvcc_warns_with_its_output_and_builds_the_cpu_kernels(tmp_path):
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    (lib_dir / "libcudart_static.a").write_bytes(b"")
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n"
                    'case " $* " in\n'
                    '  *" --version "*) echo "Cuda compilation tools, release 0.0, fake";;\n'
                    f'  *" --dryrun "*) echo "#$ LIBRARIES=  \\"-L{lib_dir}\\"" >&2;;\n'
                    '  *) echo "fake-nvcc: simulated CUDA error" >&2; exit 1;;\n'
                    "esac\n")
    nvcc.chmod(0o755)
    run = subprocess.run([sys.executable, "-c", _FAILING_NVCC_SCRIPT], env=_env(NVCC=str(nvcc)),
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    try:
        assert "simulated CUDA error" in run.stderr and "CPU kernels only" in run.stderr  # loud at build time
        assert not result["gpu_kernels"] and "nvcc failed" in result["gpu_status"]
        assert "simulated CUDA error" in result["gpu_failure"]
        (message,) = [w for w in result["warnings"] if "no GPU kernels" in w]
        assert "simulated CUDA error" in message and "kernelzoo build-ops" in message
        assert result["error"] < 1e-5
    finally:  # the failure note of this one-off fake nvcc (its -L folder is in the key)
        for name in os.listdir(os.path.dirname(result["path"])):
            note = os.path.join(os.path.dirname(result["path"]), name)
            if name.endswith(".so.failed") and "fake-nvcc" in open(note, encoding="utf-8").read():
                os.remove(note)


@pytest.fixture
def fresh_selfcheck(monkeypatch):
    """A self-check with no device checked and no op routed yet, on the CPU kernels."""
    assert library.available(), library.failure_reason()
    monkeypatch.setattr(selfcheck, "_checked", {})
    monkeypatch.setattr(selfcheck, "_routed", set())
    monkeypatch.setattr(api, "GPU_DEVICE", "/CPU:0")
    monkeypatch.delenv(library.GPU_KERNELS_ENV, raising=False)
    monkeypatch.delenv("KERNELZOO_OPS", raising=False)
    return selfcheck


def test_self_check_passes_on_the_cpu_kernels_and_is_fast(fresh_selfcheck):
    selfcheck.check("/CPU:0")  # the first run traces the gradients' functions and warms the kernels
    selfcheck._checked.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start = time.perf_counter()
        results = selfcheck.check("/CPU:0")
        seconds = time.perf_counter() - start
    assert results == {"similarity": None, "mex": None}
    assert not selfcheck.routed_to_composite()
    assert seconds < 1.0, seconds  # about 0.05 s alone on this 2-core machine; margin for a busy one
    assert selfcheck.check("/CPU:0") is results  # once per device and process: the second call is the cached result


def test_self_check_fault_warns_once_and_routes_only_that_op_to_the_composite(fresh_selfcheck, monkeypatch):
    def fault(op, values):
        return [values[0] + 0.5] + values[1:] if op == "mex" else values

    monkeypatch.setattr(selfcheck, "_fault", fault)
    monkeypatch.setattr(api, "_gpu_visible", lambda: True)  # dispatch as on a GPU machine, with /CPU:0 checked
    monkeypatch.setattr(library, "gpu_kernel_ops", lambda: frozenset(library.OP_NAMES))
    with pytest.warns(RuntimeWarning) as caught:
        assert ops.selected_implementation("similarity") == "custom"
        assert ops.selected_implementation("mex") == "composite"
        assert ops.selected_implementation() == "composite"
    (message,) = [str(w.message) for w in caught if "disagrees" in str(w.message)]
    assert "custom mex kernel on /CPU:0" in message and "pool 2x2, 2 instances, offsets, c" in message
    assert selfcheck.routed_to_composite() == {"mex"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        assert ops.selected_implementation("mex") == "composite"
        report = ops.describe_implementation()
    assert "mex on the GPU: composite, because its GPU kernel failed the self-check" in report
    assert "similarity on the GPU: GPU kernels" in report

    def refuse(*args, **kwargs):
        raise AssertionError("the custom mex ran after its self-check failed")

    monkeypatch.setattr(custom, "mex", refuse)
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(ops.mex(x, 1.0, pool_size=2)).shape, (1, 2, 2, 1))


def test_an_op_routed_to_the_composite_stays_there(fresh_selfcheck, monkeypatch):
    """An op a failed self-check routed to the composite (on any device) runs the composite on the GPU too."""
    monkeypatch.setattr(api, "_gpu_visible", lambda: True)
    monkeypatch.setattr(library, "gpu_kernel_ops", lambda: frozenset(library.OP_NAMES))
    selfcheck._routed.add("mex")
    assert ops.selected_implementation("mex") == "composite"
    assert ops.selected_implementation("similarity") == "custom"


def test_self_check_mismatch_compares_the_nan_pattern():
    """A NaN where the composite has a number is a mismatch, though NaN-ignoring maxima see no error."""
    reference = [np.array([1.0, 2.0], "float32")]
    assert "NaN pattern" in selfcheck._mismatch([np.array([1.0, np.nan], "float32")], reference)
    assert selfcheck._mismatch([np.array([1.0, 2.0005], "float32")], reference) is None


def test_gpu_kernels_env_zero_sends_the_gpu_to_the_composite(fresh_selfcheck, monkeypatch):
    monkeypatch.setattr(api, "_gpu_visible", lambda: True)
    monkeypatch.setattr(library, "gpu_kernel_ops", lambda: frozenset(library.OP_NAMES))
    monkeypatch.setenv(library.GPU_KERNELS_ENV, "0")
    assert ops.selected_implementation("similarity") == "composite"
    assert "KERNELZOO_GPU_KERNELS=0" in ops.describe_implementation()
    assert not selfcheck._checked  # no self-check ran
    monkeypatch.setattr(library, "gpu_kernel_ops", lambda: frozenset())
    monkeypatch.delenv(library.GPU_KERNELS_ENV)
    assert ops.selected_implementation("mex") == "composite"
    assert "no GPU kernel for KernelzooMex" in ops.describe_implementation()
