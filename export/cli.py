"""CLI hooks: `kernelzoo export NAME|FILE.keras --format onnx|saved_model -o OUT [--opset N] [--verify]`
(the dispatcher in kernelzoo/cli.py calls add_arguments/run; `kernelzoo bench deploy` is export/bench.py's).
"""
import os
import sys

from kernelzoo.export._common import (
    HEADS, INPUT_DTYPES, ExportError, checked, float32_model, prepare_target, serving_spec)
from kernelzoo.export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, check_opset
from kernelzoo.export.predictor import shape_text
from kernelzoo.ops.checks import check_choice, positive_int

FORMATS = ("onnx", "saved_model")
MODEL_FILE_SUFFIXES = (".keras", ".h5")  # a model argument ending so is a file, never a zoo name
DATA_DIR_VARIABLE = "KERNELZOO_DATA_DIR"


def add_arguments(parser, command):
    parser.description = "Export a zoo model or a .keras file to ONNX or a SavedModel (docs/export.md)."
    parser.add_argument("model", metavar="NAME|FILE.keras", help="zoo model name or a saved .keras file")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="artifact format (default: onnx when OUT ends in .onnx, else saved_model)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the .onnx file or SavedModel directory")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET}; --format onnx only)")
    parser.add_argument("--input-dtype", choices=INPUT_DTYPES, default="auto",
                        help="signature input dtype (default: uint8 when the model starts with preprocessing)")
    parser.add_argument("--head", choices=HEADS, default="auto",
                        help="outputs: logits + probabilities (classifier) or the model output as is (raw)")
    parser.add_argument("--verify", action="store_true",
                        help="run the artifact and Keras on the same inputs and print the differences")
    parser.add_argument("--data-dir", default=None,
                        help=f"verify on the model's test split found here (default ${DATA_DIR_VARIABLE}; "
                             "without one, generated inputs)")
    parser.add_argument("--preset", default=None,
                        help="whose test split --verify uses for a .keras file outside a run folder")
    parser.add_argument("--num", type=int, default=1000, help="inputs for --verify (default 1000)")


def run(args, command):
    return _export(args)


def _export(args):
    """Check every argument and the output target, then load, export and (--verify) compare the model."""
    fmt = args.format or ("onnx" if args.output.lower().endswith(".onnx") else "saved_model")
    opset = _opset(args.opset, fmt)
    checked(positive_int, args.num, "--num")
    data_dir, preset = _test_split_source(args)
    target = prepare_target(args.output, "file" if fmt == "onnx" else "dir")
    model = float32_model(load_model(args.model))
    if fmt == "onnx":
        from kernelzoo.export.onnx_export import to_onnx
        path = to_onnx(model, target, opset=opset, input_dtype=args.input_dtype, head=args.head)
    else:
        from kernelzoo.export.saved_model import to_saved_model
        path = to_saved_model(model, target, input_dtype=args.input_dtype, head=args.head)
    spec = serving_spec(model, input_dtype=args.input_dtype, head=args.head)
    extra = f", opset {opset}" if fmt == "onnx" else ", signature serving_default"
    print(f"wrote {path} ({fmt}{extra}): input {spec.input_name} {spec.input_dtype} {shape_text(spec.input_shape)} "
          f"-> {', '.join(spec.output_names)}; {_size(path) / 1e6:.2f} MB")
    if not args.verify:
        return 0
    from kernelzoo.export.verify import format_report, verify_artifact
    report = verify_artifact(model, path, data_dir=data_dir, preset=preset, num=args.num,
                             input_dtype=args.input_dtype, head=args.head, verbose=True)
    print(format_report(report, artifact=fmt))
    return 0 if report["ok_float32"] else 1


def _opset(opset, fmt):
    """--opset checked (DEFAULT_OPSET when not given) for ONNX; None for a SavedModel, which has none."""
    if fmt != "onnx":
        if opset is not None:
            raise ExportError(f"--opset: only --format onnx has an ONNX opset, not --format {fmt}")
        return None
    return check_opset(DEFAULT_OPSET if opset is None else opset)


def _test_split_source(args):
    """(data directory, Preset) whose test split --verify compares on, or (None, None) for generated inputs.

    A --data-dir without a known test split is an error; $KERNELZOO_DATA_DIR alone then means generated
    inputs (said on stderr): the user did not ask for that directory here."""
    explicit = args.data_dir is not None
    data_dir = (args.data_dir if explicit else os.environ.get(DATA_DIR_VARIABLE)) or None
    if args.preset is not None and not (args.verify and data_dir):
        raise ExportError(f"--preset: names the test split that --verify reads from --data-dir "
                          f"(or ${DATA_DIR_VARIABLE}); give both, or leave it out")
    if not args.verify or data_dir is None:
        return None, None
    preset = _preset(args)
    has_test_split = preset is not None and preset.task == "classification"
    if (explicit or has_test_split) and not os.path.isdir(data_dir):  # else the directory is not used
        option = "--data-dir" if explicit else f"${DATA_DIR_VARIABLE}"
        raise ExportError(f"{option}: {data_dir!r} is not a directory")
    if has_test_split:
        return data_dir, preset
    why = f"no test split is known for {args.model!r}" if preset is None else \
        f"the {preset.task} preset {preset.name!r} has no test images"
    if explicit:
        raise ExportError(f"--data-dir: {why} (give --preset NAME for a .keras file outside a run folder, or "
                          "leave out --data-dir to verify on generated inputs)")
    print(f"note: {why}: --verify uses generated inputs, not ${DATA_DIR_VARIABLE} ({data_dir})", file=sys.stderr)
    return None, None


def _preset(args):
    """The Preset of --preset (ExportError naming --preset when unknown), else the one the model argument has."""
    from kernelzoo import zoo

    if args.preset is None:
        return zoo.preset_of(args.model)
    return zoo.info(checked(check_choice, "--preset", args.preset, zoo.list_models()))


def load_model(name, pretrained_optional=False):
    """A Keras model from a .keras file or the zoo registry (`kernelzoo.zoo.load(name)`).

    `name` is a file when it ends in .keras or .h5, holds a path separator or names a file; otherwise a zoo
    name comes first (a run folder `runs/NAME` in the working directory does not hide zoo model NAME)."""
    from kernelzoo import zoo  # registers every family's layers for load_model

    separators = tuple(filter(None, (os.sep, os.altsep)))
    if name.lower().endswith(MODEL_FILE_SUFFIXES) or any(s in name for s in separators) or os.path.isfile(name):
        return _load_file(name)
    known = zoo.list_models()
    if name.lower() in known:  # as zoo.load and `kernelzoo info` take it
        name = name.lower()
    if name not in known:
        if os.path.isdir(name):
            return _load_file(name)  # says it is a directory
        raise ExportError(f"unknown zoo model {name!r}; known: {', '.join(known)}")
    if pretrained_optional and not zoo.info(name).pretrained:
        print(f"note: {name!r} has no pretrained weights; timing a freshly created one", file=sys.stderr)
        return zoo.create(name)
    try:
        return zoo.load(name, compile=False)
    except (OSError, ValueError) as error:  # a missing weight file, a SHA-256 mismatch (ChecksumError)
        raise ExportError(f"cannot load zoo model {name!r}: {error}") from None


def _load_file(name):
    from kernelzoo.zoo.registry import load_file

    if os.path.isdir(name):
        raise ExportError(f"{name!r} is a directory: give a .keras file (a run folder's model.keras) or a zoo name")
    if not os.path.isfile(name):
        raise ExportError(f"no model file at {name!r}")
    try:
        return load_file(name)
    except (ValueError, TypeError) as error:
        raise ExportError(f"cannot load {name!r} as a Keras model: {error}") from None


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
