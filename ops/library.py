"""Builds, caches and loads the kernelzoo custom-op library (C++ sources in `cc/`).

The library is compiled just in time on first use with the system C++ compiler
(`$CXX`, else `g++`/`c++`/`clang++`) against the installed TensorFlow's headers
and flags, into a per-TF-version cache directory (`$KERNELZOO_CACHE`, else
`~/.cache/kernelzoo`)::

    <cache>/tf-<version>/libkernelzoo_ops-<key>.so

where `<key>` hashes the TF version, the compiler, the flags, the CPU (the build
uses `-march=native`) and the sources. A file lock (`filelock`) makes parallel
processes build once; the compiler writes a temporary file that is atomically
renamed into place, so a reader never sees a half-written library.

Public API: `load()`, `available()`, `build(force=False)`, `kernels()`, and
the `kernelzoo build-ops` CLI hooks `add_arguments(parser, command)` and
`run(args, command)`.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

__all__ = ["load", "available", "build", "kernels", "library_path", "cache_dir",
           "source_files", "remove_stale_libraries", "add_arguments", "run"]

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cc")
LIB_PREFIX = "libkernelzoo_ops-"
OP_NAMES = ("KernelzooSimilarity", "KernelzooSimilarityGrad", "KernelzooMex",
            "KernelzooMexGrad")
# Flags besides TensorFlow's own; keep in sync with the cache key (they are
# part of it). -ffp-contract=fast lets g++ fuse multiply-adds under -std=c++17.
BASE_FLAGS = ("-std=c++17", "-shared", "-fPIC", "-O3", "-march=native",
              "-ffp-contract=fast", "-fno-math-errno", "-Wno-deprecated-declarations",
              "-Wno-interference-size")

_lock = threading.Lock()
_module = None
_available = None


def source_files(source_dir=None):
    """The C++ translation units (`*.cc`, not `*.cu.cc`) and headers, sorted."""
    source_dir = source_dir or SOURCE_DIR
    names = sorted(os.listdir(source_dir)) if os.path.isdir(source_dir) else []
    units = [os.path.join(source_dir, n) for n in names
             if n.endswith(".cc") and not n.endswith(".cu.cc")]
    headers = [os.path.join(source_dir, n) for n in names if n.endswith(".h")]
    return units, headers


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def _tf_flags():
    import tensorflow as tf

    return (tf.__version__, list(tf.sysconfig.get_compile_flags()),
            list(tf.sysconfig.get_link_flags()))


def _cpu_signature():
    """What -march=native depends on: the CPU model and feature flags."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    parts.append(line.strip())
                if line.strip() == "":  # first processor only
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def cache_dir():
    """Per-TF-version cache directory (created on demand by `build`)."""
    import tensorflow as tf

    root = os.environ.get("KERNELZOO_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kernelzoo")
    return os.path.join(os.path.abspath(root), f"tf-{tf.__version__}")


def _build_key(compiler, flags, units, headers, extra=""):
    h = hashlib.sha256()
    h.update(f"{compiler}\n{' '.join(flags)}\n{extra}\n".encode())
    for path in units + headers:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _run(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace")


def _fail(cmd, proc_out, returncode):
    tail = "\n".join(proc_out.strip().splitlines()[-40:])
    raise RuntimeError(
        f"kernelzoo: building the custom op library failed (exit {returncode}).\n"
        f"command: {' '.join(cmd)}\ncompiler output (tail):\n{tail}")


def _compile(compiler, units, out_path, compile_flags, link_flags, work_dir, jobs):
    """Compiles each unit to an object (up to `jobs` at a time), then links."""
    objects, pending, running = [], list(units), []
    while pending or running:
        while pending and len(running) < jobs:
            unit = pending.pop(0)
            obj = os.path.join(work_dir, os.path.basename(unit) + ".o")
            cmd = [compiler] + list(BASE_FLAGS) + list(compile_flags) + ["-c", unit, "-o", obj]
            running.append((cmd, _run(cmd)))
            objects.append(obj)
        cmd, proc = running.pop(0)
        out, err = proc.communicate()
        if proc.returncode != 0:
            for _, p in running:
                p.kill()
                p.communicate()
            _fail(cmd, err or out, proc.returncode)
    cmd = ([compiler, "-shared", "-fPIC"] + objects + ["-o", out_path] + list(link_flags))
    proc = _run(cmd)
    out, err = proc.communicate()
    if proc.returncode != 0:
        _fail(cmd, err or out, proc.returncode)


def _build_library(units, headers, out_dir, compiler, compile_flags, link_flags,
                   key_extra="", force=False, prefix=LIB_PREFIX, log=None, jobs=None):
    """Compiles `units` into `<out_dir>/<prefix><key>.so` unless it exists.

    Safe across processes: a file lock serialises builders, the library is
    written to a temporary file and renamed into place. Returns the path.
    """
    from filelock import FileLock

    flags = list(BASE_FLAGS) + list(compile_flags) + list(link_flags)
    key = _build_key(compiler, flags, units, headers, key_extra)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{prefix}{key}.so")
    if os.path.exists(path) and not force:
        return path
    with FileLock(path + ".lock"):
        if os.path.exists(path) and not force:
            return path  # another process built it while we waited
        if log:
            log(f"kernelzoo: building custom ops ({len(units)} sources) -> {path}")
        start = time.time()
        jobs = jobs or max(1, min(len(units), os.cpu_count() or 1))
        with tempfile.TemporaryDirectory(prefix=f".{prefix}{key}-", dir=out_dir) as work:
            tmp = os.path.join(work, "lib.so")
            _compile(compiler, units, tmp, compile_flags, link_flags, work, jobs)
            os.replace(tmp, path)
        if log:
            log(f"kernelzoo: built in {time.time() - start:.1f} s")
    return path


def library_path():
    """Where the library for the current TF/compiler/CPU/sources lives (built or not)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(_no_compiler_message())
    version, cflags, lflags = _tf_flags()
    units, headers = source_files()
    flags = list(BASE_FLAGS) + cflags + lflags
    key = _build_key(compiler, flags, units, headers, _key_extra(version))
    return os.path.join(cache_dir(), f"{LIB_PREFIX}{key}.so")


def _key_extra(version):
    return f"tf={version}\ncpu={_cpu_signature()}"


def _no_compiler_message():
    return ("kernelzoo: no C++ compiler found (looked for $CXX, g++, c++, clang++); "
            "install one (e.g. `apt-get install g++`) to use the custom ops, or set "
            "KERNELZOO_OPS=composite to use the pure keras.ops implementation.")


def build(force=False):
    """Builds the library if needed (or always with force=True); returns its path."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(_no_compiler_message())
    units, headers = source_files()
    if not units:
        raise RuntimeError(f"kernelzoo: no C++ sources found in {SOURCE_DIR}")
    version, cflags, lflags = _tf_flags()
    return _build_library(units, headers, cache_dir(), compiler, cflags, lflags,
                          key_extra=_key_extra(version), force=force,
                          log=lambda m: print(m, file=sys.stderr, flush=True))


def load():
    """Returns the loaded op module (`tf.load_op_library`), building it if needed.

    Raises RuntimeError with the reason (no compiler, compiler errors) on failure.
    """
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            import tensorflow as tf

            path = build()
            try:
                _module = tf.load_op_library(path)
            except Exception as e:  # tf.errors.NotFoundError on symbol mismatch etc.
                raise RuntimeError(
                    f"kernelzoo: loading the custom op library {path} failed: {e}. "
                    f"Try `kernelzoo build-ops --force`.") from e
    return _module


def available():
    """True if the custom ops can be loaded (building them if needed). Never raises.

    The first failure warns once (RuntimeWarning) that the composite keras.ops
    implementation is used instead.
    """
    global _available
    if _available is None:
        try:
            load()
            _available = True
        except Exception as error:  # noqa: BLE001 - any failure means "not available"
            _available = False
            warnings.warn(f"kernelzoo: the custom op library is unavailable, using the composite keras.ops "
                          f"implementation instead (set KERNELZOO_OPS=composite to silence this). Reason: {error}",
                          RuntimeWarning, stacklevel=2)
    return _available


def kernels():
    """(op name, device) pairs of the kernels the library registers."""
    load()
    from tensorflow.python.framework import kernels as tf_kernels

    out = []
    for name in OP_NAMES:
        for k in tf_kernels.get_registered_kernels_for_op(name).kernel:
            out.append((name, k.device_type))
    return out


# ------------------------------------------------------------ CLI hooks --
def add_arguments(parser, command=None):
    parser.description = "Build (or rebuild) the kernelzoo custom op library."
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if a cached library exists")
    parser.add_argument("--clean", action="store_true",
                        help="delete the cached libraries of other source versions (this TF version's cache)")


def run(args, command=None):
    try:
        path = build(force=getattr(args, "force", False))
        load()
        pairs = kernels()
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(path)
    for name, device in pairs:
        print(f"  {name}  [{device}]")
    if getattr(args, "clean", False):
        for stale in remove_stale_libraries(keep=path):
            print(f"removed {stale}")
    return 0


def remove_stale_libraries(keep):
    """Deletes the cached libraries in `keep`'s directory other than `keep`; returns their paths."""
    folder = os.path.dirname(keep)
    stale = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
             if name.startswith(LIB_PREFIX) and name.endswith(".so") and os.path.join(folder, name) != keep]
    for path in stale:
        os.remove(path)
    return stale
