"""`kernelzoo list [PATTERN]` and `kernelzoo info NAME` (hooks for kernelzoo/cli.py)."""
from kernelzoo.zoo import registry


def add_arguments(parser, command):
    if command == "list":
        parser.add_argument("pattern", nargs="?", default=None,
                            help="shell-style filter, e.g. 'kernelnet_*'")
    elif command == "info":
        parser.add_argument("name", help="a model name from `kernelzoo list`")
    else:
        raise ValueError(f"command must be 'list' or 'info', got {command!r}")


def run(args, command):
    if command == "list":
        for name in registry.list_models(args.pattern):
            print(f"{name:34s} {registry.info(name)['description']}")
        return 0
    if command == "info":
        entry = registry.info(args.name)
        print(f"{args.name}: {entry['description']}")
        print(f"input: {entry['inputs']}")
        if entry.get("weights"):
            print(f"weights: {entry['weights']} (sha256 {entry['sha256']})")
        if entry.get("card"):
            print()
            print(registry.card(args.name))
        return 0
    raise ValueError(f"command must be 'list' or 'info', got {command!r}")
