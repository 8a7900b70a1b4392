"""Builds, caches and loads the kernelzoo custom-op library (C++ sources in `cc/`).

The library is compiled just in time on first use with the system C++ compiler
(`$CXX`, else `g++`/`c++`/`clang++`) against the installed TensorFlow's headers
and flags, into a per-TF-version cache directory (`$KERNELZOO_CACHE`, else
`~/.cache/kernelzoo`)::

    <cache>/tf-<version>/libkernelzoo_ops-<key>.so

where `<key>` hashes the TF version, the compiler and its version, the flags
actually used, the CPU and the sources. A file lock (`filelock`) makes parallel
processes build once; the compiler writes a temporary file that is atomically
renamed into place, so a reader never sees a half-written library.

Target flags: `-march=native` minus the instruction sets TensorFlow's bundled
Eigen cannot compile with (`-mno-avx512fp16`: `PacketMathFP16.h` fails under
g++ 12, found by compiling TF's headers with each `-mavx512*` / `-mamx*` flag
g++ 12 knows; every other one compiles). If that build fails anyway, the build
retries once per portable flag set (`-march=x86-64-v3`, then `-march=x86-64-v2`;
no `-march` off x86-64) before giving up; `$KERNELZOO_ARCH_FLAGS` replaces the
first attempt. A failed attempt is remembered beside the cache (`<key>.failed`,
holding the compiler output) so later processes go straight to the flags that
work; `build(force=True)` retries everything.

Public API: `load()`, `available()`, `build(force=False)`, `build_info()`,
`kernels()`, and the `kernelzoo build-ops` CLI hooks `add_arguments(parser,
command)` and `run(args, command)`.
"""
import dataclasses
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

__all__ = ["load", "available", "build", "build_info", "BuildInfo", "failure_reason", "arch_candidates", "kernels",
           "cache_dir", "source_files", "remove_stale_libraries", "add_arguments", "run"]

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cc")
LIB_PREFIX = "libkernelzoo_ops-"
OP_NAMES = ("KernelzooSimilarity", "KernelzooSimilarityGrad", "KernelzooMex",
            "KernelzooMexGrad")
# Flags besides TensorFlow's own and the target flags (all part of the cache key).
# -ffp-contract=fast lets g++ fuse multiply-adds under -std=c++17.
BASE_FLAGS = ("-std=c++17", "-shared", "-fPIC", "-O3",
              "-ffp-contract=fast", "-fno-math-errno", "-Wno-deprecated-declarations",
              "-Wno-interference-size")
# Instruction sets TensorFlow's bundled Eigen does not compile with (see the module docstring).
UNSUPPORTED_ISA_FLAGS = ("-mno-avx512fp16",)
# Retries, in order, when the first target flags fail to compile.
PORTABLE_X86_FLAGS = (("x86-64-v3", ("-march=x86-64-v3",)), ("x86-64-v2", ("-march=x86-64-v2",)))
ARCH_FLAGS_ENV = "KERNELZOO_ARCH_FLAGS"

_lock = threading.Lock()
_module = None
_available = None
_build_info = None
_failure = []


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """What `build` produced: the library, the target flags that compiled, and the attempts that failed."""

    path: str
    variant: str                 # "native", "x86-64-v3", "x86-64-v2", "portable" or "$KERNELZOO_ARCH_FLAGS"
    arch_flags: tuple            # the target flags used
    flags: tuple                 # every compile and link flag used
    cpu_features: tuple          # instruction-set macros those flags enable (e.g. "AVX512F")
    failed: tuple = ()           # (variant, arch flags, compiler output tail) of earlier attempts

    @property
    def fell_back(self):
        return bool(self.failed)


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


@functools.lru_cache(maxsize=None)
def _compiler_version(compiler):
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def arch_candidates():
    """Target flag sets to try, best first: [(variant, flags), ...]."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        first = ("native", ("-march=native",) + UNSUPPORTED_ISA_FLAGS)
        retries = list(PORTABLE_X86_FLAGS)
    else:
        first, retries = ("native", ("-march=native",)), [("portable", ())]
    override = os.environ.get(ARCH_FLAGS_ENV, "").strip()
    if override:
        first = (f"${ARCH_FLAGS_ENV}", tuple(shlex.split(override)))
    return [first] + retries


def cpu_features(compiler, arch_flags):
    """Instruction-set macros (e.g. "AVX2", "AVX512F", "AMX_TILE") that `arch_flags` enable in `compiler`."""
    try:
        out = subprocess.run([compiler, "-dM", "-E", "-x", "c++", *arch_flags, os.devnull],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    names = re.findall(r"^#define __((?:SSE|AVX|FMA|AMX|F16C|BMI|POPCNT|AES|SHA|GFNI|VAES|VPCLMULQDQ)\w*)__ 1$",
                       out, re.MULTILINE)
    return tuple(sorted(set(names)))


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


def _library_file(out_dir, prefix, compiler, compile_flags, link_flags, units, headers, key_extra):
    flags = list(BASE_FLAGS) + list(compile_flags) + list(link_flags)
    key = _build_key(compiler, flags, units, headers, key_extra)
    return os.path.join(out_dir, f"{prefix}{key}.so")


def _build_library(units, headers, out_dir, compiler, compile_flags, link_flags,
                   key_extra="", force=False, prefix=LIB_PREFIX, log=None, jobs=None):
    """Compiles `units` into `<out_dir>/<prefix><key>.so` unless it exists.

    Safe across processes: a file lock serialises builders, the library is
    written to a temporary file and renamed into place. Returns the path.
    """
    from filelock import FileLock

    path = _library_file(out_dir, prefix, compiler, compile_flags, link_flags, units, headers, key_extra)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(path) and not force:
        return path
    with FileLock(path + ".lock"):
        if os.path.exists(path) and not force:
            return path  # another process built it while we waited
        if log:
            log(f"kernelzoo: building custom ops ({len(units)} sources) -> {path}")
        start = time.time()
        jobs = jobs or max(1, min(len(units), os.cpu_count() or 1))
        with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(path)}-", dir=out_dir) as work:
            tmp = os.path.join(work, "lib.so")
            _compile(compiler, units, tmp, compile_flags, link_flags, work, jobs)
            os.replace(tmp, path)
        if log:
            log(f"kernelzoo: built in {time.time() - start:.1f} s")
    return path


def _key_extra(version, compiler):
    return f"tf={version}\ncompiler={_compiler_version(compiler)}\ncpu={_cpu_signature()}"


def _no_compiler_message():
    return ("kernelzoo: no C++ compiler found (looked for $CXX, g++, c++, clang++); "
            "install one (e.g. `apt-get install g++`) to use the custom ops, or set "
            "KERNELZOO_OPS=composite to use the pure keras.ops implementation.")


def build(force=False):
    """Builds the library if needed (or always with force=True); returns its path.

    Tries `arch_candidates()` in order and keeps the first that compiles (see the
    module docstring); `build_info()` then says which, and why earlier ones failed.
    Raises RuntimeError with every attempt's compiler output if none compiles.
    """
    global _build_info
    _build_info = _build(force)  # assigned here, outside any loop: autograph's loop rewrite would drop it
    return _build_info.path


def _build(force):
    """`build`'s work: the `BuildInfo` of the first flag set that compiles."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(_no_compiler_message())
    units, headers = source_files()
    if not units:
        raise RuntimeError(f"kernelzoo: no C++ sources found in {SOURCE_DIR}")
    version, cflags, lflags = _tf_flags()
    extra, out_dir = _key_extra(version, compiler), cache_dir()
    failed = []
    for variant, arch_flags in arch_candidates():
        compile_flags = list(arch_flags) + cflags
        path = _library_file(out_dir, LIB_PREFIX, compiler, compile_flags, lflags, units, headers, extra)
        marker = path + ".failed"
        if os.path.exists(marker) and not os.path.exists(path) and not force:
            with open(marker, encoding="utf-8", errors="replace") as handle:
                failed.append((variant, tuple(arch_flags), handle.read()))
            continue
        try:
            path = _build_library(units, headers, out_dir, compiler, compile_flags, lflags, key_extra=extra,
                                  force=force, log=lambda m: print(m, file=sys.stderr, flush=True))
        except RuntimeError as error:
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(str(error))
            failed.append((variant, tuple(arch_flags), str(error)))
            print(f"kernelzoo: the build with {' '.join(arch_flags) or 'no -march'} failed; "
                  "retrying with portable flags", file=sys.stderr, flush=True)
            continue
        if os.path.exists(marker):
            os.remove(marker)
        return BuildInfo(path=path, variant=variant, arch_flags=tuple(arch_flags),
                         flags=tuple(BASE_FLAGS) + tuple(compile_flags) + tuple(lflags),
                         cpu_features=cpu_features(compiler, arch_flags), failed=tuple(failed))
    raise RuntimeError("kernelzoo: building the custom op library failed with every flag set tried:\n\n"
                       + "\n\n".join(f"[{variant}: {' '.join(flags) or 'no -march'}]\n{message}"
                                      for variant, flags, message in failed)
                       + "\n\n(`kernelzoo build-ops --force` retries every flag set.)")


def build_info():
    """The `BuildInfo` of the library this process built or found (building it if needed)."""
    if _build_info is None:
        build()
    return _build_info


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
            if _build_info.fell_back:
                tried = ", ".join(" ".join(flags) or "no -march" for _, flags, _ in _build_info.failed)
                warnings.warn(f"kernelzoo: the custom op library was built with {' '.join(_build_info.arch_flags) or 'no -march'} "
                              f"because the build with {tried} failed; the ops work, perhaps slower. "
                              "Run `kernelzoo build-ops` to see the compiler output.", RuntimeWarning, stacklevel=2)
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
            _failure.append(str(error))
            warnings.warn(f"kernelzoo: the custom op library is unavailable, using the composite keras.ops "
                          f"implementation instead. Run `kernelzoo build-ops` to see the full compiler output "
                          f"(KERNELZOO_OPS=composite silences this). Reason: {_short(error)}",
                          RuntimeWarning, stacklevel=2)
    return _available


def failure_reason():
    """Why `available()` returned False in this process (None if it did not)."""
    return _failure[0] if _failure else None


def _short(error, lines=12):
    text = str(error).strip().splitlines()
    return "\n".join(text[:lines] + (["..."] if len(text) > lines else []))


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
    info = build_info()
    for variant, flags, message in info.failed:
        print(f"failed: {variant} ({' '.join(flags) or 'no -march'}):\n{message}\n", file=sys.stderr)
    print(f"library: {path}")
    print(f"target: {info.variant} ({' '.join(info.arch_flags) or 'no -march'})"
          + (" [fallback: see the failures above]" if info.fell_back else ""))
    print(f"flags: {' '.join(info.flags)}")
    print(f"cpu features used: {' '.join(info.cpu_features) or 'none reported'}")
    print("kernels:")
    for name, device in pairs:
        print(f"  {name}  [{device}]")
    if getattr(args, "clean", False):
        for stale in remove_stale_libraries(keep=path):
            print(f"removed {stale}")
    return 0


def remove_stale_libraries(keep):
    """Deletes the cached libraries (and failure notes) in `keep`'s directory other than `keep`'s own.

    Returns their paths.
    """
    folder = os.path.dirname(keep)
    stale = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
             if name.startswith(LIB_PREFIX) and name.endswith((".so", ".so.failed"))
             and os.path.join(folder, name) != keep]
    for path in stale:
        os.remove(path)
    return stale
