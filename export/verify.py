"""Parity of an exported artifact with the Keras model: max abs / rel logit difference, top-1 agreement.

Inputs are the test split of the model's preset (`kernelzoo.zoo.test_split`: a zoo name, or a
run folder's .keras file) when a data directory is given, otherwise generated images. The Keras reference runs the
implementation the user gets (`KERNELZOO_OPS`, custom ops when built); the artifacts hold the
composite one.
"""
import dataclasses
import os

import numpy as np

from kernelzoo.export._common import (
    HEADS, INPUT_DTYPES, ExportError, ServingSpec, checked, ends_in_softmax, float32_model, reference_outputs,
    serving_spec)
from kernelzoo.export.predictor import CPU_PROVIDER, OnnxPredictor, model_input
from kernelzoo.ops.checks import check_choice, positive_int
from kernelzoo.progress import progress

# Parity goal for zoo models (issue 6): all top-1 agree, logits within this absolute difference.
MAX_ABS_GOAL = 1e-4
# Logits far from O(1) (the sum-over-positions SimNets: |logit| ~ 7e4) cannot meet an absolute
# 1e-4 in float32 (spacing 0.0078 there): they are held to 1e-6 of the largest |logit| (~8 ulps).
RELATIVE_GOAL = 1e-6
# Some models amplify float32 rounding beyond both: an unsupervised CKN's logits move by 2e-4 when its
# pixels move by one float32 rounding step (per-image whitening of near-flat images, the Nystrom
# factor). No float32 implementation can promise more than that, so the float32 goal also allows
# this many times the Keras model's own movement under such a step (`rounding_floor`).
ROUNDING_MARGIN = 4


def artifact_outputs(path, images, batch_size=64, verbose=False):
    """{output name: array} of a SavedModel directory or an .onnx file for `images` (checked and cast to the
    artifact's input dtype as `OnnxPredictor` does, ValueError otherwise), in batches (a progress bar when
    `verbose`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _saved_model_outputs(path, images, batch_size, verbose)
    return OnnxPredictor(path, providers=[CPU_PROVIDER], batch_size=batch_size).run(images, verbose=verbose)


def _saved_model_outputs(path, images, batch_size, verbose):
    import tensorflow as tf

    from kernelzoo.export.saved_model import load_signature

    fn = load_signature(path)
    (name, spec), = fn.structured_input_signature[1].items()
    images = model_input(images, spec.dtype.as_numpy_dtype, tuple(spec.shape.as_list()))
    parts = {}
    for start in progress(range(0, max(len(images), 1), batch_size), label="SavedModel", verbose=verbose,
                          unit="batch"):  # one call for no images: the outputs' shapes
        try:
            outputs = fn(**{name: tf.constant(images[start:start + batch_size])})
        except tf.errors.OpError as error:
            raise ExportError(f"the SavedModel {path!r} failed to run: {error.message}") from error
        for key, value in outputs.items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def compare(reference, exported, *, top1=False, tie_tolerance=1e-5):
    """Differences between two arrays of outputs (logits, probabilities or raw outputs); the same
    non-finite value on both sides (NaN and NaN, inf and inf) counts as no difference.

    With `top1` ((batch, classes) logits): top1_agreement counts an image as agreeing when the exported
    argmax is the Keras argmax or ties with it (Keras logits within `tie_tolerance` of the max):
    untrained models often tie.
    """
    reference = np.asarray(reference, np.float64)
    exported = np.asarray(exported, np.float64)
    if reference.shape != exported.shape:
        raise ExportError(f"output shapes differ: Keras {reference.shape}, exported {exported.shape}")
    same = (reference == exported) | (np.isnan(reference) & np.isnan(exported))
    with np.errstate(invalid="ignore"):  # inf - inf, inf / inf: NaN, a difference that fails every goal
        diff = np.where(same, 0.0, np.abs(reference - exported))
        max_rel = float((diff / np.maximum(np.abs(reference), 1e-6)).max(initial=0.0))
    report = {"n": int(reference.shape[0]), "max_abs": float(diff.max(initial=0.0)), "max_rel": max_rel,
              "nan_mismatch": int(np.sum(np.isnan(reference) != np.isnan(exported))),
              "max_reference": float(np.abs(reference[np.isfinite(reference)]).max(initial=0.0))}
    if top1:
        if reference.ndim != 2:
            raise ExportError(f"top-1 agreement needs (batch, classes) outputs, got shape {reference.shape}")
        top_ref, top_exp = reference.argmax(1), exported.argmax(1)
        rows = np.arange(len(reference))
        best = reference[rows, top_ref]
        tied = reference[rows, top_exp] >= best - tie_tolerance * np.maximum(1.0, np.abs(best))
        report["top1_agreement"] = float(np.mean((top_ref == top_exp) | tied)) if len(reference) else 1.0
        report["top1_exact"] = float(np.mean(top_ref == top_exp)) if len(reference) else 1.0
    return report


def verify_artifact(model, path, images=None, *, data_dir=None, preset=None, num=1000, seed=0, input_dtype="auto",
                    head="auto", batch_size=64, verbose=False):
    """Run the artifact at `path` and the Keras `model` on the same inputs; returns the comparison
    (with a progress bar for each when `verbose`).

    The signature is the one stored in the artifact (`stored_spec`); `input_dtype` and `head` are what it
    was exported with: checked against it, or the signature of an artifact that stores none. `images`
    default to `make_inputs(model, data_dir, num, preset=preset)`; they are checked and cast to the signature's
    input dtype once (`model_input`, ExportError when they do not fit it), and that one array goes to Keras and
    the artifact. A model under a non-float32 dtype policy is compared as the float32 copy its export
    holds (`float32_model`). The report holds n, max_abs, max_rel,
    top1_agreement (classifiers), the same for probabilities, the input source, `ok`
    (top-1 agreement 1.0 and max_abs <= 1e-4) and `ok_float32` (max_abs within
    `float32_tolerance` of the largest |output| instead). Classifiers are also held to the Keras model's
    own output, a check that does not go through the signature's reading of the logits: the exported
    probabilities for a model ending in softmax, else the logits (model_output, model_output_max_abs,
    within the same goals).
    """
    batch_size = checked(positive_int, batch_size, "batch_size")
    model = float32_model(model)
    spec = artifact_spec(model, path, input_dtype, head)
    source = "given"
    if images is None:
        images, source = make_inputs(model, data_dir=data_dir, num=num, seed=seed, input_dtype=spec.input_dtype,
                                     preset=preset)
    images = checked(model_input, images, spec.input_dtype, spec.input_shape)
    if not len(images):
        raise ExportError("images: no inputs to compare (parity needs at least one)")
    reference = reference_outputs(model, images, spec, batch_size=batch_size, verbose=verbose)
    exported = artifact_outputs(path, images, batch_size=batch_size, verbose=verbose)
    key = spec.output_names[0]
    report = compare(reference[key], exported[key], top1=spec.head == "classifier")
    report["output"], report["inputs"] = key, source
    if "probabilities" in reference:
        report["probabilities_max_abs"] = compare(reference["probabilities"], exported["probabilities"])["max_abs"]
    if spec.head == "classifier":
        report.update(_model_output_check(model, images, spec, reference, exported, batch_size))
    differences = [report["max_abs"], report.get("model_output_max_abs", 0.0)]
    worst = np.inf if np.isnan(differences).any() else max(differences)  # NaN fails every goal
    agree = report.get("top1_agreement", 1.0) == 1.0 and not report["nan_mismatch"]
    report["ok"] = bool(worst <= MAX_ABS_GOAL and agree)
    tolerance = float32_tolerance(report["max_reference"])
    if worst > tolerance:  # only then is the floor worth another Keras pass
        report["rounding_floor"] = rounding_floor(model, images, key, head=spec.head, batch_size=batch_size)
        tolerance = float32_tolerance(report["max_reference"], report["rounding_floor"])
    report["ok_float32"] = bool(worst <= tolerance and agree)
    return report


def _model_output_check(model, images, spec, reference, exported, batch_size):
    """The exported output that should equal the Keras model's own output (probabilities after a final
    softmax, else logits) against that output; {} where that is the parity comparison itself."""
    name = "probabilities" if ends_in_softmax(model) else "logits"
    if spec.logits_source == "output":
        if name == "logits":
            _check_not_probabilities(model, reference["logits"])
            return {}
        own = reference["logits"]  # the signature's logits are the model's output, cast to float32
    else:
        as_is = dataclasses.replace(spec, head="raw", logits_source="output")
        own = reference_outputs(model, images, as_is, batch_size=batch_size)["outputs"]
    return {"model_output": name, "model_output_max_abs": compare(own, exported[name])["max_abs"]}


def _check_not_probabilities(model, logits):
    """ExportError when a classifier's outputs, read as logits, are probabilities (every row >= 0, summing to 1):
    a final softmax that export did not recognise (e.g. in a Lambda layer), which the signature applies again."""
    logits = np.asarray(logits, np.float64)
    if len(logits) and (logits >= 0).all() and np.allclose(logits.sum(axis=-1), 1.0, rtol=0.0, atol=1e-5):
        raise ExportError(f"the outputs of {model.name!r} are probabilities (rows >= 0 summing to 1), yet no final "
                          "softmax layer or activation was recognised, so its signature applies a softmax again: "
                          "export it with head='raw', or end it in a Softmax layer or Activation('softmax')")


def stored_spec(path):
    """The ServingSpec an artifact stores (an .onnx file's `kernelzoo_signature` property, a SavedModel's
    assets.extra/kernelzoo_signature.json), or None for an artifact kernelzoo did not write.

    ExportError naming `path` when it is neither an ONNX model nor a SavedModel directory (before any model runs).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from kernelzoo.export.saved_model import SIGNATURE_FILE

        if not any(os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")):
            raise ExportError(f"{path!r} is not a SavedModel directory (no saved_model.pb)")
        file = os.path.join(path, SIGNATURE_FILE)
        if not os.path.isfile(file):
            return None
        with open(file) as handle:
            text = handle.read()
    else:
        import onnx
        from google.protobuf.message import DecodeError

        if not os.path.isfile(path):
            raise ExportError(f"no artifact at {path!r} (an .onnx file or a SavedModel directory)")
        try:
            proto = onnx.load(path, load_external_data=False)
        except DecodeError as error:
            raise ExportError(f"{path!r} is not an ONNX model ({error})") from None
        properties = {p.key: p.value for p in proto.metadata_props}
        text = properties.get("kernelzoo_signature")
        if text is None:
            return None
    try:
        return ServingSpec.from_json(text)
    except (ValueError, TypeError, KeyError) as error:
        raise ExportError(f"{path!r}: unreadable kernelzoo signature ({type(error).__name__}: {error})") from None


def artifact_spec(model, path, input_dtype="auto", head="auto"):
    """The signature `path` was exported with: its stored one (ExportError when a non-"auto" `input_dtype`
    or `head` says otherwise), else `serving_spec(model, input_dtype, head)`."""
    input_dtype = checked(check_choice, "input_dtype", input_dtype, INPUT_DTYPES)  # "UINT8" as serving_spec takes it
    head = checked(check_choice, "head", head, HEADS)
    stored = stored_spec(path)
    if stored is None:
        return serving_spec(model, input_dtype=input_dtype, head=head)
    for name, value in (("input_dtype", input_dtype), ("head", head)):
        if value != "auto" and getattr(stored, name) != value:
            raise ExportError(f"`{name}`: {os.fspath(path)!r} was exported with {name}={getattr(stored, name)!r}, "
                              f"not {value!r}")
    shape = serving_spec(model, input_dtype=stored.input_dtype, head="raw").input_shape
    if stored.input_shape != shape:
        raise ExportError(f"{os.fspath(path)!r} takes inputs of shape {stored.input_shape}, the model "
                          f"{model.name!r} {shape}: not an export of this model")
    return stored


def rounding_floor(model, images, output="logits", head="auto", batch_size=64, seed=0):
    """Max |change| of the Keras model's `output` when every input is multiplied by 1 +- 2^-23 (random
    signs, one float32 rounding step): how far float32 arithmetic alone moves this model's outputs."""
    spec = serving_spec(model, input_dtype="float32", head=head)
    x = np.asarray(images, "float32")
    signs = np.random.default_rng(seed).choice(np.float32([-1.0, 1.0]), size=x.shape)
    moved = x * (1 + signs * np.float32(2.0 ** -23))
    base, shifted = (reference_outputs(model, inputs, spec, batch_size=batch_size)[output] for inputs in (x, moved))
    return float(np.abs(np.asarray(base, np.float64) - shifted).max(initial=0.0))


def float32_tolerance(max_reference, rounding_floor=0.0):
    """The parity bound for outputs up to `max_reference` in magnitude (see RELATIVE_GOAL) of a model
    whose `rounding_floor` is given (see ROUNDING_MARGIN)."""
    return max(MAX_ABS_GOAL, RELATIVE_GOAL * max_reference, ROUNDING_MARGIN * rounding_floor)


def format_report(report, artifact="exported"):
    lines = [f"verify {artifact} vs Keras on {report['n']} {report['inputs']} inputs ({report['output']}):",
             f"  max abs diff {report['max_abs']:.3g}   max rel diff {report['max_rel']:.3g}"]
    if "top1_agreement" in report:
        lines.append(f"  top-1 agreement {100 * report['top1_agreement']:.2f} % "
                     f"(exact argmax {100 * report['top1_exact']:.2f} %, the rest are ties in the Keras logits)")
    if "probabilities_max_abs" in report:
        lines.append(f"  probabilities max abs diff {report['probabilities_max_abs']:.3g}")
    if "model_output_max_abs" in report:
        lines.append(f"  exported {report['model_output']} vs the Keras model's own output: max abs diff "
                     f"{report['model_output_max_abs']:.3g}")
    if report["nan_mismatch"]:
        lines.append(f"  NaN in one output but not the other: {report['nan_mismatch']} values")
    lines.append(f"  parity goal (top-1 100 %, max abs <= {MAX_ABS_GOAL:g}): {'met' if report['ok'] else 'NOT met'}")
    floor = report.get("rounding_floor", 0.0)
    if float32_tolerance(report["max_reference"], floor) > MAX_ABS_GOAL:
        spacing = float(np.spacing(np.float32(report["max_reference"])))
        lines.append(f"  |outputs| reach {report['max_reference']:.3g}, where float32 spacing is {spacing:.2g}; "
                     f"one float32 rounding step of the inputs moves the Keras outputs by {floor:.2g}: float32 goal "
                     f"(max abs <= {float32_tolerance(report['max_reference'], floor):.2g}, the larger of "
                     f"{RELATIVE_GOAL:g} x the first and {ROUNDING_MARGIN} x the second) "
                     f"{'met' if report['ok_float32'] else 'NOT met'}")
    return "\n".join(lines)


def make_inputs(model, data_dir=None, num=1000, seed=0, input_dtype="auto", preset=None):
    """(images, source): `num` inputs shaped and typed for the model's exported signature.

    With `data_dir` and a `preset` (a zoo name or Preset): its test split (`kernelzoo.zoo.test_split`:
    the first images of each class in turn). Without `data_dir`: seeded random pixels 0-255 for a uint8 signature or an
    image model, else standard normal features. Float pixels are scaled to [0, 1] unless the model takes raw pixels.
    """
    from kernelzoo.zoo import takes_raw_pixels, test_split
    from kernelzoo.zoo.inputs import as_model_input

    num = checked(positive_int, num, "num")
    spec = serving_spec(model, input_dtype=input_dtype, head="raw")  # the input side only
    shape = spec.input_shape[1:]
    if any(d is None for d in shape):
        raise ExportError(f"cannot make inputs for the unknown input shape {spec.input_shape}; pass images")
    if data_dir is not None:
        if preset is None:
            raise ExportError(f"no test split is known for {model.name!r}: verify a zoo NAME or a run folder's "
                              ".keras file, or leave out the data directory to verify on generated inputs")
        try:
            pixels, _, source = test_split(preset, data_dir, num)
        except ValueError as error:
            raise ExportError(f"test split of {getattr(preset, 'name', preset)!r}: {error}") from None
        try:
            pixels = as_model_input(pixels, model)
        except ValueError:
            raise ExportError(f"the test split of {getattr(preset, 'name', preset)!r} has inputs of shape "
                              f"{pixels.shape[1:]}, {model.name!r} takes {tuple(shape)}: a preset of another "
                              "dataset?") from None
    else:
        rng = np.random.default_rng(seed)
        if len(shape) < 2 and spec.input_dtype != "uint8":  # not an image model: standard normal features
            return rng.standard_normal((num,) + tuple(shape)).astype(np.float32), "generated"
        pixels, source = rng.integers(0, 256, (num,) + tuple(shape), dtype=np.uint8), "generated"
    if spec.input_dtype == "uint8":
        return pixels, source
    return pixels.astype(np.float32) / (1.0 if takes_raw_pixels(model) else 255.0), source
