"""ONNX export through tf2onnx: standard ONNX ops only, dynamic batch, preprocessing included.

tf2onnx cannot convert the custom TensorFlow ops, so the model is traced with the composite
`keras.ops` implementation: weighted l2 similarity as three convolutions, l1/lp on patches
taken by a one-hot convolution, MEX as max-shifted log-mean-exp with reductions. tf2onnx 1.17
has no converter for TF's Expm1 and Log1p (used by MEX); they are lowered here to
Exp(x) - 1 and Log(1 + x), which loses nothing that matters: the composite MEX switches to its
cumulant series where expm1/log1p precision would count (|xi| * range < 1e-3).
"""
import logging
import warnings

import numpy as np

from kernelzoo.export._common import (
    ExportError, UnsupportedLayerError, checked, float32_model, input_signature, layer_for_node, prepare_target,
    serving_function, serving_spec, tracing, write_file_atomic)
from kernelzoo.export.predictor import shape_text
from kernelzoo.ops.checks import int_in_range

MIN_OPSET, MAX_OPSET = 13, 18
DEFAULT_OPSET = 17
BATCH_DIM = "batch"
_STANDARD_DOMAINS = ("", "ai.onnx")


def to_onnx(model, path, opset=DEFAULT_OPSET, *, input_dtype="auto", head="auto"):
    """Export `model` to an ONNX file at `path`; returns the absolute path.

    Args:
      model: a built single-input Keras model (kernelzoo layers, preprocessing layers included).
      path: the .onnx file, written to a temp file beside it and renamed into place (an existing file is
        replaced only when its name ends in .onnx).
      opset: ONNX opset, MIN_OPSET to MAX_OPSET (tf2onnx 1.17 goes up to 18).
      input_dtype, head: as `to_saved_model` (the same signature: input `images` uint8 or float32
        with a dynamic batch axis named "batch"; outputs `logits` and `probabilities`).

    The file holds standard-domain ONNX nodes only, passes `onnx.checker` (full check, with
    strict shape inference) and runs in plain onnxruntime (CPU) and onnxruntime-gpu. A model under a
    non-float32 dtype policy is exported as its float32 copy (`float32_model`, with a warning).
    Raises ExportError for a bad opset or path, UnsupportedLayerError naming the layer whose
    ops have no standard ONNX equivalent.
    """
    opset = check_opset(opset)
    spec = serving_spec(model, input_dtype=input_dtype, head=head)
    path = prepare_target(path, "file")
    proto = convert(float32_model(model), spec, opset)
    data = proto.SerializeToString()
    write_file_atomic(path, data)
    return path


def check_opset(opset):
    """`opset` as an int kernelzoo exports and tests (tf2onnx 1.17 converts up to MAX_OPSET), else ExportError."""
    return checked(int_in_range, opset, "opset", MIN_OPSET, MAX_OPSET)


def convert(model, spec, opset):
    """The checked onnx.ModelProto of `model` under `spec`."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from kernelzoo._version import __version__

    serve = tf.function(serving_function(model, spec), input_signature=input_signature(spec), autograph=False)
    # tf2onnx's errors about unsupported ops are reported below, naming the layer; TF's v1-API
    # deprecation notices from tf2onnx's session use are noise.
    loggers = [logging.getLogger("tf2onnx"), logging.getLogger("tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    failed_optimizers = _OptimizerFailures()
    try:
        with tracing(model, spec):
            graph_def, inputs, renames = _frozen_graph(serve.get_concrete_function())
        with failed_optimizers:
            proto, _ = tf2onnx.convert.from_graph_def(graph_def, name=model.name, input_names=inputs,
                                                      output_names=list(renames), opset=opset,
                                                      custom_op_handlers=dict(_HANDLERS),
                                                      tensors_to_rename=dict(renames, **{inputs[0]: spec.input_name}))
    except ExportError:  # ours (UnsupportedLayerError, _frozen_graph's): already say what is wrong
        raise
    except Exception as error:  # tf2onnx raises bare exceptions from its handlers
        node = getattr(error, "node_name", None) or _node_in_message(str(error))
        where = f" in layer {layer_for_node(model, node)!r}" if node else ""
        raise ExportError(f"tf2onnx could not convert {model.name!r}{where}: "
                          f"{type(error).__name__}: {error}") from error
    finally:
        for logger, saved in zip(loggers, levels):
            logger.setLevel(saved)
    if failed_optimizers.messages:
        failures = "; ".join(dict.fromkeys(failed_optimizers.messages))  # each pass over the graph retries them
        warnings.warn(f"tf2onnx could not apply {failures} to {model.name!r}: it kept "
                      "the graph as it was before each, so the ONNX model is correct but less optimized",
                      RuntimeWarning, stacklevel=3)
    _check_standard_nodes(model, proto, opset)
    _name_batch_axis(proto, spec)
    del proto.opset_import[:]
    proto.opset_import.append(onnx.helper.make_opsetid("", opset))
    proto.producer_name, proto.producer_version = "kernelzoo", __version__
    proto.doc_string = (f"kernelzoo export of {model.name}: input {spec.input_name} {spec.input_dtype} "
                        f"{shape_text(spec.input_shape)}, outputs {', '.join(spec.output_names)}")
    onnx.helper.set_model_props(proto, {"kernelzoo_signature": spec.to_json(), "kernelzoo_version": __version__,
                                        "keras_model_name": model.name})
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the ONNX graph of {model.name!r} fails onnx.checker: {error}") from error
    return proto


def _frozen_graph(concrete):
    """(GraphDef with variables and captured tensors as constants, [input tensor], {output tensor: name}).

    Freezing here, not in tf2onnx.from_function, also turns captured non-variable tensors (e.g. the
    mean and variance a Normalization layer was given) into constants: from_function would make
    them extra graph inputs.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    if len(inputs) != 1:
        raise ExportError(f"the traced serving function has {len(inputs)} inputs after freezing, expected 1: {inputs}")
    keys = sorted(concrete.structured_outputs)  # tf.nest flattens dicts in sorted key order
    renames = {tensor.name: key for tensor, key in zip(frozen.outputs, keys)}
    return frozen.graph.as_graph_def(add_shapes=True), inputs, renames


def _check_standard_nodes(model, proto, opset):
    """Every node (subgraphs included) must be a standard ONNX op defined at `opset`."""
    import onnx

    for node in _all_nodes(proto.graph):
        standard = node.domain in _STANDARD_DOMAINS and onnx.defs.has(node.op_type)
        if standard:
            try:
                onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                standard = False
        if not standard:
            layer = layer_for_node(model, node.name)
            domain = f" in domain {node.domain!r}" if node.domain not in _STANDARD_DOMAINS else ""
            raise UnsupportedLayerError(
                f"layer {layer!r} cannot be exported to ONNX opset {opset}: its op {node.op_type!r}{domain} "
                f"(node {node.name!r}) has no standard ONNX equivalent in tf2onnx",
                layer=layer, op_type=node.op_type)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                yield from _all_nodes(sub)


def _name_batch_axis(proto, spec):
    """Call the dynamic first axis of the input and outputs "batch" (tf2onnx writes unk__N)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    names = [value.name for value in proto.graph.output]
    if sorted(names) != sorted(spec.output_names):
        raise ExportError(f"unexpected ONNX output names {names}, expected {list(spec.output_names)}")


def _node_in_message(message):
    """The first token of a tf2onnx error that looks like a graph node name (a/b, not a file path /a/b)."""
    for token in message.replace("[", " ").replace("]", " ").replace(",", " ").split():
        token = token.strip("'\":")
        if "/" in token and not token.startswith(("/", ".")):
            return token
    return None


class _OptimizerFailures(logging.Handler):
    """Collects tf2onnx's "Failed to apply <optimizer>" warnings while the `with` block runs.

    tf2onnx catches a failing graph optimizer, logs a warning and keeps the graph from before it;
    the export silences tf2onnx's logging, so without this the failure would go unnoticed.
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []
        self._logger = logging.getLogger("tf2onnx.optimizer")

    def emit(self, record):
        if record.getMessage().startswith("Failed to apply"):
            error = record.exc_info[1] if record.exc_info else None
            name = record.getMessage()[len("Failed to apply "):]
            self.messages.append(f"{name} ({type(error).__name__}: {error})" if error else name)

    def __enter__(self):
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.setLevel(logging.WARNING)
        self._logger.propagate = False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
        return False


# --- tf2onnx handlers for TF ops it lacks (old-style custom_op_handlers: func(ctx, node, name, args)) ---

def _constant_one(ctx, node):
    from tf2onnx import utils
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    return ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype)).output[0]


def _expm1(ctx, node, name, args):
    """Expm1(x) -> Sub(Exp(x), 1)."""
    exp = ctx.make_node("Exp", [node.input[0]], op_name_scope=node.name)
    one = _constant_one(ctx, node)
    node.type, node.domain = "Sub", ""
    ctx.replace_inputs(node, [exp.output[0], one])


def _log1p(ctx, node, name, args):
    """Log1p(x) -> Log(Add(x, 1))."""
    one = _constant_one(ctx, node)
    add = ctx.make_node("Add", [node.input[0], one], op_name_scope=node.name)
    node.type, node.domain = "Log", ""
    ctx.replace_inputs(node, [add.output[0]])


def _select_v2(ctx, node, name, args):
    """SelectV2(c, a, b) -> Where(c, a, b): tf2onnx's own handler computes c * a + (1 - c) * b, which is NaN
    where the branch not taken holds an infinity (the composite MEX's ops.where branches do at xi = +-inf)."""
    node.type, node.domain = "Where", ""


_HANDLERS = {"Expm1": (_expm1, []), "Log1p": (_log1p, []), "SelectV2": (_select_v2, [])}
