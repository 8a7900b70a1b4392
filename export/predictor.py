"""OnnxPredictor: run an exported ONNX model with onnxruntime, on the GPU when there is one."""
import json
import os

import numpy as np

from kernelzoo.ops.checks import positive_int

GPU_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
_ORT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(double)": np.float64}


class OnnxPredictor:
    """Probabilities (or raw outputs) of an exported model for batches of images.

    Args:
      path: an .onnx file written by `kernelzoo.export.to_onnx` (any ONNX model with one input works).
      providers: onnxruntime execution providers, e.g. ["CPUExecutionProvider"]; None picks
        CUDAExecutionProvider when onnxruntime-gpu is installed and a GPU answers, else CPU.
      batch_size: images per onnxruntime call inside `predict` (bounds memory). A model whose input has
        a fixed batch size (a foreign model) is fed that many at a time instead, the last call padded
        with zeros and its outputs cut back (right for models that treat images independently).

    Attributes: provider (the one in use), input_name, input_dtype, input_shape, output_names,
    signature (the kernelzoo signature stored in the file, {} for foreign models).
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
        if inputs[0].type not in _ORT_TYPES:
            raise ValueError(f"{path!r}: input type {inputs[0].type} is not supported (uint8 or float)")
        self.input_dtype = np.dtype(_ORT_TYPES[inputs[0].type])
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.signature = json.loads(meta["kernelzoo_signature"]) if "kernelzoo_signature" in meta else {}

    def __repr__(self):
        return (f"OnnxPredictor({self.path!r}, provider={self.provider!r}, input={self.input_name} "
                f"{self.input_dtype.name}{_shape_text(self.input_shape)})")

    def predict(self, images):
        """Probabilities (batch, classes) float32 for uint8 or float `images` of any batch size.

        For models exported with head="raw" this is their `outputs`.
        """
        outputs = self.run(images)
        key = "probabilities" if "probabilities" in outputs else self.output_names[0]
        return outputs[key]

    def run(self, images):
        """All outputs, {name: (batch, ...) array}, for `images` (validated and cast to the input dtype)."""
        images = self.check_images(images)
        fixed = self.input_shape[0] if self.input_shape else None
        step = fixed or self.batch_size
        parts = {name: [] for name in self.output_names}
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            rows = len(chunk)
            if fixed and rows < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - rows,) + chunk.shape[1:], chunk.dtype)])
            values = self.session.run(self.output_names, {self.input_name: chunk})
            for name, value in zip(self.output_names, values):
                parts[name].append(value[:rows])
        if not len(images):
            return {name: np.zeros((0,) + self._output_tail(name), np.float32) for name in self.output_names}
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def check_images(self, images):
        """`images` as a C-contiguous array of the model's input dtype, or ValueError saying what is wrong."""
        if not isinstance(images, np.ndarray):
            if hasattr(images, "numpy"):  # tf / torch tensors
                images = images.numpy()
            else:
                try:
                    images = np.asarray(images)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"images must be an array, got {type(images).__name__}: {error}") from None
        expected = _shape_text(self.input_shape)
        if images.ndim != len(self.input_shape):
            hint = " (a single image? add a batch axis: images[None])" if images.ndim == len(self.input_shape) - 1 \
                else ""
            raise ValueError(f"images must have shape {expected} ({len(self.input_shape)}D), got shape "
                             f"{images.shape}{hint}")
        for axis, (want, got) in enumerate(zip(self.input_shape[1:], images.shape[1:]), start=1):
            if want is not None and want != got:
                raise ValueError(f"images must have shape {expected}, got shape {images.shape} (axis {axis} is "
                                 f"{got}, expected {want})")
        kind = images.dtype.kind
        if images.dtype != np.uint8 and kind != "f":
            raise ValueError(f"images must be uint8 or float, got dtype {images.dtype} "
                             "(convert with images.astype(np.uint8) for 0-255 pixels)")
        if self.input_dtype == np.uint8 and kind == "f":
            finite = np.isfinite(images).all()
            if not finite or images.min(initial=0) < 0 or images.max(initial=0) > 255 \
                    or not np.array_equal(images, np.round(images)):
                raise ValueError("this model takes raw pixel values 0-255 (uint8 input); got float images that "
                                 "are not whole numbers in [0, 255] (already scaled? pass the uint8 pixels)")
        return np.ascontiguousarray(images, dtype=self.input_dtype)

    def _output_tail(self, name):
        output = next(o for o in self.session.get_outputs() if o.name == name)
        return tuple(d if isinstance(d, int) else 0 for d in output.shape[1:])


def _session(ort, path, providers):
    available = ort.get_available_providers()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only (no CUDA fallback chatter)
    if providers is not None:
        providers = [providers] if isinstance(providers, str) else list(providers)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [name for name in names if name not in available]
        if missing:
            raise ValueError(f"onnxruntime providers {missing} are not available here (available: {available})")
        return ort.InferenceSession(path, options, providers=providers)
    if GPU_PROVIDER in available:
        try:
            session = ort.InferenceSession(path, options, providers=[GPU_PROVIDER, CPU_PROVIDER])
            if session.get_providers()[0] == GPU_PROVIDER:
                return session
        except Exception:  # onnxruntime-gpu without a usable GPU / CUDA libraries: use the CPU
            pass
    return ort.InferenceSession(path, options, providers=[CPU_PROVIDER])


def _shape_text(shape):
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
