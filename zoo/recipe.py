"""Recipe hooks: how a family trains and measures its presets.

`kernelzoo train` calls load_data, then `Recipe.train`, which runs the hooks in order:
  validation_split -> (train_run:) build -> initialise -> compile -> fit -> evaluate
and writes the run folder (kernelzoo.zoo.training); `kernelzoo eval` calls load_data and
evaluate. The defaults here are supervised image classification from raw pixels with the
Keras loop; a family subclasses `Recipe` in its `recipe.py` and overrides what differs
(unsupervised initialisation, another optimiser, a loop that is not Keras `fit`).

The held-out validation protocol is the recipe's too (`validation_split`): `--holdout N` trains
on the training set minus N images of a seeded permutation (`holdout_split`, the run's seed) and
measures those N as `Data.val` after every epoch (val_* columns of log.csv); `--validate-only`
also drops the test split: the run reports its held-out figures (val_*) and never touches the
test set (design choices: schedule, epochs, sizes).

Bad sizes (--epochs, --batch-size, --max-steps-per-epoch: `hyperparameters`; --holdout, --limit-train: `options`)
are refused before the data loads or the run folder is written. A resumed run (`train_run`, `resumed_hyperparameters`)
keeps the lr drops it started with unless they are given again, so a longer --epochs continues its schedule; a
cosine decay's length is fixed when its run starts, so there another --epochs is refused.
"""
import argparse
import contextlib
import dataclasses
import os
import platform
import re
import time

import keras
import numpy as np

from kernelzoo.ops.checks import check_choice, int_in_range, positive_float, positive_int
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.inputs import as_model_input

SCHEDULES = ("step", "milestones", "cosine", "constant")
LR_SCALING = ("none", "linear")
# Hyper-parameters every recipe understands (the preset's recipe overrides them).
# schedule "step": lr / 10 every `lr_drop_every` epochs (default half the run); "milestones": lr / 10 at each epoch
# of `lr_milestones`; "cosine": a cosine decay over the run; "constant". `max_steps_per_epoch`: a cap on the steps
# of each epoch (None: whole epochs).
DEFAULTS = {"epochs": 10, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "step",
            "lr_drop_every": None, "lr_milestones": None, "lr_scaling": "none", "max_steps_per_epoch": None}
# The hyper-parameters that place the lr drops, and the entry of `Recipe.hyperparameters` naming those of them that
# are the recipe's (not given): a resumed run takes its own instead (`resumed_hyperparameters`).
LR_DROPS = ("lr_drop_every", "lr_milestones")
RECIPE_DROPS = "recipe_lr_drops"


def scaled_milestones(milestones, epochs, new_epochs):
    """`milestones` of an `epochs`-epoch schedule at the same fractions of `new_epochs` (rounded, each at least
    epoch 1, repeats merged): a shortened run keeps the shape of its schedule."""
    scale = positive_int(new_epochs, "epochs") / positive_int(epochs, "epochs")
    return tuple(sorted({max(1, round(milestone * scale)) for milestone in milestones}))


def limited_train(train, options, seed):
    """The (x, y) training pair, or `options.limit_train` of its examples (--limit-train)."""
    return seeded_subset(train, getattr(options, "limit_train", None), "--limit-train", seed)


def seeded_subset(pair, limit, name, seed):
    """The (x, y) pair, or `limit` of its examples: a seeded draw kept in order; more than there are is refused,
    naming the option `name`."""
    if limit is None:
        return pair
    x, y = pair
    limit = int_in_range(limit, name, 1, len(x))
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[keep], y[keep]


def check_run_sizes(hp):
    """`hp` once its `epochs`, `batch_size` (positive ints) and `max_steps_per_epoch` (None or a positive int) are
    checked: a bad one is named before the data loads or the run folder is written."""
    positive_int(hp["epochs"], "epochs")
    positive_int(hp["batch_size"], "batch_size")
    if hp.get("max_steps_per_epoch") is not None:
        positive_int(hp["max_steps_per_epoch"], "max_steps_per_epoch")
    return hp


@dataclasses.dataclass
class Data:
    """What a recipe trains and measures on. Image recipes hold (x uint8, y) pairs; others their own form."""

    train: object
    test: object
    source: str
    class_names: tuple = None
    val: object = None
    dataset: str = None  # what the data is (`dataset_name`), recorded in config.json; None: not said


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A configuration small enough to train in seconds: the family contract tests run it end to end.

    `hp` changes the preset's hyper-parameters (epochs, batch_size, lr); `exact_resume` says a
    killed and resumed run must end with the weights of an uninterrupted one.
    """

    preset: str
    data: Data
    overrides: dict
    hp: dict
    exact_resume: bool = True


def add_optimizer_argument(parser):
    """--optimizer, shared by the recipes that offer it (one CLI option); each recipe's `hyperparameters` checks
    the name against its own `optimizers` before anything runs."""
    parser.add_argument("--optimizer", default=None,
                        help="the optimizer (default the preset's): sgd, adam or adamw (decoupled weight "
                             "decay) for the SimNet family's recipe, lbfgs or adam for the MovieLens autoencoder")


@keras.saving.register_keras_serializable(package="kernelzoo")
class AdamW(keras.optimizers.AdamW):
    """Keras's AdamW whose decoupled weight decay skips the variables named in `exclude` (exact names).

    Keras's `exclude_from_weight_decay` is not part of the optimizer's config: a run resumed from a
    checkpoint would decay every variable. Here the exclusion is in the config, so it decays the same ones.
    """

    def __init__(self, exclude=(), **kwargs):
        super().__init__(**kwargs)
        self.exclude = tuple(sorted(exclude))
        # The TensorFlow backend matches its tf.Variable's name ("layer/name:0"), the others the Keras name.
        self.exclude_from_weight_decay(var_names=[f"(^|/){re.escape(name)}(:\\d+)?$" for name in self.exclude])

    def get_config(self):
        return {**super().get_config(), "exclude": list(self.exclude)}


def classification_loss(model):
    """Sparse softmax cross-entropy on the model's output: probabilities when it ends in softmax (as export reads
    it), else logits."""
    from kernelzoo.export import ends_in_softmax
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_in_softmax(model))


class Recipe:
    """Default hooks: image classification on raw pixels, SGD or Adam, accuracy on the test split."""

    optimizers = ("sgd", "adam")  # the names hp["optimizer"] (--optimizer) may take
    # True for recipes whose `initialise` takes long and whose `fit` is the Keras loop: `train_run` then saves the
    # initialised model as the checkpoint after epoch 0, so a run killed in its first epoch resumes without it.
    checkpoints_initialisation = False

    def add_arguments(self, parser):
        """Family options of `kernelzoo train`; subclasses call super() and add theirs.

        An option whose name is a hyper-parameter of the recipe (e.g. --momentum) overrides it.
        """
        parser.add_argument("--limit-train", type=int, default=None,
                            help="use only N training images of a seeded permutation (quick runs)")
        parser.add_argument("--holdout", type=int, default=None, metavar="N",
                            help="image recipes: hold out N training images (seeded permutation, --seed) as "
                                 "the validation split: the model trains on the rest, log.csv gets val_* every "
                                 "epoch, the test split is still measured at the end (SimNet "
                                 "--tune-weight-decay, CKN: the tuning images; the final model trains on all). "
                                 "Default with --validate-only: the recipe's `holdout` (SimNet, CKN: 5000)")
        parser.add_argument("--validate-only", action="store_true",
                            help="train on the training set minus --holdout images, report the held-out "
                                 "figures (val_*) and stop: the test set is never touched (design choices)")

    def options(self, **changes):
        """The family options with their defaults (as `kernelzoo train` parses them), with `changes`."""
        parser = argparse.ArgumentParser(add_help=False)
        self.add_arguments(parser)
        options = parser.parse_args([])
        for key, value in changes.items():
            if not hasattr(options, key):
                raise ValueError(f"`{key}` is not an option of {type(self).__name__} "
                                 f"(options: {sorted(vars(options))})")
            setattr(options, key, value)
        for key in ("holdout", "limit_train"):  # sizes: refused before the data loads
            if getattr(options, key, None) is not None:
                positive_int(getattr(options, key), f"--{key.replace('_', '-')}")
        return options

    def hyperparameters(self, preset, **changes):
        """DEFAULTS < the preset's recipe < `changes` (None values ignored), the run's sizes checked
        (`check_run_sizes`).

        With lr_scaling "linear", a batch size other than the recipe's scales the lr by the same factor. Other
        `epochs` than the recipe's move its lr drops to the same fractions of the run (unless `changes` sets them
        too): `lr_drop_every` 45 of 150 epochs is 9 of 30 (rounded down: 10 of 20 is 1 of 3),
        `lr_milestones` 60/85/100 of 105 are 23/32/38 of 40.
        hp[RECIPE_DROPS] names the lr drops (LR_DROPS) that are the recipe's, not given in `changes`.
        """
        hp = {**DEFAULTS, **preset.recipe}
        batch, epochs = hp["batch_size"], hp["epochs"]
        hp.update({key: value for key, value in changes.items() if value is not None})
        check_choice("lr_scaling", hp["lr_scaling"], LR_SCALING)
        check_choice("optimizer", hp["optimizer"], self.optimizers)
        check_run_sizes(hp)
        if hp["lr_scaling"] == "linear" and changes.get("lr") is None and hp["batch_size"] != batch:
            hp["lr"] = hp["lr"] * hp["batch_size"] / batch
        hp[RECIPE_DROPS] = tuple(key for key in LR_DROPS if changes.get(key) is None and hp[key] is not None)
        if hp["epochs"] != epochs and "lr_drop_every" in hp[RECIPE_DROPS]:  # rounded down: half a run stays E // 2
            hp["lr_drop_every"] = max(1, hp["lr_drop_every"] * hp["epochs"] // epochs)
        if hp["epochs"] != epochs and "lr_milestones" in hp[RECIPE_DROPS]:
            hp["lr_milestones"] = scaled_milestones(hp["lr_milestones"], epochs, hp["epochs"])
        return hp

    def load_data(self, preset, data_dir=None, dataset=None, options=None, seed=0, verbose=1):
        """Train and test images of the preset's dataset (or `dataset`: a name or a path); `verbose`: a progress
        bar while images are decoded (0 with --quiet)."""
        from kernelzoo.zoo.data import load_images
        images = load_images(dataset or preset.dataset.name, data_dir, verbose=bool(verbose))
        return Data(train=limited_train(images.train, options, seed), test=images.test, source=images.source,
                    class_names=images.class_names, dataset=dataset_name(preset, dataset))

    def holdout(self, hp, options):
        """Training examples to hold out for validation: --holdout, else (with --validate-only) the
        recipe's `holdout`; None when the run trains on the whole training set."""
        size = getattr(options, "holdout", None)
        validate_only = getattr(options, "validate_only", False)
        if size is None and not validate_only:
            return None
        size = hp.get("holdout") if size is None else size
        if size is None:
            raise ValueError("holdout: --validate-only needs --holdout N (this recipe has no default `holdout`)")
        return positive_int(size, "holdout")

    def validation_split(self, data, hp, options, seed=0):
        """The validation protocol (module docstring): `data` with `holdout(hp, options)` training
        images moved to `data.val`, and without its test split under --validate-only."""
        size = self.holdout(hp, options)
        if size is None:
            return data
        data = self.held_out(data, size, seed)
        return dataclasses.replace(data, test=None) if getattr(options, "validate_only", False) else data

    def held_out(self, data, size, seed=0):
        """`data` with the `size` training images a run with --holdout `size` --seed `seed` holds out moved to
        `data.val` (what `kernelzoo eval --holdout` measures)."""
        from kernelzoo.zoo.data import holdout_split
        size = int_in_range(size, "holdout", 1, len(data.train[0]) - 1)
        train, val = holdout_split(*data.train, size, seed=seed)
        return dataclasses.replace(data, train=train, val=val)

    def build(self, preset, data, overrides=None, hp=None):
        """The preset's model for `data` (its input shape and class count when the builder takes them).

        `hp` (the run's hyper-parameters) is for recipes whose builder takes some of them.
        """
        config = dict(preset.config)
        accepted = registry.builder_arguments(preset)
        if data is not None and "input_shape" in accepted:
            config["input_shape"] = tuple(np.asarray(data.train[0]).shape[1:])
        if data is not None and data.class_names and "num_classes" in accepted:
            config["num_classes"] = len(data.class_names)
        unknown = set(overrides or {}) - accepted
        if unknown:
            raise ValueError(f"overrides: {sorted(unknown)} are not arguments of {preset.builder} "
                             f"(it takes {sorted(accepted)})")
        return registry.resolve(preset.builder)(**{**config, **(overrides or {})})

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        """Anything before supervised training (none here); returns a JSON-able report or None."""
        return None

    def loss(self, model):
        return classification_loss(model)

    def metrics(self, model):
        return ["accuracy"]

    def compile(self, model, hp, steps_per_epoch=None):
        """Compile with the recipe's optimizer (a cosine decay over the whole run when steps are known)."""
        optimizer = check_choice("optimizer", hp["optimizer"], self.optimizers)
        schedule = check_choice("schedule", hp["schedule"], SCHEDULES)
        lr = positive_float(hp["lr"], "lr")
        if schedule == "cosine" and steps_per_epoch:
            lr = keras.optimizers.schedules.CosineDecay(lr, positive_int(hp["epochs"], "epochs") * steps_per_epoch)
        model.compile(optimizer=self.optimizer(optimizer, lr, hp, model), loss=self.loss(model),
                      metrics=self.metrics(model))
        return model

    def optimizer(self, name, lr, hp, model):
        """The Keras optimizer `name` (one of `optimizers`) for `model` at learning rate `lr` (a float or a
        schedule)."""
        if name == "sgd":
            return keras.optimizers.SGD(learning_rate=lr, momentum=float(hp["momentum"]))
        return keras.optimizers.Adam(learning_rate=lr)

    def load_checkpoint(self, out_dir):
        """The model to resume from: the run folder's last checkpoint, with its optimizer state."""
        return training.load_last(out_dir)

    def steps_per_epoch(self, data, hp, max_steps_per_epoch=None):
        steps = -(-len(data.train[0]) // hp["batch_size"])
        return steps if max_steps_per_epoch is None else min(steps, max_steps_per_epoch)

    def targets(self, model, data, split):
        """(inputs, targets) of a split for the model: images shaped for its input, the labels."""
        x, y = getattr(data, split)
        return as_model_input(x, model), y

    def fit(self, model, data, out_dir, hp, *, seed=0, resume=False, verbose=1, tensorboard=True,
            max_steps_per_epoch=None, config=None, strategy=None, callbacks=None):
        """The Keras loop (kernelzoo.zoo.training.train); returns its result dict."""
        return training.train(model, self.targets(model, data, "train"), out_dir=out_dir, epochs=hp["epochs"],
                              batch_size=hp["batch_size"], lr_schedule=self.lr_schedule(hp),
                              val_data=None if data.val is None else self.targets(model, data, "val"), seed=seed,
                              resume=resume, verbose=verbose, tensorboard=tensorboard,
                              max_steps_per_epoch=max_steps_per_epoch, config=config, strategy=strategy,
                              callbacks=callbacks)

    def lr_schedule(self, hp):
        """The epoch -> lr function of the "step" and "milestones" schedules; None for the others (the optimizer's
        own learning rate: a cosine decay or a constant)."""
        schedule = check_choice("schedule", hp["schedule"], SCHEDULES)
        if schedule == "step":
            return training.step_schedule(hp["lr"], hp["epochs"], hp["lr_drop_every"])
        if schedule != "milestones":
            return None
        if hp["lr_milestones"] is None:
            raise ValueError("`lr_milestones` must list the epochs at which the lr drops (schedule 'milestones')")
        try:
            return training.milestone_schedule(hp["lr"], hp["lr_milestones"])
        except ValueError as error:
            raise ValueError(f"`lr_milestones`: {error}") from None

    def evaluate(self, model, data, split="test", verbose=0):
        """{metric: value} on a split: accuracy and loss (and the example count); a progress bar when `verbose`."""
        if not getattr(model, "compiled", False):
            self.compile(model, dict(DEFAULTS))
        return training.evaluate(model, self.targets(model, data, split), verbose=verbose)

    def train(self, preset, data, out_dir, *, overrides=None, hp=None, options=None, seed=0, **kwargs):
        """The validation protocol (`validation_split`), then `train_run` into the run folder `out_dir`.

        Returns the result of `train_run`; with --validate-only its "metrics" are the held-out
        figures (val_*, measured by `evaluate` on data.val after training; no metrics.json).
        """
        hp = self.hyperparameters(preset) if hp is None else hp
        options = self.options() if options is None else options
        data = self.validation_split(data, hp, options, seed=seed)
        result = self.train_run(preset, data, out_dir, overrides=overrides, hp=hp, options=options, seed=seed,
                                **kwargs)
        if getattr(options, "validate_only", False) and "metrics" not in result:
            scores = self.evaluate(result["model"], data, "val", verbose=kwargs.get("verbose", 1))
            result["metrics"] = {f"val_{key}": value for key, value in scores.items()}
        return result

    def train_run(self, preset, data, out_dir, *, overrides=None, hp=None, options=None, seed=0, resume=False,
                  verbose=1, tensorboard=True, max_steps_per_epoch=None, strategy=None, callbacks=None):
        """build -> initialise -> compile -> fit -> evaluate into the run folder `out_dir`, on `data` as
        given (data.val, when set, is measured after every epoch).

        `max_steps_per_epoch`, when given, is the run's hyper-parameter of that name (recorded in config.json).
        A resume takes `resumed_hyperparameters` and is refused with other settings than its config.json's.
        Returns the fit result with "metrics" (test_* figures, also in metrics.json when data.test is given).
        """
        training.check_not_overwriting(out_dir, resume)
        hp = self.hyperparameters(preset) if hp is None else hp
        if max_steps_per_epoch is not None:
            hp = dict(hp, max_steps_per_epoch=max_steps_per_epoch)
        max_steps_per_epoch = check_run_sizes(hp).get("max_steps_per_epoch")
        options = self.options() if options is None else options
        if isinstance(strategy, str) or strategy is None:
            strategy = training.make_strategy(strategy)
        scope = strategy.scope if strategy else contextlib.nullcontext
        config = None
        if resume and training.read_state(out_dir):
            hp = resumed_hyperparameters(out_dir, hp)
            training.check_resumed_config(out_dir, run_config(preset, overrides, hp, options, seed, data, None,
                                                              strategy))
            with scope():
                model = self.load_checkpoint(out_dir)
        else:
            keras.utils.set_random_seed(seed)
            with scope():
                model = self.build(preset, data, overrides, hp)
            report = self.initialise(model, data, hp, options, seed=seed, verbose=verbose)
            with scope():
                self.compile(model, hp, self.steps_per_epoch(data, hp, max_steps_per_epoch))
            config = run_config(preset, overrides, hp, options, seed, data, report, strategy)
            if self.checkpoints_initialisation:
                training.start_run(out_dir, resume, config)  # config.json; refuses to overwrite a run
                with scope():
                    model.optimizer.build(model.trainable_variables)  # in the scope (not in save_checkpoint)
                training.save_checkpoint(model, out_dir, 0, state={"seed": seed})
                resume = True  # fit continues from that checkpoint's state (epoch 0)
        result = self.fit(model, data, out_dir, hp, seed=seed, resume=resume, verbose=verbose,
                          tensorboard=tensorboard, max_steps_per_epoch=max_steps_per_epoch, config=config,
                          strategy=strategy, callbacks=callbacks)
        if data.test is not None:
            scores = self.evaluate(result["model"], data, verbose=verbose)
            result["metrics"] = {f"test_{key}": value for key, value in scores.items()}
            training.write_json(os.path.join(out_dir, training.METRICS_FILE), result["metrics"])
        return result


def dataset_name(preset, dataset=None):
    """What a run's data is: `dataset` (--dataset: a name, or a path made absolute), else the preset's dataset.

    Where the preset's dataset was read from (--data-dir, tfds) does not change it; another dataset does.
    """
    name = preset.dataset.name if dataset is None else os.fspath(dataset)
    return os.path.abspath(name) if os.path.exists(name) else name


def run_settings(preset, overrides, hp, options, seed, dataset=None):
    """The settings that make a run what it is (a resume or a reuse must not change them).

    `dataset`: the run's `dataset_name`; None when not known (then not recorded, and not compared). The
    hyper-parameters leave out hp[RECIPE_DROPS]: how `hp` was made, not what the run is.
    """
    settings = {"preset": preset.name, "family": preset.family, "builder": preset.builder,
                "config": dict(preset.config), "overrides": dict(overrides or {}),
                "hyperparameters": {key: value for key, value in hp.items() if key != RECIPE_DROPS},
                "options": vars(options), "seed": seed}
    return settings if dataset is None else {**settings, "dataset": dataset}


def resumed_hyperparameters(out_dir, hp):
    """`hp` to resume the run in `out_dir` with: the lr drops that are the recipe's (hp[RECIPE_DROPS]) are the
    run's own (its config.json), so a longer --epochs continues its schedule; given ones are compared as any setting.

    ValueError naming --epochs when a cosine decay's run is asked for other epochs: its length is fixed at the start.
    """
    saved = (training.read_config(out_dir) or {}).get("hyperparameters", {})
    if hp["schedule"] == "cosine" and saved.get("epochs", hp["epochs"]) != hp["epochs"]:
        raise ValueError(f"`--epochs` {hp['epochs']}: the run in {os.fspath(out_dir)!r} decays its lr by a cosine "
                         f"over {saved['epochs']} epochs, a length fixed when it started; resume it with --epochs "
                         f"{saved['epochs']}, or start a new run in another folder")
    return {**hp, **{key: saved[key] for key in hp.get(RECIPE_DROPS, ()) if key in saved}}


def run_config(preset, overrides, hp, options, seed, data, report, strategy):
    """What config.json records about a run: its settings, data, initialisation and machine."""
    from kernelzoo import ops
    return {**run_settings(preset, overrides, hp, options, seed, data.dataset),
            "data": data.source, "init": report, "implementation": ops.selected_implementation(),
            "strategy": None if strategy is None else type(strategy).__name__,
            "replicas": 1 if strategy is None else strategy.num_replicas_in_sync,
            "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
