"""ctypes bindings of the GPU kernels' C entry points (`cc/kernels_capi.cu`), without TensorFlow.

The same source builds two ways:

* `build(out_dir)` with a host C++ compiler: the **host emulation** of the GPU kernels (the
  kernel bodies run block by block on the CPU, see `cc/gpu_shim.h`); the test suite compares
  it with the CPU kernels over the custom-op test grid;
* `build(out_dir, cuda=True)` with nvcc: the real kernels, driven by `ops/gpu_check.py` on a
  machine with a GPU and no TensorFlow (correctness, compute-sanitizer, speed).

`Kernels` wraps the built library. Arrays are numpy arrays (emulation) or CUDA tensors of any
library with `data_ptr()` (torch, on the GPU); outputs come from the `empty(shape, dtype)` factory
given to `Kernels`. The activations (inputs, outputs, the output gradient and the input gradient)
are float32, float16 or bfloat16 (numpy: ml_dtypes' bfloat16), all of one dtype, taken from the
inputs; every other array is float32. This module needs only numpy, so the harness can import it
standalone.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess

import numpy as np

if __package__:
    from .shapes import output_size
else:  # imported by ops/gpu_check.py run as a script
    from shapes import output_size

__all__ = ["SOURCE_DIR", "SIMILARITY_KINDS", "ACTIVATION_DTYPES", "build", "Kernels"]

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cc")
SIMILARITY_KINDS = {"linear": 0, "l1": 1, "l2": 2, "lp": 3}
ACTIVATION_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}  # the C API's DType
HOST_FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-x", "c++")
CUDA_FLAGS = ("-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-lineinfo",
              "-x", "cu")


def _sources():
    names = sorted(n for n in os.listdir(SOURCE_DIR) if n.endswith(".h")) + ["kernels_capi.cu"]
    return [os.path.join(SOURCE_DIR, n) for n in names]


def build(out_dir, cuda=False, arch=("sm_90",), defines=()):
    """Compiles `cc/kernels_capi.cu` into `out_dir` (once per source version); returns the path.

    cuda=False: host emulation with `$CXX` (else g++). cuda=True: GPU kernels with `$NVCC`
    (else nvcc) for the `arch` targets. defines: extra `-D` macros (tests shrink limits with
    them). Raises RuntimeError with the compiler output on failure.
    """
    if cuda:
        compiler = shutil.which(os.environ.get("NVCC", "nvcc"))
        flags = list(CUDA_FLAGS) + [f"-arch={a}" for a in arch]
    else:
        compiler = shutil.which(os.environ.get("CXX", "g++"))
        flags = list(HOST_FLAGS)
    flags += [f"-D{d}" for d in defines]
    if compiler is None:
        raise RuntimeError(f"kernelzoo: no {'nvcc' if cuda else 'C++ compiler'} found to build the kernels' C API")
    digest = hashlib.sha256(" ".join([compiler] + flags).encode())
    for path in _sources():
        with open(path, "rb") as handle:
            digest.update(handle.read())
    out = os.path.join(out_dir, f"libkernelzoo_capi-{'cuda' if cuda else 'host'}-{digest.hexdigest()[:16]}.so")
    if os.path.exists(out):
        return out
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    cmd = [compiler] + flags + [os.path.join(SOURCE_DIR, "kernels_capi.cu"), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kernelzoo: building the kernels' C API failed:\n{' '.join(cmd)}\n"
                           f"{(proc.stderr or proc.stdout)[-4000:]}")
    os.replace(tmp, out)
    return out


def _pair(value):
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


def _ptr(array):
    if array is None:
        return None
    if isinstance(array, np.ndarray):
        if _dtype_name(array) not in ("float64", "uint8", *ACTIVATION_DTYPES) or not array.flags.c_contiguous:
            raise ValueError(f"arrays must be C-contiguous float32, float16 or bfloat16, got {array.dtype}")
        return ctypes.c_void_p(array.ctypes.data)
    return ctypes.c_void_p(array.data_ptr())


def _dtype_name(array):
    """"float32", "float16", "bfloat16", ... of a numpy array, a torch tensor or a harness DeviceArray."""
    return str(array.dtype).rsplit(".", 1)[-1]


def _activation_dtype(inputs, grad=None):
    name = _dtype_name(inputs)
    if name not in ACTIVATION_DTYPES:
        raise ValueError(f"`inputs` must be float32, float16 or bfloat16, got {name}")
    if grad is not None and _dtype_name(grad) != name:
        raise ValueError(f"`grad` must have the dtype of `inputs` ({name}), got {_dtype_name(grad)}")
    return name


class Kernels:
    """The four GPU kernel launches of one built C API library (host emulation or CUDA).

    empty(shape, dtype) allocates outputs and workspaces ("float32", "float16", "bfloat16" or
    "uint8"); launch is (stream handle, max_blocks, max_threads), 0 meaning the default (the
    emulation caps the grid at max_blocks so the kernels' grid-stride loops wrap).
    """

    def __init__(self, path, empty=None, launch=(0, 0, 0)):
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.cuda = bool(self.lib.kz_is_cuda())
        self.empty = empty or (lambda shape, dtype: np.empty(shape, dtype))
        self.launch = (ctypes.c_int64 * 3)(*launch)
        self.lib.kz_last_error.restype = ctypes.c_char_p
        for name in ("kz_similarity_workspace_bytes", "kz_mex_workspace_bytes"):
            getattr(self.lib, name).restype = ctypes.c_int64

    def _call(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise RuntimeError(f"{name}: {self.lib.kz_last_error().decode()}")

    @staticmethod
    def similarity_config(input_shape, template_shape, similarity, strides, padding, ignore_nan, dtype="float32"):
        n, h, w, c = input_shape
        kh, kw, _, templates = template_shape
        sh, sw = _pair(strides)
        return (ctypes.c_int64 * 13)(n, h, w, c, kh, kw, templates, sh, sw, padding == "same",
                                     SIMILARITY_KINDS[similarity], bool(ignore_nan), ACTIVATION_DTYPES[dtype])

    @staticmethod
    def similarity_output_shape(input_shape, template_shape, strides, padding):
        (n, h, w, _), (kh, kw, _, templates) = input_shape, template_shape
        sh, sw = _pair(strides)
        return (n, output_size(h, kh, sh, padding), output_size(w, kw, sw, padding), templates)

    def similarity(self, inputs, templates, weights, p, *, similarity, strides=(1, 1), padding="valid",
                   ignore_nan=False):
        """Forward: (N, H', W', n), of the dtype of `inputs`."""
        dtype = _activation_dtype(inputs)
        cfg = self.similarity_config(inputs.shape, templates.shape, similarity, strides, padding, ignore_nan, dtype)
        out = self.empty(self.similarity_output_shape(inputs.shape, templates.shape, strides, padding), dtype)
        self._call("kz_similarity_forward", cfg, self.launch, _ptr(inputs), _ptr(templates), _ptr(weights),
                   _ptr(p), _ptr(out))
        return out

    def similarity_grad(self, inputs, templates, weights, p, grad, *, similarity, strides=(1, 1),
                        padding="valid", ignore_nan=False, input_grad=True):
        """Backward: (grad_input, grad_templates, grad_weights, grad_p); grad_input of the dtype of `inputs`,
        None with input_grad=False (the kernels then skip it)."""
        dtype = _activation_dtype(inputs, grad)
        cfg = self.similarity_config(inputs.shape, templates.shape, similarity, strides, padding, ignore_nan, dtype)
        work = self.empty((max(int(self.lib.kz_similarity_workspace_bytes(cfg)), 8),), "uint8")
        outs = [self.empty(tuple(inputs.shape), dtype) if input_grad else None] + [
            self.empty(tuple(a.shape), "float32") for a in (templates, weights, p)]
        self._call("kz_similarity_backward", cfg, self.launch, _ptr(inputs), _ptr(templates), _ptr(weights),
                   _ptr(p), _ptr(grad), *[_ptr(o) for o in outs], _ptr(work))
        return tuple(outs)

    @staticmethod
    def mex_config(input_shape, num_instances, pool_size, channel_block, strides, padding, softmax_mode,
                   offsets_shape, use_c, dtype="float32"):
        n, h, w, c = input_shape
        bh, bw = _pair(pool_size)
        sh, sw = _pair(strides)
        rh, rw = (offsets_shape[0], offsets_shape[1]) if offsets_shape is not None else (1, 1)
        return (ctypes.c_int64 * 17)(n, h, w, c, num_instances, bh, bw, channel_block, sh, sw, padding == "same",
                                     bool(softmax_mode), offsets_shape is not None, rh, rw, bool(use_c),
                                     ACTIVATION_DTYPES[dtype])

    def _mex_setup(self, inputs, num_instances, pool_size, channel_block, strides, padding, softmax_mode,
                   offsets, c):
        strides = pool_size if strides is None else strides
        cfg = self.mex_config(inputs.shape, num_instances, pool_size, channel_block, strides, padding,
                              softmax_mode, None if offsets is None else offsets.shape, c is not None,
                              _activation_dtype(inputs))
        n, h, w, channels = inputs.shape
        out_hw = self.similarity_output_shape(inputs.shape, tuple(_pair(pool_size)) + (channels, 1), strides,
                                              padding)[1:3]
        return cfg, (n,) + tuple(out_hw) + (channels // channel_block * num_instances,)

    def mex(self, inputs, xi, offsets=None, c=None, *, num_instances, pool_size=(1, 1), channel_block,
            strides=None, padding="valid", softmax_mode=False):
        """Forward: (N, H', W', (C / channel_block) * num_instances), of the dtype of `inputs`."""
        cfg, shape = self._mex_setup(inputs, num_instances, pool_size, channel_block, strides, padding,
                                     softmax_mode, offsets, c)
        out = self.empty(shape, _activation_dtype(inputs))
        self._call("kz_mex_forward", cfg, self.launch, _ptr(inputs), _ptr(xi), _ptr(offsets), _ptr(c), _ptr(out))
        return out

    def mex_grad(self, inputs, xi, offsets, c, grad, *, num_instances, pool_size=(1, 1), channel_block,
                 strides=None, padding="valid", softmax_mode=False, xi_grad=True):
        """Backward: (grad_input, grad_xi, grad_offsets or None, grad_c or None); grad_input of the dtype of `inputs`,
        grad_xi None with xi_grad=False."""
        cfg, _ = self._mex_setup(inputs, num_instances, pool_size, channel_block, strides, padding, softmax_mode,
                                 offsets, c)
        work = self.empty((max(int(self.lib.kz_mex_workspace_bytes(cfg)), 8),), "uint8")
        gi = self.empty(tuple(inputs.shape), _activation_dtype(inputs, grad))
        gxi = self.empty((num_instances,), "float32") if xi_grad else None
        goff = None if offsets is None else self.empty(tuple(offsets.shape), "float32")
        gc = None if c is None else self.empty((num_instances,), "float32")
        self._call("kz_mex_backward", cfg, self.launch, _ptr(inputs), _ptr(xi), _ptr(offsets), _ptr(c), _ptr(grad),
                   _ptr(gi), _ptr(gxi), _ptr(goff), _ptr(gc), _ptr(work))
        return gi, gxi, goff, gc
