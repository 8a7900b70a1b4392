"""The GPU kernels on a real GPU, without TensorFlow: correctness, compute-sanitizer, speed.

Machines with a GPU may lack TensorFlow, so the check runs the kernels' C API
(`cc/kernels_capi.cu` built with nvcc, through `capi.py`) against reference results of
the CPU kernels computed beforehand where TensorFlow is:

    python -m kernelzoo.ops.gpu_check reference REF.npz          # here: the CPU kernels' results
    python ops/gpu_check.py all --reference REF.npz --out DIR    # on the GPU machine: everything below

`check` compares the GPU kernels with the reference over the custom-op test grid (forward
and gradients, odd sizes, padding, strides, NaN, xi from -inf to inf, offsets by region,
long sets, float16 and bfloat16 activations); `sanitize` runs a quick part of it under `compute-sanitizer` (memcheck and
racecheck); `bench` times the kernels against cuDNN (convolution, max-pool, PyTorch) on
the issue's shapes, float32 with TF32 off, in GPU time (calls enqueued back to back: host-side
launch costs, ours through ctypes and PyTorch's, are not counted); `all` runs the three and writes
`gpu_check.json` and `gpu_check.md` (the table for docs/benchmarks.md) into --out.
"""
import argparse
import ctypes
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

if __package__:
    from . import capi
    from .shapes import output_size
else:  # run as a script on a machine without kernelzoo's dependencies
    import capi
    from shapes import output_size

TOLERANCE = {"output": 1e-5, "grad": 1e-4, "grad_xi": 2e-4}
# float16 / bfloat16 activations: outputs and input gradients are rounded to the type once, so two
# float32 accumulations may round to neighbouring values (one unit in the last place, relative 2^-10 /
# 2^-7 near the largest entry); parameter gradients stay float32.
ROUNDED_TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2}
ROUNDED = ("output", "grad_inputs")
SPIN_CYCLES = 50_000_000  # ~25 ms at 2 GHz: longer than the host needs to enqueue a timed batch
XI_EDGE = [0.0, 1e-5, -1e-5, 1.0, -2.5, 1e6, -1e6, np.inf, -np.inf]


# ------------------------------------------------------------------ cases --
def _similarity_case(rng, name, x_shape, z_shape, kind, strides, padding, ignore_nan):
    x = rng.normal(size=x_shape).astype("float32")
    if ignore_nan:
        x.reshape(-1)[rng.choice(x.size, 3, replace=False)] = np.nan
    z = rng.normal(size=z_shape).astype("float32")
    n = z_shape[-1]
    p = rng.uniform(0.6, 2.5, size=n) if kind == "lp" else np.full(n, 1.0 if kind == "l1" else 2.0)
    return dict(name=name, op="similarity", arrays=dict(inputs=x, templates=z,
                weights=rng.uniform(0.2, 1.5, size=z_shape).astype("float32"), p=p.astype("float32")),
                kwargs=dict(similarity=kind, strides=strides, padding=padding, ignore_nan=ignore_nan))


def _mex_case(rng, name, x_shape, xi, pool, strides, padding, channel_block, regions, use_c, softmax):
    k = len(xi)
    arrays = dict(inputs=rng.normal(size=x_shape).astype("float32"), xi=np.asarray(xi, "float32"))
    if regions is not None:
        arrays["offsets"] = rng.normal(size=tuple(regions) + (k,) + tuple(pool) + (channel_block,)).astype("float32")
    if use_c:
        arrays["c"] = rng.normal(size=k).astype("float32")
    return dict(name=name, op="mex", arrays=arrays,
                kwargs=dict(num_instances=k, pool_size=pool, channel_block=channel_block, strides=strides,
                            padding=padding, softmax_mode=softmax))


def cases():
    """The check's grid (deterministic): a list of dicts with name, op, arrays, kwargs."""
    rng = np.random.default_rng(2026)
    out = []
    for kind, strides, padding, nan in itertools.product(["linear", "l1", "l2", "lp"], [(1, 1), (2, 3)],
                                                         ["valid", "same"], [False, True]):
        out.append(_similarity_case(rng, f"sim-{kind}-s{strides[0]}{strides[1]}-{padding}-nan{int(nan)}",
                                    (2, 11, 10, 3), (3, 2, 3, 70), kind, strides, padding, nan))
    for kind in ["l2", "l1", "lp"]:  # several tiles of both kinds, odd everything
        out.append(_similarity_case(rng, f"sim-{kind}-large", (3, 17, 13, 5), (5, 4, 5, 130), kind, (1, 2), "same",
                                    False))
    for pool, strides, padding, block, offsets, use_c, softmax in itertools.product(
            [(2, 2), (3, 2)], [(2, 2), (1, 2)], ["valid", "same"], [1, 2],
            ["none", "shared", "regions", "unshared"], [False, True], [False, True]):
        oh, ow = output_size(7, pool[0], strides[0], padding), output_size(6, pool[1], strides[1], padding)
        regions = {"none": None, "shared": (1, 1), "regions": (2, 2), "unshared": (oh, ow)}[offsets]
        xi = [0.7, -2.5, 4.0 if softmax else 1e-5]
        out.append(_mex_case(rng, f"mex-p{pool[0]}{pool[1]}-s{strides[0]}{strides[1]}-{padding}-b{block}-{offsets}"
                             f"-c{int(use_c)}-sm{int(softmax)}", (2, 7, 6, 6), xi, pool, strides, padding, block,
                             regions, use_c, softmax))
    for padding, use_c, softmax in itertools.product(["valid", "same"], [False, True], [False, True]):
        case = _mex_case(rng, f"mex-xi-edge-{padding}-c{int(use_c)}-sm{int(softmax)}", (2, 5, 5, 4), XI_EDGE,
                         (2, 2), (2, 2), padding, 2, (1, 1), use_c, softmax)
        case["arrays"]["inputs"][0, 0, 0, :] = case["arrays"]["inputs"][0, 0, 1, :]  # ties
        out.append(case)
    for softmax in [False, True]:  # the SimNet's class-wise MEX
        xi = [0.7, -2.5, 40.0, 0.05, 1e-6] + ([] if softmax else [0.0])
        out.append(_mex_case(rng, f"mex-classwise-sm{int(softmax)}", (2, 5, 4, 160), xi, (1, 1), (1, 1), "valid", 80,
                             (2, 2), True, softmax))
    for dtype in ["float16", "bfloat16"]:  # 16-bit activations (inputs rounded to the type beforehand)
        for kind in ["linear", "l1", "l2", "lp"]:
            out.append(dict(_similarity_case(rng, f"sim-{kind}-{dtype}", (2, 9, 8, 3), (3, 3, 3, 70), kind, (1, 2),
                                             "same", kind == "l2"), dtype=dtype))
        out.append(dict(_mex_case(rng, f"mex-pool-{dtype}", (2, 7, 6, 6), [0.7, -2.5, 1e-5], (2, 2), (2, 2), "same", 2,
                                  (2, 2), True, False), dtype=dtype))
        out.append(dict(_mex_case(rng, f"mex-classwise-{dtype}", (2, 5, 4, 160), [0.7, -2.5, 40.0], (1, 1), (1, 1),
                                  "valid", 80, (2, 2), True, True), dtype=dtype))
    for case in out:
        dtype = case.setdefault("dtype", "float32")
        case["arrays"]["inputs"] = _rounded(case["arrays"]["inputs"], dtype)
    return out


def _activation_type(dtype):
    """The numpy type of an activation dtype name (ml_dtypes for bfloat16, which numpy lacks)."""
    if dtype == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def _rounded(values, dtype):
    """float32 values exactly representable in `dtype` (what a 16-bit input holds)."""
    return values.astype(_activation_type(dtype)).astype("float32")


def quick_cases():
    """A part of the grid small enough for compute-sanitizer: every kind and mode at least once."""
    all_cases = cases()
    return [c for i, c in enumerate(all_cases) if i % 7 == 0 or "large" in c["name"] or "edge" in c["name"]
            or "classwise" in c["name"] or c["dtype"] != "float32"]


def _grad_seed(index):
    return np.random.default_rng(10_000 + index)


# -------------------------------------------------------------- reference --
def make_reference(path):
    """Runs the CPU kernels (TensorFlow custom ops) over `cases()`; saves inputs, grad seeds and results."""
    import tensorflow as tf

    from kernelzoo.ops import custom

    saved = {}
    for index, case in enumerate(cases()):
        arrays, kw, dtype = case["arrays"], case["kwargs"], case["dtype"]
        names = list(arrays)
        tensors = [tf.constant(arrays[n].astype(_activation_type(dtype)) if n == "inputs" else arrays[n])
                   for n in names]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            t = dict(zip(names, tensors))
            if case["op"] == "similarity":
                y = custom.similarity(t["inputs"], t["templates"], t["weights"], t["p"], **kw)
            else:
                y = custom.mex(t["inputs"], t["xi"], t.get("offsets"), t.get("c"), gemm=False, **kw)
        g = _rounded(_grad_seed(index).normal(size=y.shape).astype("float32"), dtype)
        grads = tape.gradient(y, tensors, output_gradients=tf.constant(g.astype(_activation_type(dtype))))
        prefix = case["name"] + "/"
        saved[prefix + "output"] = y.numpy().astype("float32")  # npz holds float32; the values are the type's
        saved[prefix + "grad_output"] = g
        for name, grad in zip(names, grads):
            saved[prefix + "grad_" + name] = grad.numpy().astype("float32")
    np.savez_compressed(path, **saved)
    return path


# ------------------------------------------------------------------ check --
# relative_error's floor, as a fraction of the largest finite |reference| entry: entries at least this
# large are checked relative to themselves; smaller ones (sums that cancel, where float rounding is set by
# the terms, not the result) against this floor.
RELATIVE_FLOOR = 1e-2


def relative_error(actual, expected, floor=RELATIVE_FLOOR):
    """max over finite entries of |a - b| / max(|b|, floor * max |b|), entry by entry (a small entry badly
    wrong fails, as it would not against max |b| alone); inf when NaN / inf patterns differ."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape or not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return float("inf")
    finite = np.isfinite(expected)
    if not np.array_equal(actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)]):
        return float("inf")
    if not finite.any():
        return 0.0
    ref = np.abs(expected[finite])
    scale = np.maximum(ref, max(floor * ref.max(), 1e-30))
    return float(np.max(np.abs(actual[finite] - expected[finite]) / scale))


def _xi_error(actual, expected):
    """grad xi: per entry relative, with an absolute floor of 1e-6 x the largest finite entry (as the tests)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return float("inf")
    finite = np.isfinite(expected)
    scale = np.max(np.abs(expected[finite])) if finite.any() else 1.0
    err = np.abs(actual[finite] - expected[finite]) / (np.abs(expected[finite]) + 1e-6 * scale / TOLERANCE["grad_xi"])
    return float(err.max()) if err.size else 0.0


class DeviceArray:
    """A float32/uint8 buffer in GPU memory from the C API (no framework allocator)."""

    def __init__(self, lib, shape, dtype="float32"):
        self.lib, self.shape, self.dtype = lib, tuple(int(s) for s in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ptr = lib.kz_device_alloc(ctypes.c_int64(self.nbytes))
        if not self.ptr:
            raise MemoryError(f"cudaMalloc of {self.nbytes} bytes failed")

    @classmethod
    def from_host(cls, lib, array):
        array = np.ascontiguousarray(array)
        out = cls(lib, array.shape, array.dtype)
        _checked(lib, lib.kz_copy(ctypes.c_void_p(out.ptr), array.ctypes.data_as(ctypes.c_void_p),
                                  ctypes.c_int64(out.nbytes), 1))
        return out

    def to_host(self):
        out = np.empty(self.shape, self.dtype)
        _checked(self.lib, self.lib.kz_copy(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(self.ptr),
                                            ctypes.c_int64(self.nbytes), 0))
        return out

    def data_ptr(self):
        return self.ptr

    def __del__(self):
        if getattr(self, "ptr", None):
            self.lib.kz_device_free(ctypes.c_void_p(self.ptr))
            self.ptr = None


def _checked(lib, status):
    if status != 0:
        raise RuntimeError(lib.kz_last_error().decode())


def device_kernels(build_dir):
    """`capi.Kernels` over the nvcc build, allocating with the C API."""
    path = capi.build(build_dir, cuda=True, arch=("sm_90",))
    kernels = capi.Kernels(path)
    lib = kernels.lib
    lib.kz_device_alloc.restype = ctypes.c_void_p
    lib.kz_device_alloc.argtypes = [ctypes.c_int64]
    kernels.empty = lambda shape, dtype: DeviceArray(lib, shape, dtype)
    return kernels


def run_case(kernels, case):
    """Forward and backward of one case: {"output": ..., "grad_<name>": ...} as numpy.

    On the GPU build (arrays copied to the device) or the host emulation (numpy as is).
    """
    lib = kernels.lib
    upload = (lambda a: DeviceArray.from_host(lib, a)) if kernels.cuda else np.ascontiguousarray
    download = (lambda a: np.asarray(a.to_host() if kernels.cuda else a).astype("float32"))
    activation = _activation_type(case["dtype"])
    dev = {k: upload(v.astype(activation) if k == "inputs" else v) for k, v in case["arrays"].items()}
    grad = upload(case["grad_output"].astype(activation))
    kw = case["kwargs"]
    if case["op"] == "similarity":
        args = (dev["inputs"], dev["templates"], dev["weights"], dev["p"])
        out = kernels.similarity(*args, **kw)
        grads = dict(zip(["inputs", "templates", "weights", "p"], kernels.similarity_grad(*args, grad, **kw)))
    else:
        args = (dev["inputs"], dev["xi"], dev.get("offsets"), dev.get("c"))
        out = kernels.mex(*args, **kw)
        grads = dict(zip(["inputs", "xi", "offsets", "c"], kernels.mex_grad(*args, grad, **kw)))
    if kernels.cuda:
        _checked(lib, lib.kz_synchronize())
    result = {"output": download(out)}
    result.update({f"grad_{k}": download(v) for k, v in grads.items() if v is not None})
    return result


def check(kernels, reference, quick=False):
    """Compares every case with the reference; returns rows (case, quantity, error, tolerance, ok)."""
    if not reference or not os.path.isfile(reference):
        raise FileNotFoundError(f"reference file {reference!r} not found: make it where the CPU kernels build, with "
                                "`python -m kernelzoo.ops.gpu_check reference REF.npz`, and pass --reference REF.npz")
    ref = np.load(reference)
    rows = []
    names = {c["name"] for c in (quick_cases() if quick else cases())}
    for case in cases():
        if case["name"] not in names:
            continue
        case["grad_output"] = ref[case["name"] + "/grad_output"]
        got = run_case(kernels, case)
        for key, value in got.items():
            want = ref[f"{case['name']}/{key}"]
            rounded = ROUNDED_TOLERANCE.get(case["dtype"]) if key in ROUNDED else None
            if case["op"] == "mex" and key == "output":  # per instance: each has its own scale
                k = case["kwargs"]["num_instances"]
                err = max(relative_error(value.reshape(-1, k)[:, i], want.reshape(-1, k)[:, i]) for i in range(k))
                tol = rounded or TOLERANCE["output"]
            elif rounded:
                err, tol = relative_error(value, want), rounded
            elif key == "grad_xi":
                err, tol = _xi_error(value, want), TOLERANCE["grad_xi"]
            elif key == "grad_p" and case["kwargs"].get("similarity") != "lp":
                err, tol = float(np.abs(value).max()), 0.0
            else:
                err, tol = relative_error(value, want), TOLERANCE["output" if key == "output" else "grad"]
            rows.append((case["name"], key, err, tol, err <= tol))
    return rows


# -------------------------------------------------------------- sanitizer --
def sanitize(reference, build_dir, timeout=240):
    """compute-sanitizer memcheck and racecheck over `quick_cases()`: {tool: (ok, summary)}."""
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(tool):
        return {"memcheck": (None, "compute-sanitizer not found"), "racecheck": (None, "compute-sanitizer not found")}
    out = {}
    for name in ("memcheck", "racecheck"):
        cmd = [tool, "--tool", name, "--error-exitcode", "9", sys.executable, os.path.abspath(__file__), "check",
               "--reference", reference, "--build-dir", build_dir, "--quick"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            text = (proc.stdout + proc.stderr).strip().splitlines()
            summary = next((line for line in reversed(text) if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line),
                           text[-1] if text else "")
            out[name] = (proc.returncode == 0, f"exit {proc.returncode}: {summary}")
        except subprocess.TimeoutExpired:
            out[name] = (None, f"timed out after {timeout} s")
    return out


# ------------------------------------------------------------------ bench --
def _time_ms(fn, repeats=20, warmup=3):
    """GPU time of one call of fn: `repeats` calls enqueued back to back behind a spinning kernel, timed by
    CUDA events. The GPU is busy while the host enqueues, so host-side costs (Python, ctypes, argument
    checks) are not counted, for our kernels and the baselines alike: each call separately timed would add
    them, tens of microseconds against kernels of a tenth of a millisecond."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(SPIN_CYCLES)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def bench(build_dir):
    """Speed of the GPU kernels vs cuDNN (PyTorch, float32, TF32 off) on the issue's shapes: table rows."""
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    path = capi.build(build_dir, cuda=True, arch=("sm_90",))
    kernels = capi.Kernels(path, empty=lambda shape, dtype: torch.empty(shape, dtype=getattr(torch, dtype),
                                                                         device="cuda"))
    rows = []
    for label, (n, h, w, c, k, templates, padding) in {
            "CIFAR SimNet: 64x32x32x3, 6x6, 400 templates": (64, 32, 32, 3, 6, 400, "valid"),
            "deeper: 64x16x16x64, 3x3, 128 templates": (64, 16, 16, 64, 3, 128, "same")}.items():
        x = torch.randn(n, h, w, c, device="cuda")
        z = torch.randn(k, k, c, templates, device="cuda")
        u = torch.rand(k, k, c, templates, device="cuda") + 0.5
        x_nchw = x.permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        weight = z.permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        conv = lambda: F.conv2d(x_nchw, weight, padding=padding)  # noqa: E731
        conv_ms = _time_ms(conv)
        y = conv()
        gy = torch.randn_like(y)
        conv_fb_ms = _time_ms(lambda: torch.autograd.grad(conv(), (x_nchw, weight), gy))
        for kind in ["linear", "l2", "l1", "lp"]:
            p = torch.full((templates,), 1.5 if kind == "lp" else (1.0 if kind == "l1" else 2.0), device="cuda")
            kw = dict(similarity=kind, padding=padding)
            out = kernels.similarity(x, z, u, p, **kw)
            g = torch.randn_like(out)
            fwd = _time_ms(lambda: kernels.similarity(x, z, u, p, **kw))
            fb = _time_ms(lambda: (kernels.similarity(x, z, u, p, **kw), kernels.similarity_grad(x, z, u, p, g, **kw)))
            rows.append(dict(op=f"similarity {kind}", shape=label, ours_ms=fwd, baseline="cuDNN conv2d",
                             baseline_ms=conv_ms, ratio=fwd / conv_ms, ours_fb_ms=fb, baseline_fb_ms=conv_fb_ms,
                             ratio_fb=fb / conv_fb_ms))
    profile = _kernel_profile(kernels)
    x = torch.randn(64, 28, 28, 400, device="cuda")
    x_cl = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels_last)
    one = torch.ones(1, device="cuda")
    pool_ms = _time_ms(lambda: F.max_pool2d(x_cl, 2))
    mex_ms = _time_ms(lambda: kernels.mex(x, one, num_instances=1, pool_size=(2, 2), channel_block=1))
    rows.append(dict(op="MEX 2x2/2, xi=1", shape="64x28x28x400", ours_ms=mex_ms, baseline="torch max_pool2d",
                     baseline_ms=pool_ms, ratio=mex_ms / pool_ms))
    inf = torch.full((1,), float("inf"), device="cuda")
    mex_inf_ms = _time_ms(lambda: kernels.mex(x, inf, num_instances=1, pool_size=(2, 2), channel_block=1))
    rows.append(dict(op="MEX 2x2/2, xi=+inf (max)", shape="64x28x28x400", ours_ms=mex_inf_ms,
                     baseline="max_pool2d", baseline_ms=pool_ms, ratio=mex_inf_ms / pool_ms))
    xs = torch.randn(64, 27, 27, 400, device="cuda")
    xi = torch.ones(10, device="cuda")
    off = torch.randn(1, 1, 10, 1, 1, 400, device="cuda")
    cw = torch.randn(10, device="cuda")
    cls_ms = _time_ms(lambda: kernels.mex(xs, xi, off, cw, num_instances=10, channel_block=400))
    rows.append(dict(op="class-wise MEX (10 classes, 400 templates, offsets, c)", shape="64x27x27x400",
                     ours_ms=cls_ms, baseline="none", baseline_ms=float("nan"), ratio=float("nan")))
    return rows, dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version(), kernel_profile=profile)


def _kernel_profile(kernels):
    """Per-kernel GPU time of one l2 similarity forward + backward on the CIFAR shape (torch.profiler)."""
    import torch
    x = torch.randn(64, 32, 32, 3, device="cuda")
    z = torch.randn(6, 6, 3, 400, device="cuda")
    u = torch.rand(6, 6, 3, 400, device="cuda") + 0.5
    p = torch.full((400,), 2.0, device="cuda")
    g = torch.randn(64, 27, 27, 400, device="cuda")
    kernels.similarity_grad(x, z, u, p, g, similarity="l2")
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        kernels.similarity(x, z, u, p, similarity="l2")
        kernels.similarity_grad(x, z, u, p, g, similarity="l2")
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70)


def markdown(bench_rows, env, check_rows, sanitizer):
    lines = [f"GPU: {env['gpu']}, CUDA {env['cuda']}, cuDNN {env['cudnn']} (PyTorch {env['torch']}); float32, "
             "TF32 off; median of 20 timed calls after 3 warm-ups (CUDA events).", "",
             "| op | shape | ours (ms) | baseline | baseline (ms) | ratio | fwd+bwd ours / baseline (ms) | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in bench_rows:
        fb = (f"{r['ours_fb_ms']:.3f} / {r['baseline_fb_ms']:.3f} | {r['ratio_fb']:.2f}x"
              if "ours_fb_ms" in r else "- | -")
        lines.append(f"| {r['op']} | {r['shape']} | {r['ours_ms']:.3f} | {r['baseline']} | {r['baseline_ms']:.3f} | "
                     f"{r['ratio']:.2f}x | {fb} |")
    failed = [r for r in check_rows if not r[4]]
    lines += ["", f"Correctness: {len(check_rows)} comparisons with the CPU kernels, {len(failed)} failed."]
    for tool, (ok, summary) in sanitizer.items():
        lines.append(f"compute-sanitizer {tool}: {'clean' if ok else ('FAILED' if ok is False else 'not run')} "
                     f"({summary})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["reference", "check", "bench", "all"])
    parser.add_argument("path", nargs="?", help="reference: the .npz to write")
    parser.add_argument("--reference", help="the reference .npz (check, all)")
    parser.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "kernelzoo-capi"))
    parser.add_argument("--quick", action="store_true", help="check: the small part used under the sanitizer")
    parser.add_argument("--out", help="all: folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    if args.command == "reference":
        print(make_reference(args.path or "gpu_check_reference.npz"))
        return 0
    if args.command == "bench":
        rows, env = bench(args.build_dir)
        print(json.dumps(dict(env=env, rows=rows), indent=1))
        return 0
    start = time.time()
    rows = check(device_kernels(args.build_dir), args.reference, quick=args.quick)
    failed = [r for r in rows if not r[4]]
    for r in failed:
        print(f"MISMATCH {r[0]} {r[1]}: error {r[2]:.3g} > {r[3]:.0e}")
    print(f"check: {len(rows)} comparisons, {len(failed)} failed, worst "
          f"{max(rows, key=lambda r: r[2] / r[3] if r[3] else r[2])[:3]} ({time.time() - start:.1f} s)")
    if args.command == "check":
        return 1 if failed else 0
    sanitizer = sanitize(args.reference, args.build_dir)
    print(json.dumps(sanitizer))
    bench_rows, env = bench(args.build_dir)
    table = markdown(bench_rows, env, rows, sanitizer)
    print(env.pop("kernel_profile"))
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as handle:
            json.dump(dict(env=env, bench=bench_rows, check=rows, sanitizer=sanitizer), handle, indent=1)
        with open(os.path.join(args.out, "gpu_check.md"), "w") as handle:
            handle.write(table + "\n")
    return 1 if failed or any(ok is False for ok, _ in sanitizer.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
