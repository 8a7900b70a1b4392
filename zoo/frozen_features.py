"""Recipes whose layers below the classifier are fixed after an unsupervised stage (the CKNs, the
Coates et al. baseline): the classifier is fitted once on cached features instead of by SGD epochs.

- initialise (the family's): whatever fits the frozen layers without labels (k-means anchors...).
- fit: the output of the model's "features" layer for every training image, cached in chunks under
  the run folder (`feature_dtype`: "float32", or "float16" for half the disk and page cache, as
  ckn_cifar10_unsup_512_8192's 73,728 features per image: its card; the 11-bit mantissa is ample for a
  linear classifier's inputs); the "logits" Dense fitted on it (`kernelzoo.zoo.linear_classifier`,
  L-BFGS; `classifier_loss`: "squared_hinge", a one-vs-rest L2-SVM, or "logistic") on the training images
  minus `holdout` for each L2 value of `l2_grid`, from the largest down, each warm-started from the
  previous one, until `l2_patience` values bring no better held-out accuracy; then refitted on the
  whole training set with the best value. The fit reads the cache in chunks (never a whole copy of it:
  memory independent of the number of images). --validate-only stops before the refit (the test split
  is never touched). tuning.json and l2_path.png (held-out accuracy against L2) record the choice.
The test split is measured once, by `Recipe.train_run`, after fit. Hyper-parameters the recipe reads:
batch_size (feature passes), holdout, l2_grid, l2_patience, lbfgs_iterations, classifier_loss, feature_dtype;
checked before the unsupervised stage (`hyperparameters`; `holdout` against the training images: `train_run`).
"""
import argparse
import dataclasses
import json
import os

import keras
import numpy as np

from kernelzoo.ops.checks import check_choice, int_in_range, nonnegative_float, positive_int
from kernelzoo.progress import progress
from kernelzoo.zoo import training
from kernelzoo.zoo.data import holdout_split
from kernelzoo.zoo.linear_classifier import LOSSES, accuracy, fit_logistic
from kernelzoo.zoo.plotting import pyplot, save_figure
from kernelzoo.zoo.recipe import DEFAULTS, Recipe

FEATURES = "features"
TUNING_FILE = "tuning.json"
L2_PATH_FILE = "l2_path.png"
FEATURE_DTYPES = ("float32", "float16")
# What FrozenFeaturesRecipe reads besides recipe.DEFAULTS when the preset does not say.
FROZEN_DEFAULTS = {"feature_dtype": "float32", "classifier_loss": "logistic"}


class FrozenFeaturesRecipe(Recipe):
    """A linear classifier fitted by L-BFGS on the frozen "features" layer, its L2 chosen on held-out images."""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--classifier-loss", choices=LOSSES, default=None,
                            help="the linear classifier's loss (default the recipe's)")
        parser.add_argument("--l2-grid", type=_floats, default=None, metavar="L1,L2,...",
                            help="L2 strengths of the linear classifier to try on the held-out images "
                                 "(default the recipe's)")
        parser.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default=None,
                            help="the cached features' dtype (default the recipe's)")

    def hyperparameters(self, preset, **changes):
        """FROZEN_DEFAULTS < the base's; the classifier's checked by name here, as the unsupervised stage and the
        feature pass come before their first use (and leave a run folder that cannot resume)."""
        hp = {**FROZEN_DEFAULTS, **super().hyperparameters(preset, **changes)}
        hp["feature_dtype"] = check_choice("feature_dtype", hp["feature_dtype"], FEATURE_DTYPES)
        hp["classifier_loss"] = check_choice("classifier_loss", hp["classifier_loss"], LOSSES)
        check_l2_grid(hp["l2_grid"])
        for key in ("holdout", "l2_patience", "lbfgs_iterations"):
            positive_int(hp[key], key)
        return hp

    def validation_split(self, data, hp, options, seed=0):
        """The held-out images are chosen inside `fit` (the L2 path; --holdout sets how many, default the
        recipe's `holdout`), so the data stays whole; --validate-only drops the test split."""
        return dataclasses.replace(data, test=None) if options.validate_only else data

    def train_run(self, preset, data, out_dir, *, hp=None, options=None, **kwargs):
        """The base's, with `holdout` (--holdout, else the recipe's) checked against the training images before the
        unsupervised stage: `fit` is the first to split them."""
        hp = self.hyperparameters(preset) if hp is None else hp
        options = self.options() if options is None else options
        size = hp["holdout"] if options.holdout is None else options.holdout
        hp = dict(hp, holdout=int_in_range(size, "holdout", 1, len(data.train[0]) - 1))
        if options.validate_only:
            hp = dict(hp, validate_only=True)
        return super().train_run(preset, data, out_dir, hp=hp, options=options, **kwargs)

    def compile(self, model, hp, steps_per_epoch=None):
        """The default compile (for evaluate and fine-tuning); the classifier itself is fitted by L-BFGS."""
        return super().compile(model, {**DEFAULTS, **hp}, steps_per_epoch)

    def fit(self, model, data, out_dir, hp, *, seed=0, resume=False, verbose=1, config=None, callbacks=None,
            **unused):
        """The L2 path on the holdout, then the final classifier (module docstring). Each step (one L2
        value, then the refit) is an "epoch" of the run folder: a log row, a checkpoint, and
        on_epoch_begin / on_epoch_end of `callbacks`; --resume continues after the last one. The
        Keras-loop options (strategy, tensorboard, max_steps_per_epoch) do not apply."""
        grid = sorted(check_l2_grid(hp["l2_grid"]), reverse=True)
        state = training.read_state(out_dir) if resume else None
        training.start_run(out_dir, resume, config)
        if state is None:
            training.save_checkpoint(model, out_dir, 0, state={"scores": {}})
            state = {"epoch": 0, "scores": {}}
        else:
            model = training.load_last(out_dir, compile=False)
        x, y = data.train
        features = cached_features(model, x, os.path.join(out_dir, FEATURES, f"train-{len(x)}.npy"),
                                   hp["batch_size"], dtype=hp["feature_dtype"], verbose=verbose)
        (rest, _), (held, _) = holdout_split(np.arange(len(y)), y, int(hp["holdout"]), seed=seed)
        scores = {float(key): value for key, value in state["scores"].items()}
        head = model.get_layer("logits")
        first = len(grid) + 1 if state.get("final") else int(state["epoch"])
        for step in range(first, len(grid) + 1):
            best = best_l2(scores)
            final = step == len(grid) or (best is not None and len(scores) - list(scores).index(best)
                                          > hp["l2_patience"])
            if final and hp.get("validate_only"):
                break
            for callback in callbacks or ():
                callback.on_epoch_begin(step)
            l2 = best if final else grid[step]
            kernel, bias, report = fit_logistic(features, y, head.units, l2, rows=None if final else rest,
                                                start=head.get_weights(), max_iter=hp["lbfgs_iterations"],
                                                loss=hp["classifier_loss"])
            head.set_weights([kernel, bias])
            if not final:
                scores[l2] = accuracy(features, y, kernel, bias, rows=held)
            row = {"epoch": step, "l2": l2, "loss": report["loss"], "val_accuracy": scores[l2],
                   "lbfgs_iterations": report["iterations"]}
            training.append_log(out_dir, row)
            training.save_checkpoint(model, out_dir, step + 1, row, state={"scores": scores, "final": final})
            for callback in callbacks or ():
                callback.on_epoch_end(step, row)
            if verbose:
                print(f"{'refit on all' if final else 'held-out'}: l2 {l2:g}, val_accuracy {scores[l2]:.4f}, "
                      f"loss {report['loss']:.4f} ({report['iterations']} L-BFGS iterations)", flush=True)
            if final:
                break
        chosen = best_l2(scores)
        training.write_json(os.path.join(out_dir, TUNING_FILE), {"holdout": len(held), "chosen": chosen,
                                                                 "scores": {f"{k:g}": v for k, v in scores.items()}})
        plot_l2_path(scores, chosen, len(held), os.path.join(out_dir, L2_PATH_FILE), title=model.name)
        result = training.finish(model, out_dir)
        if hp.get("validate_only"):
            result["metrics"] = {"val_accuracy": scores[chosen], "val_examples": len(held), "l2": chosen}
        return result


def _floats(text):
    """A comma-separated list of floats, for --l2-grid."""
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def check_l2_grid(values):
    """The L2 strengths to try as a tuple of distinct finite floats >= 0, at least one (1e-3 and 0.001 are one: each
    value is a step of the path, its score a key)."""
    grid = tuple(nonnegative_float(value, "l2_grid") for value in np.atleast_1d(values))
    if not grid or len(set(grid)) < len(grid):
        raise ValueError(f"`l2_grid` must hold at least one value, each once, got {values!r}")
    return grid


def best_l2(scores):
    """The L2 value with the best held-out accuracy; on a tie the later (smaller) one. None if none yet."""
    return max(reversed(scores), key=scores.get) if scores else None


def plot_l2_path(scores, chosen, holdout, path, title=None):
    """Held-out accuracy against the L2 strength (log scale), the chosen value marked, into a PNG."""
    if not scores or chosen not in scores:
        raise ValueError(f"`scores` must map L2 values to accuracies and contain `chosen`={chosen!r}, "
                         f"got {sorted(scores) if scores else scores!r}")
    plt = pyplot()
    values = sorted(scores)
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.semilogx(values, [scores[v] for v in values], "-o", markersize=4, label=f"{holdout:,} held-out images")
    axis.semilogx([chosen], [scores[chosen]], "*", markersize=14, label=f"chosen: l2 {chosen:g}")
    axis.set_xlabel("L2 strength")
    axis.set_ylabel("held-out accuracy")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    if title:
        axis.set_title(title)
    return save_figure(figure, path, dpi=100)


def feature_extractor(model):
    """The model up to its "features" layer."""
    return keras.Model(model.input, model.get_layer(FEATURES).output)


def cached_features(model, images, path, batch_size=128, chunk=2000, dtype="float32", verbose=False):
    """The "features" output (N, D) for `images`, as a read-only memory map of the .npy `path`, stored as
    `dtype` (FEATURE_DTYPES); a float16 cache is <`path` less .npy>.float16.npy, so that a cache of one
    dtype is never read for the other.

    Computed once, chunk by chunk, into <that path>.partial.npy (a kill keeps the finished chunks: the
    next call continues), then renamed. ValueError if a value exceeds the float16 range rather than
    storing it as inf (`_stored`).
    """
    dtype = check_choice("dtype", dtype, FEATURE_DTYPES)
    path = path if dtype == "float32" else f"{path[:-len('.npy')]}.{dtype}.npy"
    if os.path.isfile(path):
        return np.load(path, mmap_mode="r")
    extractor = feature_extractor(model)
    shape = (len(images), int(np.prod(extractor.output.shape[1:])))
    partial, done_file = path[:-len(".npy")] + ".partial.npy", path[:-len(".npy")] + ".done.json"
    done = 0
    if os.path.isfile(partial) and os.path.isfile(done_file):
        with open(done_file, encoding="utf-8") as handle:
            done = int(json.load(handle)["done"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out = np.lib.format.open_memmap(partial, mode="r+" if done else "w+", dtype=dtype, shape=shape)
    for start in progress(range(done, len(images), chunk), label=f"features of {len(images):,} images "
                          f"({shape[1]:,} values each)", verbose=verbose, unit="chunk"):
        part = extractor.predict(np.asarray(images[start:start + chunk]), batch_size=batch_size, verbose=0)
        out[start:start + len(part)] = _stored(part.reshape(len(part), -1), dtype)
        out.flush()
        with open(done_file + ".tmp", "w", encoding="utf-8") as handle:
            json.dump({"done": start + len(part)}, handle)
        os.replace(done_file + ".tmp", done_file)
    del out
    os.replace(partial, path)
    os.remove(done_file)
    return np.load(path, mmap_mode="r")


def _stored(features, dtype):
    """`features` as `dtype`. ValueError if that turns finite values into inf (beyond float16's 65504):
    clipping would silently change the classifier's inputs, and features that large (the CKNs' and Coates's
    are normalised or standardised) mean something upstream is wrong; float32 stores them."""
    with np.errstate(over="ignore"):  # counted below
        stored = features.astype(dtype, copy=False)
    beyond = np.count_nonzero(np.isinf(stored)) - np.count_nonzero(np.isinf(features))
    if beyond:
        raise ValueError(f"{beyond} feature values exceed the {dtype} range (|x| <= {np.finfo(dtype).max:g}): "
                         f"cache them with dtype 'float32' (the recipe's `feature_dtype`)")
    return stored
