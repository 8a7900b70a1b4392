"""What every exporter shares: the serving signature, tracing, graph checks and atomic writes.

The serving signature (documented in docs/export.md):
  input  `images` (image models, rank >= 3) or `inputs` (others): (batch, *model input shape),
         uint8 (raw pixels, cast to float32 before the model) or float32, batch dynamic;
  output `logits` and `probabilities` = softmax(logits), (batch, classes) float32, for classifiers;
         `outputs` (the model's output as it is) for other models (head="raw").

"auto" rules: input_dtype is uint8 when an image model takes raw pixels (its first layer after any
augmentation is preprocessing: `kernelzoo.zoo.takes_raw_pixels`), else float32; head is "classifier" when
the output is (batch, classes) with classes >= 2, the model takes images or ends in softmax and does not end
in a sigmoid, else "raw". Logits of a model ending in softmax are the values that go into it (the last
layer of a nested last model counts).
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import uuid
import warnings

import keras

from kernelzoo.layers.weights import set_weights
from kernelzoo.ops import checks
from kernelzoo.ops.composite import handles_empty_batch

INPUT_DTYPES = ("auto", "uint8", "float32")
HEADS = ("auto", "classifier", "raw")
_SOFTMAX_NAMES = ("softmax", "softmax_v2")  # keras.activations / keras.ops, tf.nn
_SIGMOID_NAMES = ("sigmoid", "hard_sigmoid")  # independent per-column probabilities: not a softmax classifier
# TF op types that never run outside the exporting process.
_PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


class ExportError(ValueError):
    """The model cannot be exported as asked (bad argument, unwritable path, failed check)."""


class UnsupportedLayerError(ExportError):
    """A layer of the model produces operations the target format cannot express."""

    def __init__(self, message, layer=None, op_type=None):
        super().__init__(message)
        self.layer, self.op_type = layer, op_type


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """The exported signature of one model; stored with the artifact as JSON."""

    input_name: str
    input_dtype: str  # "uint8" or "float32"
    input_shape: tuple  # (None, ...) with the batch axis first
    head: str  # "classifier" or "raw"
    logits_source: str  # "output", "softmax_input" or "activation" (how logits are read off the model)
    model_name: str = ""

    @classmethod
    def from_json(cls, text):
        """The spec `to_json` wrote (extra keys such as output_names are ignored)."""
        data = json.loads(text)
        fields = {field.name for field in dataclasses.fields(cls)}
        data = {key: value for key, value in data.items() if key in fields}
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data)

    @property
    def output_names(self):
        return ("logits", "probabilities") if self.head == "classifier" else ("outputs",)

    def to_json(self):
        from kernelzoo._version import __version__
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["output_names"] = list(self.output_names)
        data["kernelzoo_version"] = __version__
        return json.dumps(data, sort_keys=True)


def check_model(model):
    """A built single-input single-output Keras model on the TensorFlow backend, else ExportError."""
    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"export needs the TensorFlow Keras backend, not {keras.backend.backend()!r} "
                          "(set KERAS_BACKEND=tensorflow)")
    if not isinstance(model, keras.Model):
        raise ExportError(f"expected a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ExportError(f"model {model.name!r} is not built: call it once or give it a keras.Input")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        raise ExportError(f"model {model.name!r} has no defined inputs/outputs "
                          "(a subclassed model? build it as a functional or Sequential model)") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"export supports models with one input and one output; {model.name!r} has "
                          f"{len(inputs)} input(s) and {len(outputs)} output(s)")
    return model


def float32_model(model):
    """`model` when every layer computes in float32, else a float32 copy (the same weights) with a warning.

    The signature and ONNX are float32 (a bfloat16 graph fails onnx.checker, float64 convolutions do not run in
    onnxruntime), so a model under another dtype policy is exported, and verified, as this copy. A model that
    cannot be copied (a layer that its config does not rebuild) is an ExportError naming the policy, before any
    conversion."""
    policies = sorted({layer.dtype_policy.name for layer in _all_layers(check_model(model))
                       if _computes_in_other_float(layer)})
    if not policies:
        return model
    try:
        copy = keras.models.clone_model(model, clone_function=_float32_layer, recursive=True)
        set_weights(copy, model.get_weights())
    except (ValueError, TypeError, NotImplementedError) as error:
        raise ExportError(f"model {model.name!r} computes under the dtype policy {', '.join(policies)} and cannot be "
                          f"copied to float32 for export ({error}): build it under the 'float32' policy and "
                          "load its weights") from None
    warnings.warn(f"model {model.name!r} computes under the dtype policy {', '.join(policies)}: exporting and "
                  "verifying a float32 copy of it (the same weights, every layer computing in float32)",
                  RuntimeWarning, stacklevel=3)
    return copy


def _computes_in_other_float(layer):
    """Whether `layer` computes in a float type other than float32 (bfloat16, float16, float64)."""
    dtype = layer.dtype_policy.compute_dtype
    return keras.backend.is_float_dtype(dtype) and keras.backend.standardize_dtype(dtype) != "float32"


def _float32_layer(layer):
    """A new `layer` (no weights yet) computing in float32."""
    return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})


def serving_spec(model, input_dtype="auto", head="auto"):
    """The ServingSpec of `model` (see the module docstring for the `auto` rules)."""
    check_model(model)
    input_dtype = checked(checks.check_choice, "input_dtype", input_dtype, INPUT_DTYPES)
    head = checked(checks.check_choice, "head", head, HEADS)
    shape = tuple(model.inputs[0].shape)
    shape = (None,) + tuple(None if d is None else int(d) for d in shape[1:])
    image_model = len(shape) >= 3
    if input_dtype == "auto":
        from kernelzoo.zoo.inputs import takes_raw_pixels
        input_dtype = "uint8" if image_model and takes_raw_pixels(model) else "float32"
    last = _last_layer(model)
    out_shape = tuple(model.outputs[0].shape)
    softmax_last = ends_in_softmax(model)
    if head == "auto":
        classes = out_shape[-1] if len(out_shape) == 2 else None
        sigmoid_last = _activation_name(last) in _SIGMOID_NAMES
        head = ("classifier" if classes is not None and classes >= 2 and not sigmoid_last
                and (image_model or softmax_last) else "raw")
    if head == "classifier":
        _check_classifier(model, out_shape, last)
    logits_source = "output"
    if head == "classifier" and _is_softmax_layer(last):
        if last not in model.layers:
            raise ExportError(f"the logits of {model.name!r} go into the {type(last).__name__} layer {last.name!r} "
                              "of a nested model, where they cannot be read: use head='raw' (the probabilities "
                              "as they are) or end the outer model in the softmax")
        logits_source = "softmax_input"
    elif head == "classifier" and _has_softmax_activation(last):
        logits_source = "activation"
    return ServingSpec(input_name="images" if image_model else "inputs", input_dtype=input_dtype,
                       input_shape=shape, head=head, logits_source=logits_source, model_name=model.name)


def _check_classifier(model, out_shape, last):
    """A (batch, classes >= 2) output not from a sigmoid, else ExportError: softmax would not give its
    probabilities (a single unit's softmax is always 1)."""
    if len(out_shape) != 2 or (out_shape[-1] is not None and out_shape[-1] < 2):
        raise ExportError(f"head='classifier' needs a (batch, classes >= 2) output; {model.name!r} outputs "
                          f"shape {out_shape} (use head='raw')")
    if _activation_name(last) in _SIGMOID_NAMES:
        raise ExportError(f"head='classifier': {model.name!r} ends in a {_activation_name(last)}, whose outputs are "
                          "independent probabilities, not softmax logits (use head='raw')")


def serving_function(model, spec):
    """Python function input -> {output name: tensor} implementing the signature (trace it in `tracing`)."""
    import tensorflow as tf

    logits_model = model
    if spec.logits_source == "softmax_input":
        logits_model = keras.Model(model.inputs, _last_layer(model).input, name=f"{model.name}_logits")

    @handles_empty_batch  # TF's oneDNN Conv2D passes an empty batch through unchanged
    def first_output(x):
        y = logits_model(x, training=False)
        if isinstance(y, (list, tuple)):
            return y[0]
        if isinstance(y, dict):
            return next(iter(y.values()))
        return y

    def serve(inputs):
        # A call off the signature (no batch axis, a wrong size) is refused here, not deep in a kernel (oneDNN
        # aborted the serving process on a missing batch axis).
        inputs = tf.ensure_shape(inputs, spec.input_shape)
        y = tf.cast(first_output(tf.cast(inputs, model.inputs[0].dtype or "float32")), tf.float32)
        if spec.head == "raw":
            return {"outputs": tf.identity(y, name="outputs")}
        return {"logits": tf.identity(y, name="logits"),
                "probabilities": tf.identity(tf.nn.softmax(y, axis=-1), name="probabilities")}

    return serve


def input_signature(spec):
    import tensorflow as tf
    return (tf.TensorSpec(spec.input_shape, tf.dtypes.as_dtype(spec.input_dtype), name=spec.input_name),)


@contextlib.contextmanager
def tracing(model, spec):
    """While tracing: the composite keras.ops similarity/MEX, and logits read before a final softmax."""
    from kernelzoo.ops import implementation

    with implementation("composite"), _activation_patch(_last_layer(model), spec):
        yield


def reference_outputs(model, images, spec, batch_size=64, verbose=False):
    """The Keras model's outputs for `images` as the signature names them (numpy), in batches
    (a progress bar when `verbose`)."""
    import numpy as np

    from kernelzoo.progress import progress

    serve = serving_function(model, spec)
    parts = {name: [] for name in spec.output_names}
    last = _last_layer(model)
    for start in progress(range(0, len(images), batch_size), label="Keras reference", verbose=verbose,
                          unit="batch"):
        with _activation_patch(last, spec):
            out = serve(images[start:start + batch_size])
        for name in spec.output_names:
            parts[name].append(keras.ops.convert_to_numpy(out[name]))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


@contextlib.contextmanager
def _activation_patch(layer, spec):
    """The last layer's softmax activation swapped for linear (logits_source "activation")."""
    if spec.logits_source != "activation":
        yield
        return
    saved = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = saved


def graph_nodes(graph_def):
    """(op type, node name) of every node of a GraphDef, its function library included."""
    functions = {f.signature.name for f in graph_def.library.function}
    nodes = [(n.op, n.name) for n in graph_def.node]
    for function in graph_def.library.function:
        nodes.extend((n.op, n.name) for n in function.node_def)
    return [(op, name) for op, name in nodes if op not in functions]


def check_tf_graph(model, graph_def):
    """Raise UnsupportedLayerError for ops that a stock TensorFlow cannot run (custom or Python ops)."""
    import tensorflow as tf

    for op_type, name in graph_nodes(graph_def):
        if op_type in _PYTHON_OPS or not hasattr(tf.raw_ops, op_type):
            layer = layer_for_node(model, name)
            why = ("runs Python code" if op_type in _PYTHON_OPS else
                   "is not a stock TensorFlow op (a custom op library would be needed to serve it)")
            raise UnsupportedLayerError(
                f"layer {layer!r} cannot be exported: its op {op_type!r} (node {name!r}) {why}",
                layer=layer, op_type=op_type)


def layer_for_node(model, node_name):
    """Best guess of the layer that created a graph node, from the node's name scopes."""
    names = sorted({layer.name for layer in _all_layers(model)}, key=len, reverse=True)
    scopes = re.split(r"[/:]", node_name)[:-1]
    for scope in reversed(scopes):
        for name in names:
            if re.fullmatch(re.escape(name) + r"(_\d+)*", scope):
                return name
    return scopes[-1] if scopes else node_name


def _all_layers(model):
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except (AttributeError, TypeError):
        return list(model.layers)


def _last_layer(model):
    """The layer that makes the model's output, looking into a nested last model (e.g. a Sequential head)."""
    layer = model
    while isinstance(layer, keras.Model):
        if not layer.layers:
            return None
        layer = layer.layers[-1]
    return layer


def ends_in_softmax(model):
    """Whether the model's output is a softmax (a Softmax layer, Activation("softmax") or a layer's activation)."""
    last = _last_layer(model)
    return _is_softmax_layer(last) or _has_softmax_activation(last)


def _is_softmax_layer(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    return isinstance(layer, keras.layers.Activation) and _activation_name(layer) in _SOFTMAX_NAMES


def _has_softmax_activation(layer):
    return (not isinstance(layer, (keras.layers.Activation, keras.layers.Softmax))
            and _activation_name(layer) in _SOFTMAX_NAMES)


def _activation_name(layer):
    """The name of `layer`'s activation function ("" without one)."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", "")


def checked(check, *args):
    """`check(*args)` (a `kernelzoo.ops.checks` helper) raising ExportError, which the CLI reports."""
    try:
        return check(*args)
    except ExportError:
        raise
    except ValueError as error:
        raise ExportError(str(error)) from None


# --- writing -------------------------------------------------------------------------------------

def prepare_target(path, kind):
    """Absolute target path after checking it can be written ("file": an .onnx file, "dir": a SavedModel
    directory), else ExportError. An existing file is replaced only when it is an .onnx file or an ONNX model
    kernelzoo wrote (under another name).

    Missing parent directories are created only when the artifact is written (and removed again if
    writing fails), so a failed export leaves nothing behind."""
    path = checked(checks.path, path, "path")
    if kind == "file" and path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise ExportError(f"cannot write {path!r}: it ends in a path separator (give a file name, e.g. model.onnx)")
    path = os.path.abspath(path)
    missing = _missing_parents(path)
    ancestor = os.path.dirname(missing[-1] if missing else path)
    if not os.path.isdir(ancestor):
        raise ExportError(f"cannot write {path!r}: {ancestor!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path!r}: no write permission in {ancestor!r}")
    if kind == "file" and os.path.isdir(path):
        raise ExportError(f"cannot write {path!r}: it is a directory (give a file name, e.g. model.onnx)")
    if kind == "file" and os.path.exists(path) and not path.lower().endswith(".onnx") and not _kernelzoo_onnx(path):
        raise ExportError(f"cannot write {path!r}: a file of that name exists and is not an .onnx file "
                          "(refusing to replace it: is it the model itself?)")
    if kind == "dir" and os.path.exists(path):
        if not os.path.isdir(path):
            raise ExportError(f"cannot write a SavedModel to {path!r}: a file of that name exists")
        if os.listdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ExportError(f"cannot write a SavedModel to {path!r}: the directory is not empty and "
                              "holds no SavedModel (refusing to replace it)")
    return path


def _kernelzoo_onnx(path):
    """Whether the file at `path` is an ONNX model with a kernelzoo signature: an earlier export, safe to replace."""
    from kernelzoo.export.verify import stored_spec

    try:
        return stored_spec(path) is not None
    except ExportError:  # not an ONNX model, or one with an unreadable signature
        return False


def _missing_parents(path):
    """The directories above `path` that do not exist yet, deepest first."""
    missing = []
    directory = os.path.dirname(path)
    while not os.path.exists(directory) and os.path.dirname(directory) != directory:
        missing.append(directory)
        directory = os.path.dirname(directory)
    return missing


@contextlib.contextmanager
def _parent_directory(path):
    """`path`'s missing parent directories created for the block, removed again if the block fails."""
    parent = os.path.dirname(path)
    missing = _missing_parents(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot write {path!r}: cannot create its directory {parent!r} "
                          f"({error.strerror or error})") from None
    try:
        yield
    except BaseException:
        for directory in missing:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


def write_file_atomic(path, data):
    """Write bytes to a temp file beside `path`, then rename over it (never a half-written file)."""
    with _parent_directory(path):
        _write_file_atomic(path, data)


def _write_file_atomic(path, data):
    tmp = _temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # the process's umask applies, as to any file
    except OSError as error:
        raise ExportError(f"cannot write {path!r}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise ExportError(f"cannot write {path!r}: {error.strerror or error}") from None
        raise


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temp dir beside `path`; on success it replaces `path`, on failure it is removed."""
    with _parent_directory(path), _atomic_directory(path) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_directory(path):
    tmp = _temporary_name(path)
    try:
        os.mkdir(tmp, 0o755)  # the process's umask applies, as to any directory
    except OSError as error:
        raise ExportError(f"cannot write {path!r}: {error.strerror or error}") from None
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = tmp + ".old"
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise ExportError(f"cannot write {path!r}: {error.strerror or error}") from None
        raise


def _temporary_name(path):
    """A new hidden name beside `path` for writing it before the rename (the mode of a file created there follows
    the umask, which tempfile's private 0600 / 0700 would not, and reading the umask changes it for every thread)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{uuid.uuid4().hex}.tmp")
