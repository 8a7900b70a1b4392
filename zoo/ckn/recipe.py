"""How the unsupervised CKNs train (Mairal 2016 Sec. 4; issue 14): the recipe hooks `kernelzoo train` calls.

- initialise: spherical k-means anchors for each CKN layer in turn, on patches of its input sampled
  uniformly over the training images and positions; each layer is frozen (its Nystrom factor
  becomes a stored constant) before the next is fitted. Labels are not used; the whitening has
  nothing to fit. The run folder's first checkpoint holds this stage, for --resume.
- fit: the centred, normalised features ("features" layer) of every training image, cached in
  chunks under the run folder; the linear classifier (`classifier_loss`: "squared_hinge", the
  reference's one-vs-rest L2-SVM loss, or "logistic") fitted on the training images minus
  `holdout` for each L2 value of `l2_grid`, from the largest down, each warm-started from the
  previous one, until `l2_patience` values bring no better held-out accuracy; then refitted on the
  whole training set with the best value. --validate-only stops before the refit (the test split
  is never touched).
The test split is measured once, by `Recipe.train_run`, after fit.

Design choices for ckn_cifar10_unsup_64_256, held-out accuracy with --limit-train 20000 --holdout 5000
--validate-only --kmeans-patches 100000 (15k training images, the same 5k held out):
  whitening=patches (per-image ZCA of 3x3 patches as channels, eps 0.1), logistic  0.7030 (l2 1e-3)
  whitening=image (the reference's), logistic                                     0.7140 (l2 3e-4)
  whitening=image, squared hinge                                                  0.7170 (l2 1e-3)
  whitening=image, squared hinge, nystrom_shift=0.01 (the reference's)            0.7176 (l2 1e-3)
"""
import argparse
import dataclasses
import os

import keras
import numpy as np

from kernelzoo.progress import progress
from kernelzoo.zoo import training
from kernelzoo.zoo.ckn.classifier import LOSSES, accuracy, fit_logistic
from kernelzoo.zoo.ckn.kmeans import init_ckn_layers
from kernelzoo.zoo.data import holdout_split
from kernelzoo.zoo.recipe import DEFAULTS, Data, Recipe, TinyRun

FEATURES = "features"
TUNING_FILE = "tuning.json"
_CHUNK = 2000  # images per cached feature file


class UnsupervisedCKNRecipe(Recipe):
    """Anchors without labels, then an L2-regularised linear classifier on the frozen features."""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--kmeans-patches", type=int, default=None,
                            help="patches sampled per CKN layer for spherical k-means")
        parser.add_argument("--classifier-loss", choices=LOSSES, default=None,
                            help="the linear classifier's loss (default the recipe's)")
        parser.add_argument("--l2-grid", type=_floats, default=None, metavar="L1,L2,...",
                            help="L2 strengths of the linear classifier to try on the held-out images "
                                 "(default the recipe's)")

    def validation_split(self, data, hp, options, seed=0):
        """The held-out images are chosen inside `fit` (the L2 path; --holdout sets how many, default the
        recipe's `holdout`), so the data stays whole; --validate-only drops the test split."""
        return dataclasses.replace(data, test=None) if options.validate_only else data

    def train_run(self, preset, data, out_dir, *, hp=None, options=None, **kwargs):
        hp = self.hyperparameters(preset) if hp is None else hp
        options = self.options() if options is None else options
        if options.holdout is not None:
            hp = dict(hp, holdout=options.holdout)
        if options.validate_only:
            hp = dict(hp, validate_only=True)
        return super().train_run(preset, data, out_dir, hp=hp, options=options, **kwargs)

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        return init_ckn_layers(model, np.asarray(data.train[0]), max_patches=hp["kmeans_patches"],
                               init=hp["kmeans_init"], max_iter=hp["kmeans_iterations"], seed=seed,
                               verbose=bool(verbose))

    def compile(self, model, hp, steps_per_epoch=None):
        """The default compile (for evaluate and fine-tuning); the classifier itself is fitted by L-BFGS."""
        return super().compile(model, {**DEFAULTS, **hp}, steps_per_epoch)

    def fit(self, model, data, out_dir, hp, *, seed=0, resume=False, verbose=1, config=None, callbacks=None,
            **unused):
        """The L2 path on the holdout, then the final classifier (module docstring). Each step (one L2
        value, then the refit) is an "epoch" of the run folder: a log row, a checkpoint, and
        on_epoch_begin / on_epoch_end of `callbacks`; --resume continues after the last one. The
        Keras-loop options (strategy, tensorboard, max_steps_per_epoch) do not apply."""
        state = training.read_state(out_dir) if resume else None
        training.start_run(out_dir, resume, config)
        if state is None:
            training.save_checkpoint(model, out_dir, 0, state={"scores": {}})
            state = {"epoch": 0, "scores": {}}
        else:
            model = training.load_last(out_dir, compile=False)
        x, y = data.train
        features = cached_features(model, x, os.path.join(out_dir, FEATURES), "train", hp["batch_size"], verbose)
        (rest, _), (held, _) = holdout_split(np.arange(len(y)), y, int(hp["holdout"]), seed=seed)
        grid = sorted((float(value) for value in hp["l2_grid"]), reverse=True)
        scores = {float(key): value for key, value in state["scores"].items()}
        head = model.get_layer("logits")
        first = len(grid) + 1 if state.get("final") else int(state["epoch"])
        for step in range(first, len(grid) + 1):
            best = _best(scores)
            final = len(scores) == len(grid) or (best is not None and len(scores) - list(scores).index(best)
                                                 > hp["l2_patience"])
            if final and hp.get("validate_only"):
                break
            for callback in callbacks or ():
                callback.on_epoch_begin(step)
            l2 = best if final else grid[len(scores)]
            rows = slice(None) if final else rest
            kernel, bias, report = fit_logistic(features[rows], y[rows], head.units, l2, start=head.get_weights(),
                                                max_iter=hp["lbfgs_iterations"],
                                                loss=hp.get("classifier_loss", "logistic"))
            head.set_weights([kernel, bias])
            if not final:
                scores[l2] = accuracy(features[held], y[held], kernel, bias)
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
        chosen = _best(scores)
        training.write_json(os.path.join(out_dir, TUNING_FILE),
                            {"holdout": len(held), "scores": {f"{k:g}": v for k, v in scores.items()}, "chosen": chosen})
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


def _best(scores):
    """The L2 value with the best held-out accuracy; on a tie the later (smaller) one. None if none yet."""
    return max(reversed(scores), key=scores.get) if scores else None


def cached_features(model, images, folder, prefix, batch_size, verbose=False):
    """The "features" layer output (N, D) for `images`, computed in chunks saved under `folder`
    (a chunk already there, from an interrupted run, is read back instead)."""
    extractor = keras.Model(model.input, model.get_layer("features").output)
    os.makedirs(folder, exist_ok=True)
    out = np.empty((len(images),) + tuple(extractor.output.shape[1:]), "float32")
    for start in progress(range(0, len(images), _CHUNK), label=f"features of {len(images):,} images",
                          verbose=verbose, unit="chunk"):
        path = os.path.join(folder, f"{prefix}-{len(images)}-{start // _CHUNK:03d}.npy")
        if not os.path.isfile(path):
            part = extractor.predict(images[start:start + _CHUNK], batch_size=batch_size, verbose=0)
            np.save(path[:-4] + ".tmp.npy", part)
            os.replace(path[:-4] + ".tmp.npy", path)
        out[start:start + _CHUNK] = np.load(path)
    return out


def tiny_runs():
    """A two-layer CKN on 12x12 stripes: k-means, then three L2 values and the refit."""
    from kernelzoo.zoo.data.synthetic import stripes
    data = Data(train=stripes(240, size=12), test=stripes(60, size=12, seed=1), source="stripes 12x12",
                class_names=("h", "v", "flat"))
    overrides = {"filters": (8, 16), "subsamplings": (2, 3)}
    hp = {"epochs": 4, "holdout": 60, "kmeans_patches": 3000, "l2_grid": (1.0, 0.1, 0.01)}
    return [TinyRun("ckn_cifar10_unsup_64_256", data, overrides, hp)]


def recipe_for(preset):
    """Every CKN-family preset so far is unsupervised (the supervised CKN-5 recipe is still to come)."""
    return UnsupervisedCKNRecipe()
