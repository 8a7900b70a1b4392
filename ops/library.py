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
work; `build(force=True)` retries everything. A compiler killed or out of memory
or disk (a busy machine, not the flags) is neither remembered nor a reason to
change flags: the build retries once a unit at a time, then fails with
`CompilerResourceError`, which says so. Nor is a failure while the sources
changed or vanished (a checkout replaced mid-build), and a remembered failure
that names one of our own files as missing is stale: it is rebuilt.

GPU kernels: when nvcc is found (`$NVCC`, else `nvcc` on PATH, else
`/usr/local/cuda/bin/nvcc`), the `*.cu.cc` sources are compiled with it (for
`$KERNELZOO_CUDA_ARCH`, default "80;90": SASS for each listed architecture
plus PTX for the last) and linked into the same library with the static CUDA
runtime, so one library carries CPU and GPU kernels and loads on machines
without a GPU or a CUDA install. nvcc's version and flags are part of the key.
When nvcc is absent, or fails (remembered like a failed flag set), the library
is built with the CPU kernels only, under the same key as a build without
nvcc; a failed nvcc warns (RuntimeWarning, stderr with its output), an absent
one warns only where a GPU is visible. `KERNELZOO_GPU_KERNELS=0` skips nvcc.
`BuildInfo.gpu_kernels` / `gpu_status` say which happened.

Public API: `load()`, `available()`, `build(force=False)`, `build_info()`,
`kernels()`, `cuda_arch_list()`, and the `kernelzoo build-ops` CLI hooks
`add_arguments(parser, command)` and `run(args, command)`.
"""
import dataclasses
import functools
import hashlib
import itertools
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

__all__ = ["load", "available", "build", "build_info", "BuildInfo", "CompilerResourceError", "failure_reason",
           "arch_candidates", "kernels", "gpu_kernel_ops",
           "cache_dir", "source_files", "cuda_arch_list", "remove_stale_libraries", "add_arguments", "run"]

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
NVCC_ENV = "NVCC"
CUDA_ARCH_ENV = "KERNELZOO_CUDA_ARCH"
GPU_KERNELS_ENV = "KERNELZOO_GPU_KERNELS"
DEFAULT_CUDA_ARCH = ("80", "90")
# nvcc flags besides the architectures and TensorFlow's flags (part of the cache key).
NVCC_FLAGS = ("-std=c++17", "-x", "cu", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-DGOOGLE_CUDA=1",
              "-DEIGEN_USE_GPU", "-O3", "-Xcompiler", "-Wno-deprecated-declarations")
# What the static CUDA runtime needs besides itself.
CUDART_STATIC_LIBS = ("-lcudart_static", "-ldl", "-lrt", "-lpthread")

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
    gpu_kernels: bool = False    # whether the library holds the CUDA kernels (*.cu.cc)
    gpu_status: str = ""         # how they were built, or why not (one line)
    gpu_failure: str = ""        # nvcc's failed build output, when that is why not

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


def cuda_source_files(source_dir=None):
    """The CUDA translation units (`*.cu.cc`), sorted."""
    source_dir = source_dir or SOURCE_DIR
    names = sorted(os.listdir(source_dir)) if os.path.isdir(source_dir) else []
    return [os.path.join(source_dir, n) for n in names if n.endswith(".cu.cc")]


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


def cuda_arch_list():
    """The CUDA architectures to build for, e.g. ("80", "90"): `$KERNELZOO_CUDA_ARCH` ("80;90") or the default."""
    text = os.environ.get(CUDA_ARCH_ENV, "").strip()
    if not text:
        return DEFAULT_CUDA_ARCH
    archs = tuple(re.sub(r"^(sm_|compute_)", "", a) for a in re.split(r"[;,\s]+", text) if a)
    bad = [a for a in archs if not re.fullmatch(r"\d+[a-z]?", a)]
    if bad or not archs:
        raise ValueError(f"${CUDA_ARCH_ENV}={text!r}: expected compute capabilities like '80;90', got {bad or text!r}")
    return archs


def _gencode_flags(archs):
    """SASS for each architecture, PTX for the last (JIT-compiled by newer GPUs' drivers)."""
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags + ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def _nvcc():
    """(path, None), or (None, why not): `$NVCC`, else `nvcc` on PATH, else /usr/local/cuda/bin/nvcc."""
    override = os.environ.get(NVCC_ENV, "").strip()
    if override:
        path = shutil.which(override)
        return (path, None) if path else (None, f"${NVCC_ENV}={override} is not an executable")
    path = shutil.which("nvcc")
    if path is None and os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        path = "/usr/local/cuda/bin/nvcc"
    return (path, None) if path else (None, "nvcc not found (looked for $NVCC, nvcc on PATH, /usr/local/cuda/bin/nvcc)")


@functools.lru_cache(maxsize=None)
def _nvcc_query(nvcc):
    """(version line, full `--version` output, CUDA library directory or None) of `nvcc`."""
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown", "", None
    lines = version.strip().splitlines()
    line = next((l for l in lines if "release" in l), lines[-1] if lines else "unknown")
    lib_dirs = re.findall(r'"?-L([^"\s]+)"?', dry.stdout + dry.stderr)
    lib_dir = next((d for d in lib_dirs if os.path.exists(os.path.join(d, "libcudart_static.a"))), None)
    return line, version, lib_dir


@dataclasses.dataclass(frozen=True)
class _Cuda:
    """How to compile and link the CUDA sources."""

    nvcc: str
    version: str          # "Cuda compilation tools, release 13.0, V13.0.88"
    archs: tuple
    compile_flags: tuple  # everything but "-c unit -o obj"
    link_flags: tuple
    units: tuple
    key: str              # nvcc's version output and the architectures (the flags are keyed apart)


def _nvcc_host_flags(tf_compile_flags):
    """TF's compile flags as nvcc takes them: -I/-D as they are, the language standard dropped
    (NVCC_FLAGS sets it), anything else passed to the host compiler."""
    out = []
    for flag in tf_compile_flags:
        if flag.startswith(("-I", "-D")):
            out.append(flag)
        elif not flag.lstrip("-").startswith("std="):
            out += ["-Xcompiler", flag]
    return out


def _cuda_toolchain(tf_compile_flags):
    """(`_Cuda`, None) when the GPU kernels can be built here, else (None, why not)."""
    if os.environ.get(GPU_KERNELS_ENV, "").strip() == "0":
        return None, f"skipped: {GPU_KERNELS_ENV}=0"
    units = cuda_source_files()
    if not units:
        return None, f"no CUDA sources (*.cu.cc) in {SOURCE_DIR}"
    nvcc, why = _nvcc()
    if nvcc is None:
        return None, why
    version, full_version, lib_dir = _nvcc_query(nvcc)
    if lib_dir is None:
        return None, f"{nvcc} ({version}): libcudart_static.a not found in the library directories it reports"
    archs = cuda_arch_list()
    flags = tuple(NVCC_FLAGS) + tuple(_gencode_flags(archs)) + tuple(_nvcc_host_flags(tf_compile_flags))
    return _Cuda(nvcc=nvcc, version=version, archs=archs, compile_flags=flags,
                 link_flags=(f"-L{lib_dir}",) + CUDART_STATIC_LIBS, units=tuple(units),
                 key=f"nvcc={full_version}\ncuda_arch={';'.join(archs)}"), None


def _tf_flags():
    import tensorflow as tf

    return (tf.__version__, list(tf.sysconfig.get_compile_flags()),
            list(tf.sysconfig.get_link_flags()))


def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (empty where it does not exist): what the op build, the
    bfloat16 warning and the benchmarks' headers key on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


def _run(cmd, log_path):
    """Starts `cmd` with its stdout and stderr in `log_path` (a file: no pipe to fill while others run)."""
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _output(log_path):
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


class CudaBuildError(RuntimeError):
    """nvcc, or the link of its objects with the CUDA runtime, failed (the CPU-only build may still work)."""


class CompilerResourceError(RuntimeError):
    """The compiler was killed, or ran out of memory or disk: the machine's state, not the sources or flags."""


_CUDA_FAILED = "kernelzoo: building the GPU kernels (nvcc) failed"
_RESOURCE_FAILED = ("kernelzoo: the compiler was killed or ran out of memory or disk space while building the "
                    "custom op library (not a problem of the target flags; free memory or disk and run "
                    "`kernelzoo build-ops`)")
# What g++, clang and nvcc print when the OOM killer or a full disk stops them (they then exit 1, not by a signal).
_RESOURCE_MESSAGES = re.compile(r"Killed signal terminated program|died due to signal|failed due to signal|"
                                r"unable to execute command: Killed|virtual memory exhausted|out of memory|"
                                r"Cannot allocate memory|No space left on device", re.IGNORECASE)


def _fail(cmd, proc_out, returncode, error=RuntimeError):
    tail = "\n".join(proc_out.strip().splitlines()[-40:])
    if returncode < 0 or _RESOURCE_MESSAGES.search(tail):
        error = CompilerResourceError
    what = {CudaBuildError: _CUDA_FAILED, CompilerResourceError: _RESOURCE_FAILED}.get(
        error, "kernelzoo: building the custom op library failed")
    raise error(f"{what} (exit {returncode}).\ncommand: {' '.join(cmd)}\ncompiler output (tail):\n{tail}")


def _compile(compiler, units, out_path, compile_flags, link_flags, work_dir, jobs, cuda=None):
    """Compiles each unit to an object (up to `jobs` at a time, g++'s and nvcc's units alternating, so
    that either compiler's failure shows within seconds), then links.

    A failing nvcc, or link with `cuda`, raises CudaBuildError; any other failure RuntimeError.
    """
    cxx_jobs, nvcc_jobs = [], []
    for unit in units:
        obj = os.path.join(work_dir, os.path.basename(unit) + ".o")
        cxx_jobs.append(([compiler] + list(BASE_FLAGS) + list(compile_flags) + ["-c", unit, "-o", obj], obj,
                         RuntimeError))
    for unit in (cuda.units if cuda else ()):
        obj = os.path.join(work_dir, os.path.basename(unit) + ".o")
        nvcc_jobs.append(([cuda.nvcc] + list(cuda.compile_flags) + ["-c", unit, "-o", obj], obj, CudaBuildError))
    commands = [job for pair in itertools.zip_longest(cxx_jobs, nvcc_jobs) for job in pair if job]
    objects, pending, running = [obj for _, obj, _ in commands], list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            cmd, obj, error = pending.pop(0)
            running.append((cmd, obj + ".log", error, _run(cmd, obj + ".log")))
        done = next((job for job in running if job[3].poll() is not None), None)
        if done is None:
            time.sleep(0.05)
            continue
        running.remove(done)
        cmd, log, error, proc = done
        if proc.returncode != 0:  # the first failure to finish, whichever was started first
            for *_, other in running:
                other.kill()
                other.wait()
            _fail(cmd, _output(log), proc.returncode, error)
    cmd = ([compiler, "-shared", "-fPIC"] + objects + ["-o", out_path] + list(link_flags)
           + list(cuda.link_flags if cuda else ()))
    log = os.path.join(work_dir, "link.log")
    proc = _run(cmd, log)
    if proc.wait() != 0:
        _fail(cmd, _output(log), proc.returncode, CudaBuildError if cuda else RuntimeError)


def _library_file(out_dir, prefix, compiler, compile_flags, link_flags, units, headers, key_extra, cuda=None):
    """The library path: the key hashes the flags, sources and `key_extra` (and `cuda`'s, when given)."""
    if cuda is not None:
        compile_flags = list(compile_flags) + list(cuda.compile_flags)
        link_flags = list(link_flags) + list(cuda.link_flags)
        units = list(units) + list(cuda.units)
        key_extra = f"{key_extra}\n{cuda.key}"
    flags = list(BASE_FLAGS) + list(compile_flags) + list(link_flags)
    key = _build_key(compiler, flags, units, headers, key_extra)
    return os.path.join(out_dir, f"{prefix}{key}.so")


def _build_library(units, headers, out_dir, compiler, compile_flags, link_flags,
                   key_extra="", force=False, prefix=LIB_PREFIX, log=None, jobs=None, cuda=None):
    """Compiles `units` (and `cuda.units` with nvcc) into `<out_dir>/<prefix><key>.so` unless it exists.

    Safe across processes: a file lock serialises builders, the library is
    written to a temporary file and renamed into place. Returns the path.
    """
    from filelock import FileLock

    path = _library_file(out_dir, prefix, compiler, compile_flags, link_flags, units, headers, key_extra, cuda)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(path) and not force:
        return path
    with FileLock(path + ".lock"):
        if os.path.exists(path) and not force:
            return path  # another process built it while we waited
        count = len(units) + (len(cuda.units) if cuda else 0)
        if log:
            log(f"kernelzoo: building custom ops ({count} sources"
                + (f", {len(cuda.units)} with nvcc for sm_{', sm_'.join(cuda.archs)}" if cuda else "") + f") -> {path}")
        start = time.time()
        jobs = jobs or max(1, min(count, os.cpu_count() or 1))
        with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(path)}-", dir=out_dir) as work:
            tmp = os.path.join(work, "lib.so")
            try:
                _compile(compiler, units, tmp, compile_flags, link_flags, work, jobs, cuda)
            except CompilerResourceError as error:
                if jobs == 1:
                    raise
                if log:
                    log(f"{str(error).splitlines()[0]}\nkernelzoo: retrying one source at a time")
                _compile(compiler, units, tmp, compile_flags, link_flags, work, 1, cuda)
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
    """`build`'s work: the `BuildInfo` of the first flag set that compiles.

    Each flag set is tried with the CUDA sources first (when nvcc is here) and,
    if nvcc fails, without them; a failed nvcc is not retried with later flag sets.
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError(_no_compiler_message())
    units, headers = source_files()
    if not units:
        raise RuntimeError(f"kernelzoo: no C++ sources found in {SOURCE_DIR}")
    version, cflags, lflags = _tf_flags()
    extra, out_dir = _key_extra(version, compiler), cache_dir()
    cuda, gpu_status = _cuda_toolchain(cflags)
    gpu_failure = ""
    failed = []
    for variant, arch_flags in arch_candidates():
        compile_flags = list(arch_flags) + cflags
        for toolchain in (cuda, None) if cuda else (None,):
            note = "" if toolchain else f"kernelzoo: GPU kernels not built: {gpu_status}"
            path, error = _attempt(out_dir, compiler, compile_flags, lflags, units, headers, extra, force, toolchain,
                                   note)
            if error is None:
                return BuildInfo(path=path, variant=variant, arch_flags=tuple(arch_flags),
                                 flags=tuple(BASE_FLAGS) + tuple(compile_flags) + tuple(lflags)
                                 + (tuple(toolchain.link_flags) if toolchain else ()),
                                 cpu_features=cpu_features(compiler, arch_flags), failed=tuple(failed),
                                 gpu_kernels=toolchain is not None,
                                 gpu_status=_gpu_built_status(toolchain) if toolchain else f"not built: {gpu_status}",
                                 gpu_failure=gpu_failure)
            if toolchain is not None and error.startswith(_CUDA_FAILED):
                cuda, gpu_failure = None, error
                gpu_status = f"nvcc failed ({toolchain.version}); CPU kernels only"
                print(f"{error}\nkernelzoo: building the CPU kernels only (the ops run the composite on a GPU)",
                      file=sys.stderr, flush=True)
                continue
            failed.append((variant, tuple(arch_flags), error))
            print(f"kernelzoo: the build with {' '.join(arch_flags) or 'no -march'} failed; "
                  "retrying with portable flags", file=sys.stderr, flush=True)
            break
    raise RuntimeError("kernelzoo: building the custom op library failed with every flag set tried:\n\n"
                       + "\n\n".join(f"[{variant}: {' '.join(flags) or 'no -march'}]\n{message}"
                                      for variant, flags, message in failed)
                       + "\n\n(`kernelzoo build-ops --force` retries every flag set.)")


def _names_our_missing_file(compiler_output, units, headers):
    """Whether the compiler said one of our own sources or headers (which exist now) was missing."""
    ours = {os.path.basename(path) for path in units + headers}
    missing = re.findall(r"fatal error: (\S+): No such file or directory", compiler_output)
    return any(os.path.basename(name) in ours for name in missing)


def _attempt(out_dir, compiler, compile_flags, lflags, units, headers, extra, force, cuda, note):
    """(path, None) once the library is built, or (None, the error), remembered in `<path>.failed`.

    `note` is printed (stderr) with the build's start, when it builds. Raised, not remembered: a
    `CompilerResourceError` (the same flags may build once the machine has memory or disk to spare), and a
    failure while the sources changed or vanished."""
    library_file = functools.partial(_library_file, out_dir, LIB_PREFIX, compiler, compile_flags, lflags, units,
                                     headers, extra, cuda)
    path = library_file()
    marker = path + ".failed"
    if os.path.exists(marker) and not os.path.exists(path) and not force:
        with open(marker, encoding="utf-8", errors="replace") as handle:
            remembered = handle.read()
        if not _names_our_missing_file(remembered, units, headers):
            return None, remembered
    try:
        path = _build_library(units, headers, out_dir, compiler, compile_flags, lflags, key_extra=extra,
                              force=force, log=lambda m: print(m, *([note] if note and "building" in m else []),
                                                               sep="\n", file=sys.stderr, flush=True), cuda=cuda)
    except CompilerResourceError:
        raise
    except RuntimeError as error:
        try:
            unchanged = library_file() == path
        except OSError:  # a source or header vanished
            unchanged = False
        if not unchanged:
            raise RuntimeError(f"{error}\n\nkernelzoo: the sources in {os.path.dirname(units[0])} changed or "
                               "vanished during the build (not remembered; run `kernelzoo build-ops` again)") from error
        with open(marker, "w", encoding="utf-8") as handle:
            handle.write(str(error))
        return None, str(error)
    if os.path.exists(marker):
        os.remove(marker)
    return path, None


def _gpu_built_status(cuda):
    archs = ", ".join(f"sm_{a}" for a in cuda.archs)
    return f"built with {cuda.nvcc} ({cuda.version}) for {archs} + PTX compute_{cuda.archs[-1]}"


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
                warnings.warn("kernelzoo: the custom op library was built with "
                              f"{' '.join(_build_info.arch_flags) or 'no -march'} "
                              f"because the build with {tried} failed; the ops work, perhaps slower. "
                              "Run `kernelzoo build-ops` to see the compiler output.", RuntimeWarning, stacklevel=2)
            message = _no_gpu_kernels_warning(_build_info)
            if message:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
    return _module


def _no_gpu_kernels_warning(info):
    """The warning for a library without GPU kernels: always when nvcc failed, when nvcc is
    missing only where a GPU is visible (elsewhere nothing is lost); None when skipped on purpose."""
    if info.gpu_kernels or os.environ.get(GPU_KERNELS_ENV, "").strip() == "0":
        return None
    if not info.gpu_failure:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
    detail = f"\n{_short(info.gpu_failure)}" if info.gpu_failure else ""
    return (f"kernelzoo: the custom op library has no GPU kernels ({info.gpu_status}); on a GPU the ops run "
            f"the composite keras.ops implementation. Run `kernelzoo build-ops` to see why "
            f"({GPU_KERNELS_ENV}=0 skips nvcc and silences this).{detail}")


@functools.lru_cache(maxsize=None)
def gpu_kernel_ops():
    """Names of the ops that have a GPU kernel in the loaded library (frozen set; loads it)."""
    return frozenset(name for name, device in kernels() if device == "GPU")


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
    """(op name, device) pairs of the kernels the library registers (one pair for the kernels of every
    activation type T)."""
    load()
    from tensorflow.python.framework import kernels as tf_kernels

    out = []
    for name in OP_NAMES:
        for k in tf_kernels.get_registered_kernels_for_op(name).kernel:
            if (name, k.device_type) not in out:
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
    if info.gpu_failure:
        print(f"GPU kernels failed to build:\n{info.gpu_failure}\n", file=sys.stderr)
    print(f"GPU kernels: {info.gpu_status}")
    print("kernels:")
    for device in sorted({device for _, device in pairs}):
        print(f"  {device}: {', '.join(name for name, d in pairs if d == device)}")
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
