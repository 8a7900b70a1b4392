"""kernelzoo.export: SavedModel and ONNX export.

`to_saved_model(model, path)` and `to_onnx(model, path, opset=17)` write a model with its
preprocessing and a documented serving signature (docs/export.md); `OnnxPredictor` runs an
exported ONNX file with onnxruntime (`load_signature` serves a SavedModel); `verify_artifact`
measures parity with the Keras model, `median_seconds` times calls side by side; `ends_in_softmax` says
whether a model outputs probabilities (as export and the zoo's classification loss read it).
TensorFlow, tf2onnx and onnxruntime are imported on first use, not with kernelzoo.
"""
import importlib

_EXPORTS = {
    "to_saved_model": "kernelzoo.export.saved_model",
    "to_onnx": "kernelzoo.export.onnx_export",
    "OnnxPredictor": "kernelzoo.export.predictor",
    "verify_artifact": "kernelzoo.export.verify",
    "load_signature": "kernelzoo.export.saved_model",
    "median_seconds": "kernelzoo.export.bench",
    "ServingSpec": "kernelzoo.export._common",
    "serving_spec": "kernelzoo.export._common",
    "ends_in_softmax": "kernelzoo.export._common",
    "ExportError": "kernelzoo.export._common",
    "UnsupportedLayerError": "kernelzoo.export._common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernelzoo.export' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
