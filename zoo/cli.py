"""`kernelzoo train | protocol | eval | list | info` for every family (hooks for kernelzoo/cli.py).

Each command dispatches on the preset's family: the family recipe loads the data, trains and
measures (kernelzoo.zoo.recipe). `train` takes a zoo NAME or FAMILY:BUILDER (a builder of the
family with its own defaults, trained and measured like the family's first preset that uses it).
`protocol` trains the same way over several splits / seeds (and a grid of settings) and reports
mean +- std (kernelzoo.zoo.protocol).
"""
import argparse
import ast
import dataclasses
import os
from fractions import Fraction

from kernelzoo.ops.checks import check_choice
from kernelzoo.zoo import registry
from kernelzoo.zoo.recipe import Recipe, dataset_name, run_settings

COMMANDS = ("train", "protocol", "eval", "list", "info")


def add_arguments(parser, command):
    command = check_choice("command", command, COMMANDS)
    if command == "train":
        _train_arguments(parser)
    elif command == "protocol":
        _protocol_arguments(parser)
    elif command == "eval":
        parser.add_argument("models", nargs="+", metavar="NAME|FILE.keras",
                            help="zoo names (shipped weights) or .keras files (a run folder's: its preset and "
                                 "split come from its config.json); several: also their mean +- std")
        parser.add_argument("--data-dir", default=None, help="local dataset root (default $KERNELZOO_DATA_DIR)")
        parser.add_argument("--preset", default=None,
                            help="the protocol of a .keras file outside a run folder (a zoo name has its own)")
        parser.add_argument("--dataset", default=None,
                            help="measure image-classification accuracy on this dataset (a name, tfds:NAME or a path) "
                                 "instead")
        parser.add_argument("--holdout", type=int, default=None, metavar="N",
                            help="measure on the N training images that `kernelzoo train --holdout N --seed S` "
                                 "holds out instead of the test split")
        parser.add_argument("--seed", type=int, default=None,
                            help="the run's --seed: it draws the held-out images and random splits (default: the "
                                 "seed in a run folder's config.json, else 0)")
        parser.add_argument("--json", default=None, help="also write the results to this file")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    elif command == "list":
        parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'kernelnet_*'")
        parser.add_argument("--pretrained", action="store_true", help="only models with shipped weights")
    else:  # info
        parser.add_argument("name", help="a model name from `kernelzoo list`")
        parser.add_argument("--cost", type=_density, default=None, metavar="DENSITY",
                            help="print parameters and expected MACs (kernelNet Table 4) of the shipped weights for "
                                 "this input density (e.g. 10/943: ten rated users) instead of the card")


def _density(text):
    """--cost DENSITY: a number or a fraction (10/943) in [0, 1]; argparse names the flag when it is not."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        value = None
    if value is None or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number or a fraction in [0, 1] (e.g. 10/943), got {text!r}")
    return float(value)


def run(args, command):
    command = check_choice("command", command, COMMANDS)
    return {"train": _train, "protocol": _protocol, "eval": _eval, "list": _list, "info": _info}[command](args)


# ----------------------------------------------------------------------------- train


class _Once:
    """Adds each family option to one argument group once (families share some options)."""

    def __init__(self, group, taken):
        self.group, self.taken = group, taken

    def add_argument(self, *flags, **kwargs):
        if not self.taken.intersection(flags):
            self.taken.update(flags)
            self.group.add_argument(*flags, **kwargs)


def _recipes():
    """(family, recipe) for every distinct recipe class of the registered families."""
    found = {}
    for family in registry.FAMILIES:
        for preset in registry.family_presets(family):
            recipe = registry.recipe(preset)
            found.setdefault(type(recipe), (family, recipe))
    return list(found.values())


def _train_arguments(parser):
    common = _Once(parser, set())
    common.add_argument("target", metavar="NAME|FAMILY:BUILDER",
                        help="a model name from `kernelzoo list`, or e.g. simnet:convnet_baseline")
    common.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="builder arguments, e.g. n=100 p=1 weighted=false")
    common.add_argument("--data-dir", default=None,
                        help="local dataset root (default $KERNELZOO_DATA_DIR; nothing downloads when set)")
    common.add_argument("--dataset", default=None, help="dataset name or path (default: the preset's)")
    common.add_argument("--out", default=None, help="run folder (default runs/NAME, runs/FAMILY_BUILDER)")
    common.add_argument("--epochs", type=int, default=None)
    common.add_argument("--batch-size", type=int, default=None, help="global batch size (over all replicas)")
    common.add_argument("--lr", type=float, default=None)
    common.add_argument("--strategy", default="none", choices=("none", "mirrored", "multiworker"),
                        help="tf.distribute: MirroredStrategy over the local devices, or "
                             "MultiWorkerMirroredStrategy (TF_CONFIG); see docs/training.md")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--resume", action="store_true", help="continue the run in --out")
    common.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps (quick runs)")
    common.add_argument("--no-tensorboard", action="store_true")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    Recipe().add_arguments(common)  # the options every image recipe shares
    defaults = {}
    for family, recipe in _recipes():
        group = parser.add_argument_group(f"{family} options ({type(recipe).__name__})")
        recipe.add_arguments(_Once(group, common.taken))
        defaults.update(vars(recipe.options()))
    parser.set_defaults(family_option_defaults=defaults)


def parse_overrides(items):
    """["n=100", "weighted=false"] -> {"n": 100, "weighted": False}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"overrides must look like KEY=VALUE, got {item!r}")
        lowered = value.lower()
        if lowered in ("true", "false"):
            out[key] = lowered == "true"
        elif lowered in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
    return out


def training_target(target):
    """The Preset to train: a zoo name, or FAMILY:BUILDER (the builder's defaults, the protocol of the
    family's first preset that uses that builder)."""
    family, sep, builder = target.partition(":")
    if not sep:
        return registry.info(target)
    matches = [p for p in registry.family_presets(family) if p.builder.rpartition(".")[2] == builder]
    if not matches:
        builders = sorted({p.builder.rpartition(".")[2] for p in registry.family_presets(family)})
        raise ValueError(f"target: family {family!r} has no builder {builder!r} (builders: {builders})")
    return dataclasses.replace(matches[0], config={}, weights=None, sha256=None, measured=None)


def default_run_folder(target, prefix=""):
    """runs/NAME for a zoo name, runs/FAMILY_BUILDER for FAMILY:BUILDER (not the folder of the preset whose
    protocol it borrows)."""
    return os.path.join("runs", prefix + target.replace(":", "_"))


def _family_options(args, recipe):
    """The recipe's options from the parsed arguments; other families' options must keep their defaults."""
    own = vars(recipe.options())
    for dest, default in args.family_option_defaults.items():
        if dest not in own and getattr(args, dest) != default:
            raise ValueError(f"--{dest.replace('_', '-')} is not an option of {type(recipe).__name__}")
    return recipe.options(**{dest: getattr(args, dest) for dest in own})


def _hyperparameters(args, preset, recipe, **changes):
    """The preset's recipe hyper-parameters with the command line's (--epochs, --lr, ...) and `changes`."""
    keys = set(recipe.hyperparameters(preset))
    given = {key: value for key, value in vars(args).items() if key in keys}
    return recipe.hyperparameters(preset, **{**given, **changes})


def check_builder_arguments(preset, names, what, also=()):
    """ValueError naming the `names` (of `what`: overrides, --grid) that the preset's builder does not take (nor
    `also`, the recipe's hyper-parameters for --grid): a typo caught before the data loads."""
    accepted = registry.builder_arguments(preset)
    unknown = set(names) - accepted - set(also)
    if unknown:
        raise ValueError(f"{what}: {sorted(unknown)} are not arguments of {preset.builder} (it takes "
                         f"{sorted(accepted)})" + (f" nor recipe hyper-parameters ({sorted(also)})" if also else ""))


def _train_one(args, preset, recipe, options, hp, overrides, out, seed, resume, strategy=None):
    """Load the data of `options` (split) and `seed`, train into `out`; returns the recipe's result."""
    verbose = 0 if args.quiet else 1
    data = recipe.load_data(preset, args.data_dir, args.dataset, options, seed=seed, verbose=verbose)
    print(f"{args.target}: {data.source}; hyper-parameters {hp}", flush=True)
    return recipe.train(preset, data, out, overrides=overrides, hp=hp, options=options, seed=seed, resume=resume,
                        verbose=verbose, tensorboard=not args.no_tensorboard,
                        max_steps_per_epoch=args.max_steps_per_epoch, strategy=strategy)


def _train(args):
    from kernelzoo.zoo import training

    # Before anything runs a TensorFlow op: MultiWorkerMirroredStrategy configures the collective ops,
    # which TensorFlow allows only at startup (a data loader may already run ops).
    strategy = training.make_strategy(args.strategy)
    preset = training_target(args.target)
    recipe = registry.recipe(preset)
    options = _family_options(args, recipe)
    hp = _hyperparameters(args, preset, recipe)
    overrides = parse_overrides(args.overrides)
    check_builder_arguments(preset, overrides, "overrides")
    out = args.out or default_run_folder(args.target)
    result = _train_one(args, preset, recipe, options, hp, overrides, out, args.seed, args.resume, strategy)
    figures = ", ".join(f"{key} {value:.4f}" for key, value in result.get("metrics", {}).items()
                        if isinstance(value, float))
    print(f"{args.target}: {figures or 'no test figure'}; model {result['model_path']}; "
          f"curves {result.get('curves')}", flush=True)
    return 0


# ----------------------------------------------------------------------------- protocol


def _protocol_arguments(parser):
    """`kernelzoo train`'s arguments (--seed, --resume and --strategy aside) and the protocol's."""
    _train_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                        help="the family's --split values to run (MovieLens: u1 ... u5, or random with --seeds)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="S",
                        help="seeds of each split (random splits: the seed draws the split); default --seed")
    parser.add_argument("--grid", nargs="+", default=(), metavar="KEY=VALUE",
                        help="settings to compare: builder arguments or hyper-parameters; a key given twice has "
                             "two values; the product over the keys runs (e.g. lambda_2=10 lambda_2=20 dim=10)")
    parser.set_defaults(seed=None)  # --seed S is --seeds S; given with --seeds it is refused


def _protocol(args):
    from kernelzoo.zoo import protocol

    if args.strategy != "none" or args.resume:
        raise ValueError("protocol: --strategy and --resume are not options of a protocol (it always resumes)")
    if args.splits and getattr(args, "split", None) is not None:
        raise ValueError("protocol: give the splits with --splits, not --split")
    if args.seeds and args.seed is not None:
        raise ValueError("protocol: give the seeds with --seeds, not --seed")
    preset = training_target(args.target)
    recipe = registry.recipe(preset)
    options = _family_options(args, recipe)
    if args.splits and not hasattr(options, "split"):
        raise ValueError(f"--splits: {type(recipe).__name__} has no --split option (use --seeds)")
    overrides = parse_overrides(args.overrides)
    hp_keys = set(recipe.hyperparameters(preset))
    configs = protocol.grid_configs(args.grid)
    check_builder_arguments(preset, overrides, "overrides")
    check_builder_arguments(preset, {key for config in configs for key in config}, "--grid", hp_keys)
    out = args.out or default_run_folder(args.target, "protocol_")
    validate_only = bool(getattr(options, "validate_only", False))

    def arguments(config, split):
        """(options, hyper-parameters, builder overrides) of a grid configuration's run on `split`."""
        changes = {key: value for key, value in config.items() if key in hp_keys}
        builder = {key: value for key, value in config.items() if key not in hp_keys}
        run_options = options if split is None else recipe.options(**dict(vars(options), split=split))
        return run_options, _hyperparameters(args, preset, recipe, **changes), {**overrides, **builder}

    def train_one(config, split, seed, run_dir, resume):
        return _train_one(args, preset, recipe, *arguments(config, split), run_dir, seed, resume)

    def planned(config, split, seed):
        run_options, hp, run_overrides = arguments(config, split)
        return run_settings(preset, run_overrides, hp, run_options, seed, dataset_name(preset, args.dataset))

    seeds = args.seeds or [args.seed or 0]
    result = protocol.run_protocol(train_one, out, configs, protocol.settings(args.splits, seeds), preset.metric,
                                   validate_only=validate_only, planned=planned)
    print(protocol.format_table(result))
    print(f"runs and summary: {os.path.join(out, protocol.PROTOCOL_FILE)}", flush=True)
    return 0


# ----------------------------------------------------------------------------- eval


def _eval(args):
    from kernelzoo.zoo.evaluation import measure

    results = []
    for model in args.models:
        result = measure(model, args.data_dir, preset=args.preset, dataset=args.dataset, holdout=args.holdout,
                         seed=args.seed, verbose=0 if args.quiet else 1)
        result["model"] = model
        print(format_result(result), flush=True)
        results.append(result)
        _write_eval_json(args, results, None)  # after every model: what is measured survives a later failure
    values = [r["value"] for r in results if r["value"] is not None]
    summary = None
    if len(values) > 1 and len({(r["preset"], r["metric"]) for r in results}) == 1:
        from kernelzoo.zoo.protocol import mean_std
        summary = mean_std(values)
        print(f"{results[0]['metric']}: mean {summary['mean']:.4f} +- {summary['std']:.4f} "
              f"(sample std, n={summary['n']})")
        _write_eval_json(args, results, summary)
    return 0


def _write_eval_json(args, results, summary):
    """--json, atomically: one model's result, or for several {"runs": [...], "summary": mean +- std or None}."""
    if not args.json:
        return
    from kernelzoo.zoo import training
    plain = [{k: _plain(v) for k, v in r.items()} for r in results]
    training.write_json(args.json, plain[0] if len(args.models) == 1 else {"runs": plain, "summary": summary})


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def format_result(result):
    """One line: the measured figure beside the card's (or why not: other weights) and the paper's."""
    metric = result["metric"]
    data = f"[{result['data']}, {result['examples']:,} examples]"
    from kernelzoo.zoo.preset import Figure
    parts = [f"{result['model']}: {metric} measured {Figure(result['value']).format(metric)}"]
    if result["card"] is not None:
        parts.append(f"card {result['card'].format(metric)}")
    elif result["preset"] is not None and not result.get("shipped", True):
        parts.append("no card figure: not the shipped weights")
    if result["paper"] is not None:
        parts.append(f"paper {result['paper'].format(metric)} ({result['paper'].where})")
    return " | ".join(parts) + f" {data}"


# ----------------------------------------------------------------------------- list, info


def _list(args):
    names = registry.list_models(args.pattern, pretrained=True if args.pretrained else None)
    width = max(map(len, names), default=0)
    for name in names:
        preset = registry.info(name)
        figure = preset.measured.format(preset.metric) if preset.measured else "-"
        print(f"{name:{width}s} {preset.family:10s} {figure:>9s}  {preset.description}")
    return 0


def _info(args):
    preset = registry.info(args.name)
    if args.cost is not None:
        from kernelzoo.layers.cost import cost_report
        model = registry.load(args.name, compile=False)
        try:
            report = cost_report(model, args.cost)
        except ValueError as error:  # layers it cannot count
            raise ValueError(f"--cost: {error}") from None
        print(f"{args.name} params {report['params']} macs {report['macs']:.0f}")
        return 0
    print(f"{preset.name} ({preset.family} family): {preset.description}")
    print(f"input: {preset.inputs.dtype} {preset.inputs.shape} ({preset.inputs.note})")
    print(f"task: {preset.task}; dataset: {preset.dataset.name}, split {preset.dataset.split} "
          f"(local copy: {preset.dataset.local})")
    if preset.pretrained:
        print(f"weights: {preset.weights} (sha256 {preset.sha256})")
    for label, figure in (("measured", preset.measured), ("paper", preset.paper)):
        if figure is not None:
            print(f"{label}: {figure.format(preset.metric)} ({figure.where})")
    print()
    print(registry.card(args.name))
    return 0
