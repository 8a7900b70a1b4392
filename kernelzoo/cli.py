"""The `kernelzoo` command line.

Each subcommand is a thin shim: it parses arguments and calls a function of the
subpackage that owns the work, imported lazily so `kernelzoo --help` is fast.
"""
import argparse
import importlib
import sys

# subcommand -> (module, help). The module provides `add_arguments(parser, command)`
# and `run(args, command)`.
SUBCOMMANDS = {
    "build-ops": ("kernelzoo.ops.library", "build or rebuild the custom op library"),
    "bench": (None, "benchmarks: `kernelzoo bench ops` or `kernelzoo bench deploy NAME`"),
    "demo": ("kernelzoo.zoo.demo", "offline demo on embedded data"),
    "train": ("kernelzoo.zoo.simnet.cli", "train a zoo image model: kernelzoo train NAME [KEY=VALUE ...]"),
    "eval": ("kernelzoo.zoo.simnet.cli", "evaluate a zoo model or a .keras file on its test set"),
    "finetune": ("kernelzoo.zoo.finetune_cli", "fine-tune a pretrained zoo model on a new image dataset (-o OUT.keras)"),
    "export": ("kernelzoo.export.cli", "export a model to ONNX or a SavedModel (--verify checks parity)"),
    "list": ("kernelzoo.zoo.cli", "list the zoo's models"),
    "info": ("kernelzoo.zoo.cli", "show a zoo model's card"),
    "viz": ("kernelzoo.zoo.kernelnet.viz", "visualisations: `kernelzoo viz embedding NAME`"),
}


# `kernelzoo bench WHAT ...` -> the module that benchmarks WHAT (it parses WHAT itself).
BENCHMARKS = {"ops": "kernelzoo.ops.bench", "deploy": "kernelzoo.export.bench"}


def build_parser():
    parser = argparse.ArgumentParser(prog="kernelzoo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
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
    if command == "bench":
        if not rest or rest[0] not in BENCHMARKS:
            print(f"usage: kernelzoo bench {{{','.join(BENCHMARKS)}}} ...", file=sys.stderr)
            return 2
        module_name = BENCHMARKS[rest[0]]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"kernelzoo {command}")
    module.add_arguments(sub_parser, command)
    args = sub_parser.parse_args(rest)
    return module.run(args, command) or 0


if __name__ == "__main__":
    sys.exit(main())
