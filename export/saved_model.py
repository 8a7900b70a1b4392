"""SavedModel export: a `serving_default` signature any TensorFlow serves, no kernelzoo needed.

The model is traced with the composite `keras.ops` similarity/MEX, so the graph holds only
stock TensorFlow ops: `tf.saved_model.load` works in a process that never imports kernelzoo,
on a machine where the custom op library was never built. The signature is described in
docs/export.md and stored as JSON in `assets.extra/kernelzoo_signature.json`.
"""
import os

from kernelzoo.export._common import (
    ExportError, atomic_directory, check_tf_graph, float32_model, input_signature, prepare_target, serving_function,
    serving_spec, tracing)

SIGNATURE_KEY = "serving_default"
SIGNATURE_FILE = os.path.join("assets.extra", "kernelzoo_signature.json")


def to_saved_model(model, path, *, input_dtype="auto", head="auto"):
    """Export `model` as a SavedModel directory at `path`; returns the absolute path.

    Args:
      model: a built single-input Keras model (kernelzoo layers, preprocessing layers included).
      path: the SavedModel directory; written beside as a temp dir, then renamed into place
        (an existing SavedModel there is replaced; any other non-empty directory is refused).
      input_dtype: "uint8" (raw pixels, cast to float32 first), "float32", or "auto": uint8 when
        an image model starts with a preprocessing layer (Rescaling, Normalization, ...).
      head: "classifier" (outputs `logits` and `probabilities`), "raw" (`outputs`), or "auto":
        classifier for (batch, classes) outputs of image models or models ending in softmax.

    Signature `serving_default`: input `images` (or `inputs`) -> {"logits", "probabilities"}. A model under a
    non-float32 dtype policy is exported as its float32 copy (`float32_model`, with a warning).
    Raises ExportError (UnsupportedLayerError naming the layer) when the model cannot be served
    by a stock TensorFlow, or the path cannot be written.
    """
    import tensorflow as tf

    spec = serving_spec(model, input_dtype=input_dtype, head=head)
    path = prepare_target(path, "dir")
    model = float32_model(model)
    module = tf.Module(name="kernelzoo_export")
    module.model_variables = [getattr(v, "value", v) for v in model.variables]
    serve = tf.function(serving_function(model, spec), input_signature=input_signature(spec),
                        autograph=False, reduce_retracing=False)
    with tracing(model, spec):
        concrete = serve.get_concrete_function()
        check_tf_graph(model, concrete.graph.as_graph_def())
        module.serve = serve
        with atomic_directory(path) as tmp:
            try:
                # Serving needs no gradients: tracing the custom ops' gradient functions is skipped.
                tf.saved_model.save(module, tmp, signatures={SIGNATURE_KEY: concrete},
                                    options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
            except (ValueError, TypeError, tf.errors.OpError) as error:
                raise ExportError(f"TensorFlow could not save {model.name!r} as a SavedModel: {error}") from error
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            with open(os.path.join(tmp, SIGNATURE_FILE), "w") as handle:
                handle.write(spec.to_json() + "\n")
    return path


def load_signature(path):
    """The serving function of a SavedModel (callable as fn(images=...) -> dict of tensors)."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(os.fspath(path))
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ExportError(f"cannot load {os.fspath(path)!r} as a SavedModel: {error}") from error
    if SIGNATURE_KEY not in loaded.signatures:
        raise ExportError(f"{path!r} has no {SIGNATURE_KEY!r} signature "
                          f"(signatures: {sorted(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE_KEY]
    fn._kernelzoo_keepalive = loaded  # the function needs the loaded object's variables alive
    return fn
