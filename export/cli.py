"""CLI hooks: `kernelzoo export NAME|FILE.keras --format onnx|saved_model -o OUT [--opset N] [--verify]`
(the dispatcher in kernelzoo/cli.py calls add_arguments/run; `kernelzoo bench deploy` is export/bench.py's).
"""
import os
import sys

from kernelzoo.export._common import ExportError, checked
from kernelzoo.ops.checks import positive_int

FORMATS = ("onnx", "saved_model")


def add_arguments(parser, command):
    parser.description = "Export a zoo model or a .keras file to ONNX or a SavedModel (docs/export.md)."
    parser.add_argument("model", metavar="NAME|FILE.keras", help="zoo model name or a saved .keras file")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="artifact format (default: onnx when OUT ends in .onnx, else saved_model)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the .onnx file or SavedModel directory")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 13-18 (default 17)")
    parser.add_argument("--input-dtype", choices=("auto", "uint8", "float32"), default="auto",
                        help="signature input dtype (default: uint8 when the model starts with preprocessing)")
    parser.add_argument("--head", choices=("auto", "classifier", "raw"), default="auto",
                        help="outputs: logits + probabilities (classifier) or the model output as is (raw)")
    parser.add_argument("--verify", action="store_true",
                        help="run the artifact and Keras on the same inputs and print the differences")
    parser.add_argument("--data-dir", default=os.environ.get("KERNELZOO_DATA_DIR"),
                        help="verify on the model's test split found here (default $KERNELZOO_DATA_DIR; "
                             "without one, generated inputs)")
    parser.add_argument("--preset", default=None,
                        help="whose test split --verify uses for a .keras file outside a run folder")
    parser.add_argument("--num", type=int, default=1000, help="inputs for --verify (default 1000)")


def run(args, command):
    return _export(args)


def _export(args):
    fmt = args.format or ("onnx" if args.output.lower().endswith(".onnx") else "saved_model")
    checked(positive_int, args.num, "--num")
    if args.preset is not None and not (args.verify and args.data_dir):
        raise ExportError("--preset: names the test split that --verify reads from --data-dir "
                          "(or $KERNELZOO_DATA_DIR); give both, or leave it out")
    if fmt == "onnx":
        from kernelzoo.export.onnx_export import check_opset
        check_opset(args.opset)  # before loading the model
    model = load_model(args.model)
    if fmt == "onnx":
        from kernelzoo.export.onnx_export import to_onnx
        path = to_onnx(model, args.output, opset=args.opset, input_dtype=args.input_dtype, head=args.head)
    else:
        from kernelzoo.export.saved_model import to_saved_model
        path = to_saved_model(model, args.output, input_dtype=args.input_dtype, head=args.head)
    from kernelzoo.export._common import serving_spec
    spec = serving_spec(model, input_dtype=args.input_dtype, head=args.head)
    shape = ", ".join("N" if d is None else str(d) for d in spec.input_shape)
    extra = f", opset {args.opset}" if fmt == "onnx" else ", signature serving_default"
    print(f"wrote {path} ({fmt}{extra}): input {spec.input_name} {spec.input_dtype} ({shape}) -> "
          f"{', '.join(spec.output_names)}; {_size(path) / 1e6:.2f} MB")
    if not args.verify:
        return 0
    from kernelzoo.export.verify import format_report, verify_artifact
    from kernelzoo.zoo import preset_of
    report = verify_artifact(model, path, data_dir=args.data_dir, preset=args.preset or preset_of(args.model),
                             num=args.num, input_dtype=args.input_dtype, head=args.head, verbose=True)
    print(format_report(report, artifact=fmt))
    return 0 if report["ok_float32"] else 1


def load_model(name, pretrained_optional=False):
    """A Keras model from a .keras file or the zoo registry (`kernelzoo.zoo.load(name)`)."""
    import keras

    from kernelzoo import zoo  # registers every family's layers for load_model

    if name.lower().endswith(".keras") or os.path.sep in name or os.path.exists(name):
        if os.path.isdir(name):
            raise ExportError(f"{name!r} is a directory: give a .keras file (a run folder's model.keras) or a zoo name")
        if not os.path.isfile(name):
            raise ExportError(f"no model file at {name!r}")
        try:
            return keras.saving.load_model(name, compile=False)
        except (ValueError, TypeError, OSError) as error:
            raise ExportError(f"cannot load {name!r} as a Keras model: {error}") from None
    known = zoo.list_models()
    if name not in known:
        raise ExportError(f"unknown zoo model {name!r}; known: {', '.join(known)}")
    if pretrained_optional and not zoo.info(name).pretrained:
        print(f"note: {name!r} has no pretrained weights; timing a freshly created one", file=sys.stderr)
        return zoo.create(name)
    try:
        return zoo.load(name, compile=False)
    except (OSError, RuntimeError, ValueError) as error:
        raise ExportError(f"cannot load zoo model {name!r}: {error}") from None


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
