"""One evaluator for every family: re-measure a model's card figure with its preset's protocol.

A model is a zoo name (its shipped weights, SHA-256 checked), a .keras file (its preset,
options and dataset read from the config.json of the run folder it sits in, or given; a copy of a
shipped weight file is known by its SHA-256), or a keras.Model with its preset. The family recipe loads
the preset's dataset (a run's: the one it trained on) and split and measures the preset's metric
(accuracy on the test split, RMSE on the held-out ratings of a MovieLens fold). The paper's figure is
shown beside it only when it is measured on the preset's own test split, the card's only when the model
is also the preset's shipped weights (a zoo name, or a file with their SHA-256).
"""
import os
import warnings

import keras
import numpy as np

from kernelzoo.ops import checks
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.recipe import Recipe, dataset_name


def run_config(path):
    """The config.json of the run folder holding the .keras file `path` (or its checkpoints/), or None."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    for candidate in (folder, os.path.dirname(folder)):
        config = training.read_config(candidate)
        if config is not None:
            return config
    return None


def preset_of(model):
    """The Preset behind a zoo name, a run folder's .keras file or a copy of shipped weights; None when nothing
    says."""
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"`model` must be a zoo name or a .keras path, got {type(model).__name__}")
    model = os.fspath(model)
    if model.lower() in registry.list_models():  # as registry.info and load take a name
        return registry.info(model)
    if not model.endswith(".keras"):
        return None
    return _file_preset(run_config(model), registry.sha256(model) if os.path.isfile(model) else None)


def _file_preset(config, digest):
    """The preset of a .keras file: its run folder's (`config`, or None), else that of the shipped weights with
    SHA-256 `digest` (None: no file); None when neither says."""
    if config is not None and config.get("preset") is not None:  # a fine-tune run folder has no preset
        return registry.info(config["preset"])
    return None if digest is None else registry.shipped_preset(digest)


def _load(model, preset):
    """(keras.Model, Preset or None, run, shipped) for a name, a .keras path or a model; `run` is the config.json
    of the run folder the file sits in when it is a run of that preset, else {}; `shipped`: whether it holds the
    preset's shipped weights (a zoo name, or a file with their SHA-256, hashed once). A zoo name with another preset
    is refused."""
    if isinstance(model, keras.Model):
        return model, preset, {}, False
    preset = registry.info(preset) if isinstance(preset, str) else preset
    path = os.fspath(model)
    if not path.endswith(".keras"):
        named = registry.info(path)
        if preset is not None and preset.name != named.name:
            raise ValueError(f"`preset` (--preset) {preset.name!r} is not the preset of the zoo model {path!r}: a zoo "
                             "name is measured with its own preset; leave --preset out")
        return registry.load(path), named, {}, True
    if not os.path.isfile(path):
        raise ValueError(f"`model`: no such file {path!r}")
    config = run_config(path)
    digest = registry.sha256(path)
    preset = preset or _file_preset(config, digest)
    own = config is not None and preset is not None and preset.name == config.get("preset")
    shipped = preset is not None and digest == preset.sha256
    return registry.load_file(path), preset, config if own else {}, shipped


def dataset_spec(spec):
    """The dataset --dataset names: 'tfds:NAME' is NAME (its copy under --data-dir, else TensorFlow Datasets),
    anything else a name or a path as given."""
    spec = checks.path(spec, "dataset")
    name = spec[len("tfds:"):] if spec.startswith("tfds:") else spec
    if not name:
        raise ValueError(f"`dataset`={spec!r}: tfds: needs a dataset name")
    return name


def run_dataset(run):
    """The dataset a run trained on: its config.json's `dataset`, or (older runs) its `data` when that is a local
    path; None when it does not say (the preset's)."""
    data = run.get("data")
    return run.get("dataset") or (data if isinstance(data, str) and os.path.exists(data) else None)


def check_classes(model, data, preset=None):
    """ValueError naming both counts when a classifier's class scores do not match the classes of `data`
    (before anything runs: a label past them fails deep inside TensorFlow)."""
    if (preset is None or preset.task == "classification") and data.class_names:
        check_scores(model, data.class_names, data.source, hint=": measure it on the dataset it was trained on "
                     "(--dataset)")


def check_scores(model, class_names, owner, *, hint=""):
    """ValueError when `model` does not output one score for each of `class_names` (those of `owner`)."""
    shape = model.output_shape
    classes = shape[-1] if isinstance(shape, tuple) else None
    if classes != len(class_names):
        raise ValueError(f"`model` {model.name!r} scores {classes} classes, {owner} has {len(class_names)} "
                         f"({', '.join(map(str, class_names[:10]))}){hint}")


def _warn_validate_only(run, split):
    """A --validate-only run never touched the test split: say so when it is measured on it."""
    if split == "test" and run.get("options", {}).get("validate_only"):
        warnings.warn("the run was --validate-only (its test split never touched): this measures the test split "
                      "now; --holdout N measures its held-out images", stacklevel=3)


def measure(model, data_dir=None, *, preset=None, dataset=None, split="test", holdout=None, seed=None, verbose=0):
    """Re-measure `model` with its preset's protocol (or image classification on `dataset`); `verbose`:
    a progress bar while it evaluates.

    With `holdout`: on the `holdout` training images that `kernelzoo train --holdout N --seed S` holds out
    instead (the validation split; e.g. to compare a shipped model with a held-out run on the same images).
    `seed`: the run's --seed, which draws its held-out images and its random splits (MovieLens --split
    random); None: the seed in the run folder's config.json, else 0. `dataset` (`dataset_spec`) None: the run
    folder's (`run_dataset`), else the preset's. A classifier whose class count differs from the data's is refused.

    Returns {"metric", "value" (of the preset's metric), every measured metric, "data",
    "preset", "card" and "paper" (Figures or None), "shipped" (whether it holds the preset's shipped weights)}.
    """
    model, preset, run, shipped = _load(model, preset)
    dataset = None if dataset is None else dataset_spec(dataset)
    seed = (0 if run.get("seed") is None else int(run["seed"])) if seed is None else int(seed)
    if preset is None and dataset is None:
        raise ValueError(f"`preset`: no preset is known for {getattr(model, 'name', model)!r} (no zoo name, no "
                         "run folder config.json naming one): give the preset (--preset NAME) or a dataset (--dataset)")
    recipe = Recipe() if preset is None else registry.recipe(preset)
    known = vars(recipe.options())
    options = recipe.options(**{k: v for k, v in run.get("options", {}).items() if k in known})
    if holdout is not None and not hasattr(options, "holdout"):
        raise ValueError(f"`holdout`: {type(recipe).__name__} has no held-out image split (--holdout)")
    trained_on = None if dataset is not None else run_dataset(run)
    data = recipe.load_data(preset, data_dir, dataset or trained_on, options, seed=seed)
    if holdout is not None:
        data, split = recipe.held_out(data, holdout, seed), "val"
    check_classes(model, data, preset)
    _warn_validate_only(run, split)
    scores = recipe.evaluate(model, data, split, verbose=verbose)
    metric = preset.metric if preset is not None else "accuracy"
    source = data.source if holdout is None else f"{data.source}: held-out training images, seed {seed}"
    own_data = preset is not None and dataset_name(preset, dataset or trained_on) == preset.dataset.name
    if trained_on is not None and not own_data:
        source += " (the dataset in its run folder's config.json)"
    # the card's and the paper's figures are of the preset's test split (the card: of its shipped weights)
    comparable = own_data and holdout is None
    return dict(scores, metric=metric, value=scores.get(metric), data=source,
                preset=None if preset is None else preset.name, shipped=shipped,
                card=preset.measured if comparable and shipped else None, paper=preset.paper if comparable else None)


def test_split(preset, data_dir=None, num=None):
    """(images uint8, labels, source) of a classification preset's test split.

    With `num`: the first test images of each class in turn (the first of every class, then the second, ...), so
    that no two classes' counts differ by more than one while they have images left.
    """
    preset = registry.info(preset) if isinstance(preset, str) else preset
    if preset.task != "classification":
        raise ValueError(f"`preset` {preset.name!r} is a {preset.task} model: it has no test images")
    from kernelzoo.zoo.data import load_images
    data = load_images(preset.dataset.name, data_dir)
    x, y = data.test
    if num is not None:
        ranks = np.empty(len(y), np.int64)  # each image's position among the test images of its class
        for label in range(data.num_classes):
            ranks[y == label] = np.arange(np.count_nonzero(y == label))
        keep = np.lexsort((y, ranks))[:num]  # by rank, then by class
        x, y = x[keep], y[keep]
    return x, y, f"{preset.dataset.name} test split ({data.source})"
