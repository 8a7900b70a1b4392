"""The `kernelzoo` command line.

Each subcommand is a thin shim: it parses arguments and calls a function of the
subpackage that owns the work, imported lazily so `kernelzoo --help` is fast. A ValueError
out of a subcommand (a bad argument, data or model) is printed as one line, exit status 2
(with -v/--verbose: its traceback).
Quiet by default: TensorFlow's C++ log lines are off unless -v/--verbose is given or
TF_CPP_MIN_LOG_LEVEL is set.
"""
import argparse
import contextlib
import importlib
import importlib.util
import os
import sys

# subcommand -> (module, help). The module provides `add_arguments(parser, command)`
# and `run(args, command)`.
SUBCOMMANDS = {
    "build-ops": ("kernelzoo.ops.library", "build or rebuild the custom op library"),
    "bench": (None, "benchmarks: `kernelzoo bench ops`, `kernelzoo bench deploy NAME`, `kernelzoo bench sc`, "
                    "`kernelzoo bench ckn`, `kernelzoo bench simnet` or `kernelzoo bench layerwise NAME`"),
    "demo": ("kernelzoo.zoo.demo", "offline demo on embedded data"),
    "train": ("kernelzoo.zoo.cli", "train a zoo model: kernelzoo train NAME|FAMILY:BUILDER [KEY=VALUE ...]"),
    "protocol": ("kernelzoo.zoo.cli", "train a zoo model over a protocol's splits / seeds (and a grid of settings): "
                                      "mean +- std table and JSON, resumable"),
    "eval": ("kernelzoo.zoo.cli", "re-measure a zoo model's card figure (or a .keras file's) on its test split"),
    "finetune": ("kernelzoo.zoo.finetune_cli", "fine-tune a pretrained zoo model on a new image dataset "
                                               "(-o OUT.keras)"),
    "probe": ("kernelzoo.zoo.sc.probe", "what an SC network's layer holds: linear probe and SC-task accuracy on "
                                        "held-out training images, beside the pixels' colour statistics"),
    "ship": ("kernelzoo.zoo.shipping", "write a trained model as a zoo model's shipped weights (deflated, "
                                       "checked, within the weight budget) and print its SHA-256"),
    "export": ("kernelzoo.export.cli", "export a model to ONNX or a SavedModel (--verify checks parity)"),
    "list": ("kernelzoo.zoo.cli", "list the zoo's models (--pretrained: those with weights)"),
    "info": ("kernelzoo.zoo.cli", "show a zoo model's card"),
    "viz": (None, "figures: `kernelzoo viz embedding NAME`, `kernelzoo viz dimensionality` (kernelNet Fig. 5/6, "
                  "Fig. 3), `kernelzoo viz simnet-size RUN_DIR ...` (SimNets Fig. 4/5) or `kernelzoo viz runs "
                  "RUN_DIR ...` (a held-out sweep's curves, smoothed) or `kernelzoo viz layerwise-samples` (paper 003 "
                  "Fig. 2)"),
}


# `kernelzoo bench WHAT ...` / `kernelzoo viz WHAT ...` -> the module that does WHAT (it parses WHAT itself).
WHATS = {
    "bench": {"ops": "kernelzoo.ops.bench", "deploy": "kernelzoo.export.bench", "sc": "kernelzoo.zoo.sc.bench",
              "ckn": "kernelzoo.zoo.ckn.bench", "simnet": "kernelzoo.zoo.simnet.bench_train",
              "layerwise": "kernelzoo.zoo.layerwise.bench"},
    "viz": {"embedding": "kernelzoo.zoo.kernelnet.viz", "dimensionality": "kernelzoo.zoo.kernelnet.viz",
            "simnet-size": "kernelzoo.zoo.simnet.figures", "runs": "kernelzoo.zoo.sweep",
            "layerwise-samples": "kernelzoo.zoo.layerwise.viz"},
}
VERBOSE_FLAGS = ("-v", "--verbose")


def quiet_tensorflow(verbose=False):
    """Silence TensorFlow's C++ logging before TensorFlow is imported, unless `verbose` or the
    user set TF_CPP_MIN_LOG_LEVEL.

    TF_CPP_MIN_LOG_LEVEL=3 drops the later C++ messages (cuInit errors on a machine without a
    GPU, say); the lines its libraries print while they load (oneDNN, cuda drivers, CPU
    features, the absl pre-init notice) ignore it, so TensorFlow is imported here with the
    process's stderr pointed at /dev/null. Its Python errors still raise.
    """
    if verbose or "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if importlib.util.find_spec("tensorflow") is None:
        return
    with _stderr_to_devnull():
        importlib.import_module("tensorflow")


@contextlib.contextmanager
def _stderr_to_devnull():
    """File descriptor 2 (what C++ code writes to) goes to /dev/null inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def build_parser():
    parser = argparse.ArgumentParser(prog="kernelzoo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep TensorFlow's log lines and show an error's traceback (anywhere on the command "
                             "line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(arg in VERBOSE_FLAGS for arg in argv)
    argv = [arg for arg in argv if arg not in VERBOSE_FLAGS]
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)
        if args.version:
            from kernelzoo._version import __version__
            print(__version__)
            return 0
        parser.print_help()
        return 0 if not argv else 2
    command, rest = argv[0], argv[1:]
    module_name = SUBCOMMANDS[command][0]
    if command in WHATS:
        if not rest or rest[0] not in WHATS[command]:
            print(f"usage: kernelzoo {command} {{{','.join(WHATS[command])}}} ...", file=sys.stderr)
            return 2
        module_name = WHATS[command][rest[0]]
    quiet_tensorflow(verbose)
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"kernelzoo {command}")
    module.add_arguments(sub_parser, command)
    args = sub_parser.parse_args(rest)
    try:
        return module.run(args, command) or 0
    except BrokenPipeError:  # the reader is gone (`kernelzoo list | head -3`): stop quietly, as `ls | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 1
    except ValueError as error:  # bad arguments, data or model (ExportError too): one line, not a traceback
        if verbose:
            raise
        what = f" {rest[0]}" if command in WHATS else ""
        print(f"kernelzoo {command}{what}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
