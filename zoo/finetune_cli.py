"""`kernelzoo finetune NAME|FILE.keras --dataset tfds:NAME|DIR -o OUT.keras` (hooks for kernelzoo/cli.py).

Loads the pretrained model and the dataset (a folder or archive of train/<class>/*, test/<class>/*
images, a local copy under --data-dir, or a TensorFlow Datasets name), holds out a validation
part of the training split, fine-tunes with `kernelzoo.zoo.finetune.finetune`, evaluates on the
validation and test splits, and writes OUT.keras and its card OUT.md (source model, dataset,
recipe, measured accuracies, the command) once every run has finished, each atomically.
--compare-scratch also trains the same architecture from scratch with the same budget and puts both
figures in the card. The numbers, --run-dir (a run there needs --resume; a resume's --epochs must keep the lr its
trained epochs had) and the model's head are checked before the dataset is decoded.
"""
import argparse
import json
import os
import shlex
import time

from kernelzoo.ops import checks


def add_arguments(parser, command="finetune"):
    parser.add_argument("model", help="a pretrained zoo model name (`kernelzoo list`) or a .keras file")
    parser.add_argument("--dataset", required=True,
                        help="tfds:NAME (TensorFlow Datasets, or NAME under --data-dir), or a folder / .tar.gz "
                             "of train/<class>/* and test/<class>/* images")
    parser.add_argument("-o", "--output", required=True, help="the fine-tuned model, OUT.keras (card: OUT.md)")
    parser.add_argument("--data-dir", default=None, help="local dataset root (default $KERNELZOO_DATA_DIR)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--freeze", default="features", choices=("features", "none"),
                        help="features: train the new head only (default); none: train every layer")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01,
                        help="initial learning rate (the zoo recipe's 0.01; a SimNet with --freeze features may "
                             "need more, see docs/finetune.md)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--spatial", default="pad_crop", choices=("pad_crop", "resize"),
                        help="match the image size by centred zero padding / cropping (default) or by resizing")
    parser.add_argument("--val-size", type=int, default=None,
                        help="training images held out for validation (default 10 %%, at most 5000)")
    parser.add_argument("--limit-train", type=int, default=None, help="use only N training images (seeded)")
    parser.add_argument("--limit-test", type=int, default=None, help="evaluate on N test images (seeded)")
    parser.add_argument("--compare-scratch", action="store_true",
                        help="also train the same architecture from scratch with the same budget")
    parser.add_argument("--run-dir", default=None, help="keep the training logs and checkpoints here")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs in --run-dir from their last checkpoints (same settings; --epochs "
                             "may grow while the trained epochs keep their lr)")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load(spec, data_dir=None, verbose=True):
    """An ImageDataset from 'tfds:NAME', a path, or a name under data_dir (`verbose`: the decoding bar)."""
    from kernelzoo.zoo.data import load_images
    from kernelzoo.zoo.evaluation import dataset_spec
    return load_images(dataset_spec(spec), data_dir, verbose=verbose)


def check_limit_train(value, name):
    """`value` as an int >= 2: some of the training images (--val-size, at least 1) are held out for validation."""
    try:
        return checks.int_in_range(value, name, 2)
    except ValueError as error:
        raise ValueError(f"{error} (--val-size of them, default 10 %, at least 1, are held out for "
                         "validation)") from None


# option -> its check (positive ints, --limit-train >= 2, the learning rate, momentum in [0, 1)); None: unset.
NUMBER_CHECKS = {
    "epochs": checks.positive_int, "batch_size": checks.positive_int, "lr": checks.positive_float,
    "momentum": lambda value, name: checks.float_in_range(value, name, 0, 1, "[)"),
    "val_size": checks.positive_int, "limit_train": check_limit_train, "limit_test": checks.positive_int,
    "max_steps_per_epoch": checks.positive_int, "seed": checks.nonnegative_int,
}


def check_numbers(args):
    """Check every number option before the model and the data load; errors name the --flag."""
    for dest, check in NUMBER_CHECKS.items():
        value = getattr(args, dest)
        if value is not None:
            check(value, "--" + dest.replace("_", "-"))


def _run_dirs(args):
    """The run folders of the fine-tuning and (--compare-scratch) the scratch run; None: temporary ones."""
    if args.run_dir is None:
        return None, None
    return args.run_dir, os.path.join(args.run_dir, "scratch") if args.compare_scratch else None


def _data_settings(args, data, val_size):
    """What makes the data of a run (config.json's options; a resume with others is refused): the dataset (a path
    made absolute), where it was read from, the training images kept, the held-out and the test images."""
    dataset = os.path.abspath(args.dataset) if os.path.exists(args.dataset) else args.dataset
    return {"dataset": dataset, "data": data.source, "limit_train": args.limit_train, "val_size": val_size,
            "limit_test": args.limit_test}


def run(args, command="finetune"):
    from kernelzoo.zoo import training
    from kernelzoo.zoo.data import holdout_split
    from kernelzoo.zoo.finetune import check_resume_epochs, check_run_dir, find_head, finetune, resolve_model
    from kernelzoo.zoo.recipe import seeded_subset

    output = os.fspath(args.output)
    if not output.endswith(".keras"):
        raise ValueError(f"-o/--output must end in .keras, got {output!r}")
    check_numbers(args)
    run_dir, scratch_dir = _run_dirs(args)
    for folder in (run_dir,) if scratch_dir is None else (run_dir, scratch_dir):
        check_run_dir(folder, args.resume, ("--run-dir", "--resume"))
        check_resume_epochs(folder, args.epochs, args.lr, name="--epochs")
    model = resolve_model(args.model)
    find_head(model)
    data = load(args.dataset, args.data_dir, verbose=not args.quiet)
    x_train, y_train = seeded_subset((data.x_train, data.y_train), args.limit_train, "--limit-train", args.seed)
    x_test, y_test = seeded_subset((data.x_test, data.y_test), args.limit_test, "--limit-test", args.seed + 1)
    val_size = args.val_size if args.val_size is not None else max(1, min(5000, len(x_train) // 10))
    train, val = holdout_split(x_train, y_train, checks.int_in_range(val_size, "--val-size", 1, len(x_train) - 1),
                               seed=args.seed)
    print(f"fine-tuning {args.model} ({model.name}) on {data.source}: {len(train[0])} train / {len(val[0])} val / "
          f"{len(x_test)} test images {data.input_shape}, {data.num_classes} classes, freeze={args.freeze}, "
          f"{args.epochs} epochs", flush=True)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  test_ds=(x_test, y_test), spatial=args.spatial, seed=args.seed, verbose=0 if args.quiet else 1,
                  max_steps_per_epoch=args.max_steps_per_epoch, resume=args.resume,
                  data_settings=_data_settings(args, data, len(val[0])))
    started = time.time()
    tuned, metrics = finetune(model, train, val, data.num_classes, freeze=args.freeze, out_dir=run_dir, **common)
    metrics["seconds"] = round(time.time() - started, 1)
    scratch = None
    if args.compare_scratch:
        started = time.time()
        _, scratch = finetune(model, train, val, data.num_classes, from_scratch=True, out_dir=scratch_dir, **common)
        scratch["seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    training.save_model(tuned, output)  # the results once every run is done, each file whole or not at all
    card = write_card(output, args, data, model, tuned, metrics, scratch)
    print(_summary("fine-tuned", metrics))
    if scratch is not None:
        print(_summary("from scratch", scratch))
    print(f"wrote {output} and {card}")
    return 0


def _summary(label, metrics):
    parts = [f"{label:>12}: freeze={metrics['freeze']}, {metrics['trainable_params']:,} trainable params"]
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            parts.append(f"{split} accuracy {100 * metrics[f'{split}_accuracy']:.2f} %")
    parts.append(f"{metrics['seconds']:.0f} s")
    return ", ".join(parts)


def command_line(args):
    """`kernelzoo finetune ...` that reproduces the parsed `args`: the model and every option not at its default."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    words = ["kernelzoo", "finetune", str(args.model)]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        words += [flag] if action.nargs == 0 else [flag, str(value)]
    return shlex.join(words)


def write_card(output, args, data, source_model, tuned, metrics, scratch):
    """OUT.md next to OUT.keras; returns its path."""
    card = output[:-len(".keras")] + ".md"
    adapter = [layer for layer in tuned.layers if layer.name.startswith("adapt_")]
    rows = [("fine-tuned", metrics)] + ([("from scratch (same architecture, same budget)", scratch)] if scratch else [])
    lines = [f"# {os.path.basename(output)}: {args.model} fine-tuned on {data.source}", "",
             f"- source model: `{args.model}` ({source_model.name}, input {tuple(source_model.inputs[0].shape[1:])})",
             f"- dataset: `{args.dataset}` -> {data.source}; {data.num_classes} classes "
             f"({', '.join(data.class_names)}); images {data.input_shape} uint8",
             f"- split: {metrics['train_examples']} training images, {metrics.get('val_examples', 0)} held out for "
             f"validation (seed {args.seed}), {metrics.get('test_examples', 0)} test images",
             "- input adaptation (layers saved in the model, the file takes the dataset's raw pixels): "
             + (", ".join(f"{layer.name} ({type(layer).__name__})" for layer in adapter) or "none"),
             f"- head: replaced for {data.num_classes} classes; freeze={metrics['freeze']} "
             f"({metrics['trainable_params']:,} of {metrics['params']:,} parameters trained)",
             f"- recipe: SGD, momentum {args.momentum}, batch {args.batch_size}, lr {metrics['lr']:g} / 10 after "
             f"half of {args.epochs} epochs (kernelzoo.zoo.training)"
             + (f"; from scratch: lr {scratch['lr']:g}" if scratch and scratch["lr"] != metrics["lr"] else ""), "",
             "| run | trained params | val accuracy | test accuracy | time |", "|---|---|---|---|---|"]
    for label, values in rows:
        lines.append(f"| {label} | {values['trainable_params']:,} | {_pct(values.get('val_accuracy'))} | "
                     f"{_pct(values.get('test_accuracy'))} | {values['seconds']:.0f} s |")
    lines += ["", "Reproduce:", "", "```bash", command_line(args), "```", "",
              "Metrics (JSON):", "", "```json",
              json.dumps({label: {k: v for k, v in values.items() if k != "history"} for label, values in rows},
                         indent=1), "```", ""]
    write_text(card, "\n".join(lines))
    return card


def write_text(path, text):
    """Write a text file atomically (temporary file + rename: a kill leaves the previous file whole)."""
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f} %"
