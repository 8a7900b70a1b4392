"""The op library builds and loads on this CPU with every target flag set, and failures are loud.

Each flag variant is built in a fresh process (one op library per process: the ops
register once), beside the in-process tests (conftest.BackgroundJob), into the shared cache,
so later runs reuse it. Only a machine without a C++ compiler may skip.
"""
import json
import os
import platform
import sys

import pytest

from kernelzoo.ops import library

from conftest import background_job, job_folder

if library._compiler() is None:
    pytest.skip("no C++ compiler: the custom ops cannot be built", allow_module_level=True)

X86 = platform.machine().lower() in ("x86_64", "amd64")


# Builds the library with $KERNELZOO_ARCH_FLAGS, then compares custom and composite on small configs.
_VARIANT_SCRIPT = r"""
import json, warnings
import numpy as np
from kernelzoo import ops
from kernelzoo.ops import library
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    library.load()
info = library.build_info()
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 9, 8, 3)).astype("float32")
x[0, 1, 2, 0] = np.nan
z = rng.normal(size=(3, 2, 3, 5)).astype("float32")
u = rng.uniform(0.2, 2.0, size=z.shape).astype("float32")
offsets = rng.normal(size=(2, 2, 4, 2, 2, 3)).astype("float32")
cases = {
    "l1": lambda: ops.similarity(x, z, u, similarity="l1", padding="same", ignore_nan=True),
    "l2": lambda: ops.similarity(x, z, u, similarity="l2", strides=2, ignore_nan=True),
    "lp": lambda: ops.similarity(x, z, u, similarity="lp", p=np.linspace(0.7, 2.5, 5).astype("float32"),
                                 ignore_nan=True),
    "linear": lambda: ops.similarity(np.nan_to_num(x), z, u, similarity="linear"),
    "mex": lambda: ops.mex(np.nan_to_num(x), 0.7, num_instances=4, pool_size=2, offsets=offsets, c=0.5),
}
errors = {}
for name, case in cases.items():
    with ops.implementation("custom"):
        custom = np.asarray(case())
    with ops.implementation("composite"):
        reference = np.asarray(case())
    errors[name] = float(np.max(np.abs(custom - reference)) / max(1.0, np.max(np.abs(reference))))
print(json.dumps({"variant": info.variant, "arch_flags": list(info.arch_flags),
                  "failed": [[v, list(f), m[-3000:]] for v, f, m in info.failed], "errors": errors,
                  "warnings": [str(w.message) for w in caught]}))
"""


def _variant_job(arch_flags):
    """The library built with $KERNELZOO_ARCH_FLAGS in a fresh process (one job beside the in-process tests).

    CPU target flags only: the nvcc objects do not depend on them (GPU builds: test_gpu_build.py)."""
    return background_job(f"op-build {arch_flags}", dict(
        args=[sys.executable, "-c", _VARIANT_SCRIPT], timeout=900,
        env=dict(os.environ, KERNELZOO_ARCH_FLAGS=arch_flags, KERNELZOO_OPS="auto", KERNELZOO_GPU_KERNELS="0")))


def _build_variant(job):
    (result,) = job.results()
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(outcome, indent=1))  # in full with a failure's report (an assertion's message is cut short)
    return outcome


FLAG_VARIANTS = ["-march=native -mno-avx512fp16", "-march=x86-64-v3", "-march=x86-64-v2"]
VARIANT_JOBS = {flags: _variant_job(flags) for flags in FLAG_VARIANTS} if X86 else {}
AVX512FP16_FLAGS = "-march=native -mavx512fp16"
AVX512FP16_JOB = _variant_job(AVX512FP16_FLAGS) if "avx512_fp16" in library.cpu_flags() else None


def test_custom_ops_load_with_the_default_flags_whenever_a_compiler_exists():
    """No silent fallback: where a compiler exists the library must load, built with the first flag set."""
    library.load()
    info = library.build_info()
    assert not info.fell_back, f"the op library fell back to {info.arch_flags}: {info.failed}"
    if X86 and not os.environ.get(library.ARCH_FLAGS_ENV):
        assert info.variant == "native" and "-mno-avx512fp16" in info.arch_flags
    assert info.cpu_features, "the compiler reported no instruction-set macros for the target flags"


@pytest.mark.skipif(not X86, reason="x86-64 flag variants")
@pytest.mark.parametrize("arch_flags", [pytest.param(flags, marks=job.mark) for flags, job in VARIANT_JOBS.items()]
                         or FLAG_VARIANTS)
def test_each_flag_variant_builds_loads_and_matches_the_composite(arch_flags):
    result = _build_variant(VARIANT_JOBS[arch_flags])
    assert result["arch_flags"] == arch_flags.split() and not result["failed"], result
    assert all(error < 1e-5 for error in result["errors"].values()), result["errors"]


@pytest.mark.skipif(AVX512FP16_JOB is None, reason="the CPU has no AVX512-FP16")
@pytest.mark.background(f"op-build {AVX512FP16_FLAGS}")
def test_avx512fp16_enabled_explicitly_falls_back_to_portable_flags_loudly():
    """TF's Eigen does not compile with AVX512-FP16: the build retries with x86-64-v3 and says so."""
    result = _build_variant(AVX512FP16_JOB)
    assert [v for v, _, _ in result["failed"]] == ["$KERNELZOO_ARCH_FLAGS"], result
    assert "PacketMathFP16" in result["failed"][0][2], result["failed"][0][2]   # Eigen's FP16 header, not any error
    assert result["arch_flags"] == ["-march=x86-64-v3"]
    assert any("kernelzoo build-ops" in w and "-mavx512fp16" in w for w in result["warnings"]), result["warnings"]
    assert all(error < 1e-5 for error in result["errors"].values()), result["errors"]


# What the stand-in `_attempt` below answers for the first flag set: a compiler error like Eigen's under -mavx512fp16.
_SIMULATED_FAILURE = ("Eigen/src/Core/arch/AVX512/PacketMathFP16.h:1:1: error: simulated failure of the first "
                      "flag set\ncompilation terminated.")


@pytest.mark.parametrize("override", [None, AVX512FP16_FLAGS])
def test_a_failing_first_flag_set_falls_back_to_the_next_loudly(monkeypatch, capfd, tmp_path, override):
    """The fallback of `build` on any CPU (test_avx512fp16_... needs AVX512-FP16): `library._attempt`, which
    builds one flag set, replaced so that the first candidate (native, or $KERNELZOO_ARCH_FLAGS) fails and
    the next one answers with the library this process already built (nothing compiled, no failure note
    written: the cache is an empty temporary folder meanwhile). The build info records the fallback, load()
    warns, build-ops reports it."""
    import argparse

    real = library.build_info()  # built (or found) with the default flags, as every other test uses it
    monkeypatch.setenv("KERNELZOO_CACHE", str(tmp_path))
    monkeypatch.setenv(library.GPU_KERNELS_ENV, "0")  # one attempt per flag set (no nvcc build first)
    if override:
        monkeypatch.setenv(library.ARCH_FLAGS_ENV, override)
    else:
        monkeypatch.delenv(library.ARCH_FLAGS_ENV, raising=False)
    (first_variant, first_flags), (second_variant, second_flags) = library.arch_candidates()[:2]
    assert first_variant == ("$KERNELZOO_ARCH_FLAGS" if override else "native")
    tf_flags = library._tf_flags()[1]
    attempts = []

    def attempt(out_dir, compiler, compile_flags, lflags, units, headers, extra, force, cuda, note):
        assert out_dir.startswith(str(tmp_path)) and cuda is None
        assert list(compile_flags[len(compile_flags) - len(tf_flags):]) == tf_flags
        attempts.append(tuple(compile_flags[:len(compile_flags) - len(tf_flags)]))
        return (None, _SIMULATED_FAILURE) if attempts[-1] == first_flags else (real.path, None)

    monkeypatch.setattr(library, "_attempt", attempt)
    monkeypatch.setattr(library, "_module", None)  # restored afterwards: the process keeps its library
    monkeypatch.setattr(library, "_build_info", None)
    first, second = " ".join(first_flags), " ".join(second_flags) or "no -march"
    with pytest.warns(RuntimeWarning) as caught:
        library.load()
    info = library.build_info()
    assert attempts == [first_flags, second_flags]  # in order, stopping at the first that builds
    assert info.fell_back and info.variant == second_variant and info.arch_flags == second_flags
    assert info.failed == ((first_variant, first_flags, _SIMULATED_FAILURE),)
    assert info.path == real.path
    (message,) = [str(w.message) for w in caught if "custom op library was built with" in str(w.message)]
    assert f"built with {second} because the build with {first} failed" in message, message
    assert "kernelzoo build-ops" in message, message
    assert f"the build with {first} failed; retrying with portable flags" in capfd.readouterr().err

    assert library.run(argparse.Namespace(force=False, clean=False)) == 0  # `kernelzoo build-ops`
    out, err = capfd.readouterr()
    assert f"target: {second_variant} ({second}) [fallback: see the failures above]" in out, out
    assert f"failed: {first_variant} ({first}):\n{_SIMULATED_FAILURE}" in err, err
    assert not list(tmp_path.iterdir())


def _failing_compiler_job():
    """build-ops, then the first op calls, in fresh processes with a $CXX that fails every compile; the
    compile count after each (the compiler logs every compile to a file)."""
    folder = job_folder()
    compiler, log = folder / "cxx", folder / "compiles.log"
    compiler.write_text(f"#!/bin/sh\ncase \" $* \" in *\" -c \"*) echo compile >> {log}; "
                        "echo 'boom: simulated compiler error' >&2; exit 1;; esac\nexit 0\n")
    compiler.chmod(0o755)
    env = dict(os.environ, CXX=str(compiler), KERNELZOO_CACHE=str(folder / "cache"), KERNELZOO_OPS="auto")
    env.pop(library.ARCH_FLAGS_ENV, None)
    script = ("import warnings, numpy as np\n"
              "from kernelzoo import ops\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    ops.similarity(np.ones((1, 4, 4, 2), 'float32'), np.zeros((2, 2, 2, 3), 'float32'), "
              "similarity='l1')\n"
              "    ops.mex(np.ones((1, 4, 4, 2), 'float32'), 1.0)\n"
              "import json; print(json.dumps([str(w.message) for w in caught "
              "if 'custom op library' in str(w.message)]))\n"
              "print(ops.describe_implementation())\n")
    count = dict(args=[sys.executable, "-c", "import sys; print(open(sys.argv[1]).read().count('compile'))", str(log)],
                 timeout=60)
    return background_job("op-build failing compiler",
                          dict(args=[sys.executable, "-m", "kernelzoo.cli", "build-ops"], env=env, timeout=300),
                          count, dict(args=[sys.executable, "-c", script], env=env, timeout=300), count)


FAILING_COMPILER = _failing_compiler_job()


@FAILING_COMPILER.mark
def test_a_failing_compiler_is_loud_everywhere():
    """build-ops exits non-zero with the compiler's message; the first op call warns with it and the command."""
    build, compiled, run, compiled_after = FAILING_COMPILER.results()
    assert build.returncode != 0
    assert "boom: simulated compiler error" in build.stderr
    for flags in ("-march=native", "-march=x86-64-v3", "-march=x86-64-v2") if X86 else ():
        assert flags in build.stderr
    assert compiled.returncode == 0, compiled.stderr
    compiles = int(compiled.stdout)
    assert run.returncode == 0, run.stderr[-3000:]
    messages, report = run.stdout.split("\n", 1)
    (message,) = json.loads(messages)  # warned once
    assert "boom: simulated compiler error" in message and "kernelzoo build-ops" in message
    assert "composite" in report and "FALLBACK" in report and "kernelzoo build-ops" in report
    assert int(compiled_after.stdout) == compiles  # the failures were remembered, not recompiled


def test_clean_removes_failure_notes_of_other_sources(tmp_path):
    keep = tmp_path / f"{library.LIB_PREFIX}current.so"
    old_note = tmp_path / f"{library.LIB_PREFIX}old.so.failed"
    for path in (keep, old_note):
        path.write_text("x")
    assert library.remove_stale_libraries(str(keep)) == [str(old_note)]
    assert keep.exists() and not old_note.exists()


def test_arch_candidates_start_with_the_override_then_retry_portable(monkeypatch):
    monkeypatch.setenv(library.ARCH_FLAGS_ENV, "-march=skylake -mtune=generic")
    candidates = library.arch_candidates()
    assert candidates[0] == ("$KERNELZOO_ARCH_FLAGS", ("-march=skylake", "-mtune=generic"))
    if X86:
        assert [flags for _, flags in candidates[1:]] == [("-march=x86-64-v3",), ("-march=x86-64-v2",)]
    monkeypatch.delenv(library.ARCH_FLAGS_ENV)
    if X86:
        assert library.arch_candidates()[0] == ("native", ("-march=native", "-mno-avx512fp16"))


def _wrapped_compiler(folder, failure, every_time=False):
    """A $CXX that logs each compile to `compiles.log` and runs `failure` (shell) on the first one (on each
    with `every_time`), then calls the real compiler."""
    log, wrapper = folder / "compiles.log", folder / "cxx"
    first = "true" if every_time else f"mkdir {folder / 'failed-once'} 2>/dev/null"
    wrapper.write_text(f"#!/bin/sh\ncase \" $* \" in *\" -c \"*)\n  echo compile >> {log}\n"
                       f"  if {first}; then {failure}; fi;;\nesac\nexec {library._compiler()} \"$@\"\n")
    wrapper.chmod(0o755)
    units = []
    for name in ("a", "b"):
        unit = folder / f"{name}.cc"
        unit.write_text(f"int kernelzoo_test_{name}() {{ return 1; }}\n")
        units.append(str(unit))
    return str(wrapper), units, log


def _attempt(folder, compiler, units, headers=()):
    """`library._attempt` for `units` alone (no TF flags, no nvcc) into `folder`/cache."""
    return library._attempt(str(folder / "cache"), compiler, [], [], units, list(headers), "test", False, None, "")


def _failure_notes(folder):
    """The failures `_attempt` remembered in `folder`/cache."""
    return [name for name in os.listdir(folder / "cache") if name.endswith(".failed")]


@pytest.mark.parametrize("failure", ["kill -KILL $$",
                                     "echo 'g++: fatal error: Killed signal terminated program cc1plus' >&2; exit 1",
                                     "echo 'cc1plus: out of memory allocating 65536 bytes' >&2; exit 1"])
def test_a_compiler_killed_or_out_of_memory_is_retried_one_source_at_a_time_not_remembered(tmp_path, capfd, failure):
    compiler, units, log = _wrapped_compiler(tmp_path, failure)
    path, error = _attempt(tmp_path, compiler, units)
    assert error is None and os.path.exists(path) and not os.path.exists(path + ".failed")
    stderr = capfd.readouterr().err
    assert "killed or ran out of memory" in stderr and "retrying one source at a time" in stderr
    assert len(units) + 1 <= log.read_text().count("compile") <= 2 * len(units)


def test_a_resource_failure_that_persists_is_raised_and_not_remembered_as_a_flag_failure(tmp_path):
    compiler, units, _ = _wrapped_compiler(tmp_path, "echo 'No space left on device' >&2; exit 1", every_time=True)
    with pytest.raises(library.CompilerResourceError, match="not a problem of the target flags"):
        _attempt(tmp_path, compiler, units)
    assert not _failure_notes(tmp_path)


def test_an_ordinary_compile_error_is_remembered_and_not_retried(tmp_path):
    compiler, units, log = _wrapped_compiler(tmp_path, "echo 'boom: simulated compiler error' >&2; exit 1")
    path, error = _attempt(tmp_path, compiler, units)
    assert path is None and "boom: simulated compiler error" in error
    (note,) = _failure_notes(tmp_path)
    assert log.read_text().count("compile") <= len(units)


def test_a_failure_while_the_sources_vanish_is_not_remembered(tmp_path):
    """A checkout removed mid-build (`rm -rf` of a clone whose build still runs) is not the flags' failure."""
    header = tmp_path / "util.h"
    header.write_text("// header\n")
    compiler, units, _ = _wrapped_compiler(
        tmp_path, f"rm {header}; echo 'a.cc:1:10: fatal error: util.h: No such file or directory' >&2; exit 1")
    with pytest.raises(RuntimeError, match="changed or vanished during the build"):
        _attempt(tmp_path, compiler, units, [str(header)])
    assert not _failure_notes(tmp_path)


def test_a_remembered_failure_naming_one_of_our_files_as_missing_is_stale_and_rebuilt(tmp_path):
    header = tmp_path / "util.h"
    header.write_text("// header\n")
    compiler, units, _ = _wrapped_compiler(tmp_path, ":")
    path = library._library_file(str(tmp_path / "cache"), library.LIB_PREFIX, compiler, [], [], units, [str(header)],
                                 "test")
    os.makedirs(tmp_path / "cache")
    with open(path + ".failed", "w") as note:
        note.write("kernelzoo: building the custom op library failed (exit 1).\n"
                   "a.cc:1:10: fatal error: util.h: No such file or directory\ncompilation terminated.")
    built, error = _attempt(tmp_path, compiler, units, [str(header)])
    assert error is None and built == path and os.path.exists(path) and not os.path.exists(path + ".failed")
    with open(path + ".failed", "w") as note:  # any other remembered failure still stands
        note.write("a.cc:1:1: error: boom")
    os.remove(path)
    assert _attempt(tmp_path, compiler, units, [str(header)]) == (None, "a.cc:1:1: error: boom")
