"""`kernelzoo train NAME` and `kernelzoo eval NAME|FILE.keras` (hooks for kernelzoo/cli.py).

train: load the preset's dataset (--data-dir / $KERNELZOO_DATA_DIR, else tfds), build the
model with KEY=VALUE overrides, run the unsupervised initialisation (ZCA, GMM, k-means) on
unlabeled training images, train with the preset's recipe (paper defaults, each overridable),
evaluate on the test set. --tune-weight-decay first picks the weight decay on a held-out part
of the training set; --validate-only stops after such a held-out run (design choices).
--resume continues a killed run from its last completed epoch.
"""
import ast
import json
import os
import platform
import time

import numpy as np

COMMANDS = ("train", "eval")


def add_arguments(parser, command):
    if command == "train":
        parser.add_argument("name", help="a model name from `kernelzoo list` (e.g. simnet_cifar10_wl2_n400)")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="builder overrides, e.g. n=100 p=1 weighted=false")
        parser.add_argument("--data-dir", default=None, help="local dataset root (default $KERNELZOO_DATA_DIR; "
                                                             "nothing downloads when set)")
        parser.add_argument("--dataset", default=None, help="dataset name or path (default: the preset's)")
        parser.add_argument("--out", default=None, help="run folder (default runs/NAME)")
        parser.add_argument("--epochs", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--lr", type=float, default=None)
        parser.add_argument("--momentum", type=float, default=None)
        parser.add_argument("--lr-drop-every", type=int, default=None, help="epochs between lr / 10 steps "
                                                                            "(default: half the epochs)")
        parser.add_argument("--weight-decay", type=float, default=None,
                            help="weight decay on similarity weights and offsets (baselines: all kernels)")
        parser.add_argument("--tune-weight-decay", default=None, metavar="W1,W2,...",
                            help="choose the weight decay among these on --holdout training images first "
                                 "('preset' = the preset's grid)")
        parser.add_argument("--holdout", type=int, default=None, help="training images held out for tuning")
        parser.add_argument("--validate-only", action="store_true",
                            help="train on the training set minus --holdout images, report the held-out "
                                 "accuracy and stop (design choices; never touches the test set)")
        parser.add_argument("--init-images", type=int, default=5000,
                            help="unlabeled training images for the unsupervised initialisation")
        parser.add_argument("--no-init", action="store_true",
                            help="random templates, unit weights, zero offsets (paper Sec. 6.3 ablation); the "
                                 "preprocessing (whitening) is still fitted")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--resume", action="store_true", help="continue the run in --out")
        parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps (quick runs)")
        parser.add_argument("--limit-train", type=int, default=None, help="use only the first N training "
                                                                          "images of a random permutation")
        parser.add_argument("--no-tensorboard", action="store_true")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    elif command == "eval":
        parser.add_argument("model", help="a model name (pretrained weights) or a .keras file")
        parser.add_argument("--data-dir", default=None)
        parser.add_argument("--dataset", default=None, help="dataset (default: the preset's, else cifar10)")
        parser.add_argument("--batch-size", type=int, default=256)
        parser.add_argument("--json", default=None, help="also write the metrics to this file")
    else:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")


def run(args, command):
    if command == "train":
        return _train(args)
    if command == "eval":
        return _eval(args)
    raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")


def entry(name):
    """The registry entry of `name` (falls back to this folder's presets if it is not registered)."""
    try:
        from kernelzoo.zoo import registry
        return registry.info(name)
    except (ImportError, ValueError):
        from kernelzoo.zoo.simnet.presets import PRESETS
        if name not in PRESETS:
            raise ValueError(f"name must be a registered model or one of {sorted(PRESETS)}, got {name!r}") from None
        return dict(PRESETS[name], folder=os.path.dirname(__file__))


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


def build(entry_dict, overrides, input_shape=None, num_classes=None):
    """The preset's model with its config, the dataset's shape and `overrides`."""
    import importlib
    module, _, attr = entry_dict["builder"].rpartition(".")
    builder = getattr(importlib.import_module(module), attr)
    config = dict(entry_dict["config"])
    if input_shape is not None:
        config["input_shape"] = tuple(input_shape)
    if num_classes is not None:
        config["num_classes"] = int(num_classes)
    config.update(overrides)
    try:
        return builder(**config)
    except TypeError as error:
        raise ValueError(f"overrides: {error}") from None


def _recipe(entry_dict, args):
    recipe = dict(entry_dict.get("recipe") or {})
    defaults = {"epochs": 100, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "lr_drop_every": None,
                "weight_decay": 0.0, "holdout": 5000, "unsupervised_init": True}
    recipe = {**defaults, **recipe}
    for key in ("epochs", "batch_size", "lr", "momentum", "lr_drop_every", "weight_decay", "holdout"):
        value = getattr(args, key)
        if value is not None:
            recipe[key] = value
    if recipe["lr_drop_every"] is not None and args.epochs is not None and args.lr_drop_every is None:
        recipe["lr_drop_every"] = max(1, args.epochs // 2)  # "after half the epochs" of a shortened run
    return recipe


def _initialise(model, x, args, verbose):
    from kernelzoo.zoo.init import unsupervised_init
    rng = np.random.default_rng(args.seed)
    count = min(len(x), args.init_images)
    sample = x[np.sort(rng.choice(len(x), count, replace=False))]
    started = time.time()
    reports = unsupervised_init(model, sample, seed=args.seed, similarity=not args.no_init, verbose=verbose)
    if verbose:
        print(f"unsupervised initialisation on {count} images: {sorted(reports)} ({time.time() - started:.0f} s)",
              flush=True)
    return {name: (value if isinstance(value, str) else
                   {"log_likelihood": value["mixture"].log_likelihood}) for name, value in reports.items()}


def _fit_one(entry_dict, overrides, recipe, weight_decay, train, val, test, out, args, verbose, num_classes):
    from kernelzoo import ops
    from kernelzoo.zoo import training

    state = training.read_state(out)
    model, init_report = None, None
    if state is None or not args.resume:
        model = build(entry_dict, dict(overrides, weight_decay=weight_decay), train[0].shape[1:], num_classes)
        if recipe.get("unsupervised_init", True):
            init_report = _initialise(model, train[0], args, verbose)
    os.makedirs(out, exist_ok=True)
    if model is not None:
        with open(os.path.join(out, "run.json"), "w", encoding="utf-8") as handle:
            json.dump({"name": args.name, "overrides": overrides, "recipe": recipe, "weight_decay": weight_decay,
                       "train_examples": len(train[0]), "validation_examples": 0 if val is None else len(val[0]),
                       "seed": args.seed, "init": init_report, "implementation": ops.selected_implementation(),
                       "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, handle, indent=1)
    return training.train(model, train, out_dir=out, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                          lr=recipe["lr"], momentum=recipe["momentum"], lr_drop_every=recipe["lr_drop_every"],
                          val_data=val, test_data=test, seed=args.seed, resume=args.resume,
                          verbose=verbose, tensorboard=not args.no_tensorboard,
                          max_steps_per_epoch=args.max_steps_per_epoch, metadata={"name": args.name})


def _train(args):
    from kernelzoo.zoo.data.images import holdout_split, load_images

    entry_dict = entry(args.name)
    overrides = parse_overrides(args.overrides)
    recipe = _recipe(entry_dict, args)
    verbose = 0 if args.quiet else 1
    out = args.out or os.path.join("runs", args.name)
    data = load_images(args.dataset or entry_dict.get("dataset", "cifar10"), args.data_dir)
    x, y = data.train
    if args.limit_train is not None:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(x))[:args.limit_train])
        x, y = x[keep], y[keep]
    print(f"{args.name}: {data}, recipe {recipe}", flush=True)
    weight_decay = recipe["weight_decay"]
    num_classes = int(max(y.max(), data.test[1].max())) + 1
    if args.validate_only or args.tune_weight_decay:
        (x_fit, y_fit), (x_val, y_val) = holdout_split(x, y, int(recipe["holdout"]), seed=args.seed)
    if args.validate_only:
        result = _fit_one(entry_dict, overrides, recipe, weight_decay, (x_fit, y_fit), (x_val, y_val), None,
                          out, args, verbose, num_classes)
        print(f"{args.name} {overrides}: held-out accuracy "
              f"{result['history'][-1].get('val_accuracy', float('nan')):.4f} on {len(x_val)} training images",
              flush=True)
        return 0
    if args.tune_weight_decay:
        grid = (recipe.get("weight_decay_grid") or [0.0] if args.tune_weight_decay == "preset"
                else [float(v) for v in args.tune_weight_decay.split(",")])
        scores = {}
        for value in grid:
            result = _fit_one(entry_dict, overrides, recipe, value, (x_fit, y_fit), (x_val, y_val), None,
                              os.path.join(out, "tune", f"wd={value:g}"), args, verbose, num_classes)
            scores[value] = result["history"][-1].get("val_accuracy", float("nan"))
            print(f"weight decay {value:g}: held-out accuracy {scores[value]:.4f}", flush=True)
        weight_decay = max(scores, key=lambda v: scores[v])
        with open(os.path.join(out, "tuning.json"), "w", encoding="utf-8") as handle:
            json.dump({"holdout": int(recipe["holdout"]), "scores": {f"{k:g}": v for k, v in scores.items()},
                       "chosen": weight_decay}, handle, indent=1)
        print(f"chosen weight decay: {weight_decay:g}", flush=True)
    result = _fit_one(entry_dict, overrides, recipe, weight_decay, (x, y), None, data.test, out, args, verbose,
                      num_classes)
    test = result.get("test", {})
    print(f"{args.name}: test accuracy {test.get('accuracy', float('nan')):.4f} "
          f"(loss {test.get('loss', float('nan')):.4f}); model {result['model_path']}; "
          f"curves {result.get('curves')}", flush=True)
    return 0


def _eval(args):
    import keras

    import kernelzoo  # noqa: F401  (registers the layers)
    from kernelzoo.zoo import training
    from kernelzoo.zoo.data.images import load_images

    if args.model.endswith(".keras"):
        if not os.path.isfile(args.model):
            raise ValueError(f"model: no such file {args.model!r}")
        model = keras.models.load_model(args.model)
        if getattr(model, "optimizer", None) is None:
            training.compile_model(model)
        dataset = args.dataset or "cifar10"
    else:
        from kernelzoo.zoo import registry
        entry_dict = entry(args.model)
        model = registry.load(args.model)
        dataset = args.dataset or entry_dict.get("dataset", "cifar10")
    data = load_images(dataset, args.data_dir)
    metrics = training.evaluate(model, data.test, batch_size=args.batch_size, verbose=1)
    metrics.update(model=args.model, dataset=data.source)
    print(json.dumps(metrics, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=1)
    return 0
