"""OnnxPredictor: run an exported ONNX model with onnxruntime, on the GPU when there is one."""
import json
import os
import warnings

import numpy as np

from kernelzoo.ops.checks import positive_int
from kernelzoo.progress import progress

GPU_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
_INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
_ONNX_NUMPY_NAMES = {"float": "float32", "double": "float64"}  # the ONNX element types numpy names otherwise


class OnnxPredictor:
    """Probabilities (or raw outputs) of an exported model for batches of images.

    Args:
      path: an .onnx file written by `kernelzoo.export.to_onnx` (any ONNX model with one input works).
      providers: onnxruntime execution providers, e.g. ["CPUExecutionProvider"] (ValueError when one of them
        cannot run here); None picks CUDAExecutionProvider when onnxruntime-gpu is installed and a GPU
        answers, else CPU (with a warning when onnxruntime-gpu cannot use the GPU).
      batch_size: images per onnxruntime call inside `predict` (bounds memory). A model whose input has
        a fixed batch size (a foreign model) is fed that many at a time instead, the last call padded
        with zeros and its outputs cut back (right for models that treat images independently).

    Attributes: provider (the one in use), input_name, input_dtype, input_shape, output_names,
    signature (the kernelzoo signature stored in the file, {} for foreign models).
    Files onnxruntime cannot load or run raise ValueError naming the file.
    """

    def __init__(self, path, providers=None, batch_size=64):
        import onnxruntime as ort

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX file at {path!r}")
        self.path, self.batch_size = path, positive_int(batch_size, "batch_size")
        self.session = _session(ort, path, providers)
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path!r} has {len(inputs)} inputs; OnnxPredictor runs single-input models")
        self.input_name = inputs[0].name
        self.input_dtype = _numpy_dtype(inputs[0].type)
        if self.input_dtype not in _INPUT_DTYPES:
            raise ValueError(f"{path!r}: input type {inputs[0].type} is not supported (uint8 or float)")
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.signature = json.loads(meta["kernelzoo_signature"]) if "kernelzoo_signature" in meta else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"{path!r}: unreadable kernelzoo_signature metadata ({error})") from None

    def __repr__(self):
        return (f"OnnxPredictor({self.path!r}, provider={self.provider!r}, input={self.input_name} "
                f"{self.input_dtype.name}{shape_text(self.input_shape)})")

    def predict(self, images):
        """Probabilities (batch, classes) float32 for uint8 or float `images` of any batch size.

        For models exported with head="raw" this is their `outputs`.
        """
        outputs = self.run(images)
        key = "probabilities" if "probabilities" in outputs else self.output_names[0]
        return outputs[key]

    def run(self, images, verbose=False):
        """All outputs, {name: (batch, ...) array}, for `images` (validated and cast to the input dtype), in
        batches (a progress bar when `verbose`)."""
        images = self.check_images(images)
        fixed = self.input_shape[0] if self.input_shape else None
        step = fixed or self.batch_size
        parts = {name: [] for name in self.output_names}
        for start in progress(range(0, len(images), step), label="onnxruntime", verbose=verbose, unit="batch"):
            chunk = images[start:start + step]
            rows = len(chunk)
            if fixed and rows < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - rows,) + chunk.shape[1:], chunk.dtype)])
            for name, value in zip(self.output_names, self._run_batch(chunk)):
                parts[name].append(value[:rows])
        if not len(images):
            return {o.name: np.zeros((0,) + tuple(d if isinstance(d, int) else 0 for d in o.shape[1:]),
                                     _numpy_dtype(o.type)) for o in self.session.get_outputs()}
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def check_images(self, images):
        """`images` as a C-contiguous array of the model's input dtype, or ValueError saying what is wrong."""
        return model_input(images, self.input_dtype, self.input_shape)

    def _run_batch(self, chunk):
        try:
            return self.session.run(self.output_names, {self.input_name: chunk})
        except _ort_errors() as error:
            raise ValueError(f"onnxruntime failed to run {self.path!r}: {type(error).__name__}: {error}") from error


def model_input(images, dtype, shape):
    """`images` as a C-contiguous array of `dtype` (uint8 or float) for a model input of `shape` (None: any
    size), or ValueError saying what is wrong: what OnnxPredictor and `verify_artifact` feed a model."""
    images = _as_array(images)
    _check_shape(images, shape)
    if images.dtype.kind not in "uif":
        raise ValueError(f"images must be numbers (float, int or uint8), got dtype {images.dtype}")
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return _as_pixels(images)
    return _as_float(images, dtype)


def _as_array(images):
    if isinstance(images, np.ndarray):
        return images
    if hasattr(images, "numpy"):  # tf / torch tensors
        return images.numpy()
    try:
        return np.asarray(images)
    except (TypeError, ValueError) as error:
        raise ValueError(f"images must be an array, got {type(images).__name__}: {error}") from None


def _check_shape(images, shape):
    expected = shape_text(shape)
    if images.ndim != len(shape):
        hint = " (a single image? add a batch axis: images[None])" if images.ndim == len(shape) - 1 else ""
        raise ValueError(f"images must have shape {expected} ({len(shape)}D), got shape {images.shape}{hint}")
    for axis, (want, got) in enumerate(zip(shape[1:], images.shape[1:]), start=1):
        if want is not None and want != got:
            raise ValueError(f"images must have shape {expected}, got shape {images.shape} (axis {axis} is "
                             f"{got}, expected {want})")


def _as_pixels(images):
    """Integer images (uint8, or int64 from np.asarray of a list) or whole-number floats in [0, 255], as uint8."""
    whole = images.dtype.kind != "f" or (np.isfinite(images).all() and np.array_equal(images, np.round(images)))
    if not whole or images.min(initial=0) < 0 or images.max(initial=0) > 255:
        raise ValueError(f"this model takes raw pixel values 0-255 (uint8 input); got {images.dtype} images that "
                         "are not whole numbers in [0, 255] (already scaled? pass the uint8 pixels)")
    return np.ascontiguousarray(images, dtype=np.uint8)


def _as_float(images, dtype):
    """Numbers (ints included) as `dtype`; values a narrower float cannot hold are an error, not inf."""
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(images, dtype=dtype)
    if images.dtype.kind == "f" and images.dtype.itemsize > dtype.itemsize \
            and not np.array_equal(np.isfinite(images), np.isfinite(cast)):
        raise ValueError(f"images hold values beyond the {dtype.name} range of the model input "
                         f"(|x| > {np.finfo(dtype).max:.3g}): they would become inf")
    return cast


def _numpy_dtype(ort_type):
    """The numpy dtype of an onnxruntime tensor type such as 'tensor(float)'; object where numpy has none (ONNX
    strings, which onnxruntime returns as object arrays)."""
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    try:
        return np.dtype(_ONNX_NUMPY_NAMES.get(name, name))
    except TypeError:
        return np.dtype(object)


def shape_text(shape):
    """A shape as text, the dynamic batch axis as N: (N, 28, 28, 1)."""
    return "(" + ", ".join("N" if d is None and i == 0 else str(d) for i, d in enumerate(shape)) + ")"


def _session(ort, path, providers):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only (no CUDA fallback chatter)
    if providers is None:
        return _auto_session(ort, path, options)
    providers = [providers] if isinstance(providers, str) else list(providers)
    if not providers:
        raise ValueError("`providers` is empty: name at least one, or pass None to choose automatically")
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    available = ort.get_available_providers()
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(f"onnxruntime providers {missing} are not available here (available: {available})")
    session = _new_session(ort, path, options, providers)
    in_use = session.get_providers()
    unused = [name for name in names if name not in in_use]
    if unused:
        raise ValueError(f"onnxruntime could not start providers {unused} for {path!r} (in use: {in_use}; "
                         "for CUDA: is a GPU visible, with the CUDA and cuDNN libraries onnxruntime-gpu needs?)")
    return session


def _auto_session(ort, path, options):
    """A CUDA session where onnxruntime-gpu can use the GPU, else a CPU one (with a warning when it cannot)."""
    if GPU_PROVIDER not in ort.get_available_providers():
        return _new_session(ort, path, options, [CPU_PROVIDER])
    try:
        session = ort.InferenceSession(path, options, providers=[GPU_PROVIDER, CPU_PROVIDER])
        if session.get_providers()[0] == GPU_PROVIDER:
            return session
    except Exception:  # noqa: BLE001 - onnxruntime-gpu without a usable GPU / CUDA libraries: use the CPU
        pass
    session = _new_session(ort, path, options, [CPU_PROVIDER])
    warnings.warn(f"onnxruntime-gpu is installed but could not use the GPU for {path!r}: running on the CPU",
                  RuntimeWarning, stacklevel=3)
    return session


def _new_session(ort, path, options, providers):
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except _ort_errors() as error:
        raise ValueError(f"onnxruntime cannot load {path!r}: {type(error).__name__}: {error}") from error


def _ort_errors():
    """The exceptions onnxruntime raises for a file it cannot load or run (none is a ValueError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (RuntimeError,) + tuple(value for value in vars(state).values()
                                   if isinstance(value, type) and issubclass(value, Exception))
