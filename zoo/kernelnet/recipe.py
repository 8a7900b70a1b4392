"""How the kernelNet family trains (Muller 2018): the recipe hooks `kernelzoo train` calls.

- MNIST grid classifiers and the embedding network: the default image recipe (Adam, the
  preset's schedule, Keras loop); the embedding autoencoder reconstructs its input
  (`pixel_crossentropy`, no accuracy).
- MovieLens autoencoder (`RatingsRecipe`): full-batch L-BFGS-B (or Adam) on the masked
  squared error plus the model's regularisers; an "epoch" is `iterations_per_epoch`
  iterations, after which the run folder gets its log row and checkpoint; the iterate is
  chosen by early stopping on `val_fraction` of the training ratings (never on the test
  ratings); --validate-only reports that choice's val_rmse and never measures the test ratings
  (hyper-parameter choices, `kernelzoo protocol --grid`). `lbfgs_restart`: each epoch is a fresh
  L-BFGS-B call (its curvature memory dropped, as the rounds of kernelNet's public code); else one
  call runs through all epochs; a run whose L-BFGS-B converged (or stopped abnormally: a warning), or
  whose patience ran out, is over (`stopped` in its state: --resume trains it no further). --resume
  restarts L-BFGS-B from the last checkpoint (its curvature memory is not saved, so a resumed run is not
  bit-identical to an uninterrupted one unless `lbfgs_restart`); Adam's moments are saved with every
  checkpoint. `refit`: then the same initial weights trained on all training ratings (held-out ones
  included) for the selected number of epochs, the run's model (not under --validate-only).
"""
import dataclasses
import os
import re

import keras
import numpy as np

from kernelzoo.ops.checks import check_choice, float_in_range, positive_float, positive_int
from kernelzoo.progress import progbar
from kernelzoo.zoo import training
from kernelzoo.zoo.recipe import Data, Recipe, TinyRun, add_optimizer_argument, dataset_name

BEST_CHECKPOINT, INITIAL_CHECKPOINT, REFIT_DIR = "best.keras", "initial.keras", "refit"
BEST_FILES = re.compile(r"best-\d+\.keras")
FOLDS = ("u1", "u2", "u3", "u4", "u5")
TEST_FRACTION = 0.1  # the held-out share of --split random without --test-fraction


class ImageRecipe(Recipe):
    """The default image recipe; reconstruction presets train on their own pixels."""

    def loss(self, model):
        if model.name.endswith("autoencoder"):
            from kernelzoo.zoo.kernelnet.embedding import pixel_crossentropy
            return pixel_crossentropy
        return super().loss(model)

    def metrics(self, model):
        """Reconstructions: "mse", the mean squared error on pixels / 255 (the card's figure)."""
        if model.name.endswith("autoencoder"):
            from kernelzoo.zoo.kernelnet.embedding import pixel_squared_error
            return [keras.metrics.MeanMetricWrapper(pixel_squared_error, name="mse")]
        return super().metrics(model)

    def targets(self, model, data, split):
        x, y = super().targets(model, data, split)
        return (x, x) if model.name.endswith("autoencoder") else (x, y)

    def evaluate(self, model, data, split="test", verbose=0):
        """The default figures; embedding networks add their embedding's spread (`embedding.spread`) and
        the common share of their kernel-layer activations ("common", `embedding.common_share`)."""
        scores = super().evaluate(model, data, split, verbose=verbose)
        if model.name.startswith("kernelnet_embedding"):
            from kernelzoo.zoo.kernelnet import embedding
            x, y = super().targets(model, data, split)
            scores.update(embedding.spread(embedding.embed(model, x), y), common=embedding.common_share(model, x))
        return scores


class RatingsRecipe(Recipe):
    """The MovieLens autoencoder: full-batch L-BFGS-B with early stopping (module docstring)."""

    optimizers = ("lbfgs", "adam")

    def add_arguments(self, parser):
        parser.add_argument("--split", default=None,
                            help="u1..u5 (canonical ML-100K 80/20 folds; default the preset's) or random "
                                 "(--test-fraction, --seed; also for ml-1m and tfds movielens/* datasets)")
        parser.add_argument("--test-fraction", type=float, default=None,
                            help=f"held-out share with --split random (default {TEST_FRACTION}); a fold's is fixed")
        add_optimizer_argument(parser)
        parser.add_argument("--iterations-per-epoch", type=int, default=None,
                            help="optimizer iterations between two checks (log row, checkpoint)")
        parser.add_argument("--patience", type=int, default=None,
                            help="stop after this many checks without a better validation RMSE")
        parser.add_argument("--val-fraction", type=float, default=None,
                            help="training ratings held out to pick the best checkpoint (0: keep the last)")
        parser.add_argument("--refit", action="store_true", default=None,
                            help="after early stopping, train the same initial weights on every training rating "
                                 "for the selected number of epochs (OUT/refit): the run's model")
        parser.add_argument("--members", type=int, default=None,
                            help="an ensemble of this many models (seeds S, S + 10000, ...), their mean predicted")
        parser.add_argument("--validate-only", action="store_true",
                            help="report the RMSE on the --val-fraction ratings held out of the training part "
                                 "(val_rmse) and never measure the test ratings (hyper-parameter choices)")

    def options(self, **changes):
        """As `Recipe.options`; --test-fraction checked before the data loads, and with --split random set to the
        share held out (what config.json records)."""
        options = super().options(**changes)
        if options.split == "random" or options.test_fraction is not None:
            options.test_fraction = _test_fraction(options.test_fraction)
        return options

    def hyperparameters(self, preset, **changes):
        """As `Recipe.hyperparameters`; refuses what full-batch training would ignore: a batch size, and a
        learning rate for L-BFGS-B."""
        if changes.get("batch_size") is not None:
            raise ValueError("batch_size: the MovieLens recipe trains full-batch (every item at once); it takes no "
                             "batch size")
        hp = super().hyperparameters(preset, **changes)
        if changes.get("lr") is not None and hp["optimizer"] == "lbfgs":
            raise ValueError("lr: L-BFGS-B takes no learning rate (it is the Adam optimizer's: --optimizer adam)")
        return hp

    def validation_split(self, data, hp, options, seed=0):
        """The held-out ratings are drawn inside `fit` (`val_fraction`); --validate-only drops the test ratings."""
        if not getattr(options, "validate_only", False):
            return data
        if not hp["val_fraction"]:
            raise ValueError("--validate-only needs held-out training ratings: a --val-fraction above 0")
        return dataclasses.replace(data, test=None)

    def load_data(self, preset, data_dir=None, dataset=None, options=None, seed=0, verbose=1):
        """(train, test) ratings of a canonical fold (ML-100K's) or of a seeded random split of any MovieLens
        dataset (`ratings.load_ratings`; read at once: `verbose` draws nothing). A fold ignores --test-fraction
        here (`train` refuses it): `kernelzoo eval` reloads older fold runs, whose config.json records 0.1."""
        from kernelzoo.zoo.data.ratings import load_ml100k_fold, load_ratings, random_split
        options = self.options() if options is None else options
        name = dataset or preset.dataset.name
        split = options.split or preset.dataset.split
        fraction = _test_fraction(options.test_fraction)  # checked before the data loads
        if split in FOLDS:
            if name != "ml-100k":
                raise ValueError(f"--split {split}: u1..u5 are ML-100K's canonical folds: {name!r} has none; use "
                                 "--split random")
            train, test = load_ml100k_fold(int(split[1]), data_dir)
        elif split == "random":
            train, test = random_split(load_ratings(name, data_dir), fraction, seed)
        else:
            raise ValueError(f"split must be one of {FOLDS} (ml-100k) or 'random', got {split!r}")
        return Data(train=train, test=test, source=f"{name} {split}", dataset=dataset_name(preset, dataset))

    def train(self, preset, data, out_dir, *, options=None, **kwargs):
        """As `Recipe.train`; refuses --test-fraction with a canonical fold, whose test ratings are fixed, before a
        run folder is written (not in `load_data`: see there)."""
        options = self.options() if options is None else options
        split = options.split or preset.dataset.split
        if split in FOLDS and options.test_fraction is not None:
            raise ValueError(f"--test-fraction: the canonical fold {split} has fixed test ratings; --test-fraction "
                             "is the held-out share of --split random")
        return super().train(preset, data, out_dir, options=options, **kwargs)

    def build(self, preset, data, overrides=None, hp=None):
        return super().build(preset, None, dict({"n_users": data.train["n_users"]}, **(overrides or {})))

    def compile(self, model, hp, steps_per_epoch=None):
        """Adam on the masked squared error (for Keras `fit` / `evaluate` use; training is full-batch)."""
        from kernelzoo.zoo.kernelnet.movielens import masked_rating_loss
        model.compile(keras.optimizers.Adam(hp.get("lr", 1e-3)), masked_rating_loss)
        return model

    def steps_per_epoch(self, data, hp, max_steps_per_epoch=None):
        return hp["iterations_per_epoch"]

    def load_checkpoint(self, out_dir):
        """The last checkpoint's weights (`fit` reloads it with what it needs, Adam's moments included)."""
        return training.load_last(out_dir, compile=False)

    def evaluate(self, model, data, split="test", verbose=0):
        """RMSE on a split's ratings, predicted from all training ratings and clipped to the rating scale."""
        from kernelzoo.zoo.data import rating_matrix
        from kernelzoo.zoo.kernelnet import movielens
        predictions = movielens.predict_ratings(model, rating_matrix(data.train)[0], verbose=verbose)
        ratings = getattr(data, split)
        return {"rmse": movielens.rmse(predictions, ratings), "examples": len(ratings["ratings"])}

    def fit(self, model, data, out_dir, hp, *, seed=0, resume=False, verbose=1, strategy=None, config=None,
            tensorboard=True, max_steps_per_epoch=None, callbacks=None):
        """One model (`members` 1), or an ensemble: `members` models trained one after the other on the
        same ratings and held-out ratings, member m initialised with seed + 10000 m (member 0 is the
        single model of the same seed), each in OUT/member-m, averaged (`movielens.average_models`); a
        resume continues each member's run (refused where its config.json holds other settings).
        Writes no TensorBoard logs (`tensorboard` is ignored); takes no step cap, Keras callbacks or strategy."""
        from kernelzoo.zoo.data import rating_matrix
        from kernelzoo.zoo.kernelnet import movielens

        if strategy is not None:
            raise ValueError("strategy: the full-batch MovieLens recipe runs on one device")
        if max_steps_per_epoch is not None:
            raise ValueError("max_steps_per_epoch: an epoch of the full-batch MovieLens recipe is "
                             "`iterations_per_epoch` optimizer iterations (--iterations-per-epoch)")
        if callbacks:
            raise ValueError("callbacks: the full-batch MovieLens recipe does not run Keras `fit`; it takes no "
                             "Keras callbacks")
        members = _check_hyperparameters(hp)
        _held_out_ratings(data.train, hp, seed)  # refuses an empty held-out set before a run folder is written
        if members == 1:
            return self._fit_selected(model, data, out_dir, hp, seed=seed, resume=resume, verbose=verbose,
                                      config=config)
        out_dir = os.fspath(out_dir)
        config = _start_ensemble(model, out_dir, hp, resume, config)
        trained = []
        for member in range(members):
            folder = os.path.join(out_dir, f"member-{member}")
            if member:
                keras.utils.set_random_seed(seed + 10000 * member)
                model = keras.models.clone_model(model)  # fresh weights from the initializers
            result = self._fit_selected(model, data, folder, hp, seed=seed, resume=resume, verbose=verbose,
                                        config=dict(config, member=member))
            trained.append(result["model"])
        ensemble = movielens.average_models(trained)
        result = training.finish(ensemble, out_dir)
        fit, val = _held_out_ratings(data.train, hp, seed)
        if val is not None and not _refits(hp, data):  # refitted members have seen the held-out ratings
            result["val_rmse"] = movielens.rmse(movielens.predict_ratings(ensemble, rating_matrix(fit)[0]), val)
        return _validation_figure(result, data, out_dir)

    def _fit_selected(self, model, data, out_dir, hp, *, seed=0, resume=False, verbose=1, config=None):
        """`_fit_one`; with `refit` (held-out ratings and test ratings: not under --validate-only, which
        measures the early-stopped model), then the same initial weights trained on every training rating
        for the selected number of epochs, without early stopping, into OUT/refit: the run's model.keras
        (and so its test figure) is the refit's. A started refit is resumed; the selection is not re-run."""
        if not _refits(hp, data):
            return self._fit_one(model, data, out_dir, hp, seed=seed, resume=resume, verbose=verbose, config=config)
        out_dir, folder = os.fspath(out_dir), os.path.join(os.fspath(out_dir), REFIT_DIR)
        refitting = resume and training.read_state(folder) is not None
        if not refitting:
            self._fit_one(model, data, out_dir, hp, seed=seed, resume=resume, verbose=verbose, config=config,
                          keep_initial=True)
        selected = training.read_state(out_dir)["best"]
        initial = None if refitting else keras.models.load_model(
            os.path.join(out_dir, training.CHECKPOINTS, INITIAL_CHECKPOINT), compile=False)  # resumed: its checkpoint
        refit = self._fit_one(initial, data, folder, dict(hp, val_fraction=0, epochs=selected["epoch"]), seed=seed,
                              resume=refitting, verbose=verbose, config=config)
        result = training.finish(refit["model"], out_dir)
        result.update(selected_epoch=selected["epoch"], val_rmse=selected["val_rmse"])
        return result

    def _fit_one(self, model, data, out_dir, hp, *, seed=0, resume=False, verbose=1, config=None, keep_initial=False):
        """One model into the run folder `out_dir`: L-BFGS-B or Adam, early stopping (module docstring);
        `keep_initial`: also save the starting weights (checkpoints/initial.keras, what a refit starts from).
        A resumed run continues from its last checkpoint (`model` is then not used), with Adam's moments; one
        that stopped early (patience ran out, L-BFGS-B converged: `stopped` in its state) trains no further."""
        from kernelzoo.zoo.data import rating_matrix
        from kernelzoo.zoo.kernelnet import movielens
        from kernelzoo.zoo.kernelnet.optimize import adam_steps, fit_lbfgs

        optimizer, every, epochs = hp["optimizer"], hp["iterations_per_epoch"], hp["epochs"]
        start = training.start_run(out_dir, resume, config)
        out_dir = os.fspath(out_dir)
        state = training.read_state(out_dir) or {}
        if state:  # the checkpoint's weights, and the Adam optimizer it was compiled with
            model = training.load_last(out_dir, compile=optimizer == "adam")
        else:
            if optimizer == "adam":
                self.compile(model, hp)  # a fresh Adam, saved with every checkpoint
            if keep_initial:
                os.makedirs(os.path.join(out_dir, training.CHECKPOINTS), exist_ok=True)
                training.save_model(model, os.path.join(out_dir, training.CHECKPOINTS, INITIAL_CHECKPOINT))
        fit, val = _held_out_ratings(data.train, hp, seed)
        matrix, mask = (np.asarray(a) for a in rating_matrix(fit))
        best = dict(state.get("best") or {"val_rmse": float("inf"), "epoch": 0})
        status = {"epochs": start, "stopped": bool(state.get("stopped"))}
        checkpoints = os.path.join(out_dir, training.CHECKPOINTS)
        bar = progbar(epochs, f"{optimizer}: epochs of {every} full-batch iterations", verbose, "epoch",
                      ("loss", "rmse", "val_rmse"))

        def loss_fn(m):
            return movielens.masked_squared_error(matrix, mask, m(matrix, training=True))

        def check(loss, steps):
            """End of an epoch after `steps` iterations of this call: log row, best model, checkpoint; the state
            records `stopped` (and StopIteration is raised) when patience runs out or the epoch ended early."""
            status["epochs"] += 1
            done = status["epochs"]
            predictions = movielens.predict_ratings(model, matrix)
            row = {"epoch": done - 1, "iterations": start * every + steps, "loss": float(loss),
                   "rmse": movielens.rmse(predictions, fit)}
            if val is not None:
                row["val_rmse"] = movielens.rmse(predictions, val)
            training.append_log(out_dir, row)
            if not np.all(np.isfinite([row[key] for key in ("loss", "rmse", "val_rmse") if key in row])):
                raise FloatingPointError(
                    f"epoch {done}: loss {row['loss']}, rmse {row['rmse']}, val_rmse {row.get('val_rmse')}: the "
                    f"training diverged (lower `lr` or raise `lambda_2`); no checkpoint of it is written")
            if val is None or row["val_rmse"] < best["val_rmse"]:
                # a new file per best epoch, named by state.json once written: a kill in between leaves
                # the state's best file as it was
                best.update(val_rmse=row.get("val_rmse", float("nan")), epoch=done, file=f"best-{done:03d}.keras")
                os.makedirs(checkpoints, exist_ok=True)
                training.save_model(model, os.path.join(checkpoints, best["file"]))
            status["stopped"] = (row["iterations"] < done * every  # L-BFGS-B converged within the epoch
                                 or (val is not None and done - best["epoch"] >= hp["patience"]))
            training.save_checkpoint(model, out_dir, done, row, state={"best": best, "stopped": status["stopped"]})
            training.remove_files_but(checkpoints, BEST_FILES, {best["file"]})
            if bar is not None:
                bar.update(done, values=[(key, row[key]) for key in ("loss", "rmse", "val_rmse") if key in row])
            if status["stopped"]:
                raise StopIteration

        remaining = 0 if status["stopped"] else (epochs - start) * every
        if remaining > 0 and optimizer == "lbfgs":
            result = fit_lbfgs(model, loss_fn, maxiter=remaining, every=every, restart=bool(hp.get("lbfgs_restart")),
                               callback=lambda step, loss: check(loss, step))
            if result.nit < remaining and not status["stopped"]:  # converged: never seen by a check (no restart)
                _end_converged(check, result, out_dir, every, status["epochs"] > start)
        elif remaining > 0:
            run_adam = adam_steps(model, loss_fn, optimizer=model.optimizer)  # one optimizer for every epoch
            try:
                for epoch in range(epochs - start):
                    check(run_adam(every), (epoch + 1) * every)
            except StopIteration:
                pass
        if bar is not None and status["epochs"] < epochs:  # early stop or convergence: close the bar's line
            bar.update(status["epochs"], finalize=True)
        result = training.finish(keras.models.load_model(best_checkpoint(out_dir), compile=False), out_dir)
        result.update(selected_epoch=best["epoch"], val_rmse=best["val_rmse"])
        return _validation_figure(result, data, out_dir)


def _end_converged(check, result, out_dir, every, checked):
    """L-BFGS-B (one call) converged before its iterations ran out: between two checks, a last check on its final
    iterate; on a check (`checked` in this call, the iterate the last checkpoint holds), `stopped` added to the state
    so that a resume trains no further."""
    if result.nit % every or not checked:
        try:
            check(result.fun, result.nit)
        except StopIteration:
            pass
        return
    path = os.path.join(out_dir, training.CHECKPOINTS, training.STATE_FILE)
    training.write_json(path, dict(training.read_state(out_dir), stopped=True))


def best_checkpoint(out_dir):
    """The file of a run's early-stopped model: the best epoch's, as its state.json names it."""
    best = (training.read_state(out_dir) or {}).get("best", {})
    return os.path.join(os.fspath(out_dir), training.CHECKPOINTS, best.get("file", BEST_CHECKPOINT))  # or older runs'


def _refits(hp, data):
    """Whether `_fit_selected` refits: `refit` asked, held-out ratings to select with, test ratings to measure."""
    return bool(hp.get("refit") and hp["val_fraction"] and data.test is not None)


def _check_hyperparameters(hp):
    """The number of members, after checking every hyper-parameter `fit` uses under its own name, before a run
    folder is written."""
    check_choice("optimizer", hp["optimizer"], RatingsRecipe.optimizers)
    positive_int(hp["iterations_per_epoch"], "iterations_per_epoch")
    positive_int(hp["epochs"], "epochs")
    positive_int(hp["patience"], "patience")
    float_in_range(hp["val_fraction"], "val_fraction", 0.0, 1.0, "[)")
    if hp["optimizer"] == "adam":
        positive_float(hp["lr"], "lr")
    return positive_int(hp.get("members", 1), "members")


def _start_ensemble(model, out_dir, hp, resume, config):
    """Start (or with `resume` continue) the ensemble run in `out_dir`; returns the config its members record.

    The folder is a run of its own (`training.start_run`: refused unless `resume` once started), its checkpoint
    member 0's initial weights (what a resume starts it from). A resume passes no `config`: then the one of
    config.json (checked by `train_run`) with the asked hyper-parameters. Unlike a single run's, an ensemble's
    length (`epochs`, `patience`) cannot change on a resume: its finished members would keep the old one."""
    started = training.read_state(out_dir) is not None
    training.start_run(out_dir, resume, config)
    if not started:
        training.save_checkpoint(model, out_dir, 0)
    config = dict(config or training.read_config(out_dir) or {}, hyperparameters=hp)
    changes = training.config_changes(out_dir, config, run_length=True) if started else []
    if changes:
        raise ValueError(f"`resume`: the ensemble in {out_dir!r} was started with {'; '.join(changes)}: its members "
                         "share one recipe, so resume it with those settings or start a new run in another folder")
    return config


def _test_fraction(value):
    """The held-out share of a random split: `value` (--test-fraction) in (0, 1), or TEST_FRACTION when None."""
    return TEST_FRACTION if value is None else float_in_range(value, "--test-fraction", 0.0, 1.0, "()")


def _held_out_ratings(train, hp, seed):
    """(fit, val): `val_fraction` of the training ratings held out (seed + 1000), or (train, None)."""
    from kernelzoo.zoo.data import random_split

    if not hp["val_fraction"]:
        return train, None
    fit, val = random_split(train, float(hp["val_fraction"]), seed=seed + 1000)
    if not len(val["ratings"]):  # no val_rmse, no best epoch
        raise ValueError(f"`val_fraction`={hp['val_fraction']!r} holds out none of the {len(train['ratings'])} "
                         "training ratings: choose a larger one, or 0 (keep the last epoch)")
    return fit, val


def _validation_figure(result, data, out_dir):
    """--validate-only (no test ratings): the held-out ratings' val_rmse becomes the run's metrics.json."""
    if data.test is None:
        result["metrics"] = {"val_rmse": result["val_rmse"]}
        training.write_json(os.path.join(os.fspath(out_dir), training.METRICS_FILE), result["metrics"])
    return result


def recipe_for(preset):
    """RatingsRecipe for the MovieLens autoencoder, ImageRecipe for the MNIST networks."""
    return RatingsRecipe() if preset.task == "rating_prediction" else ImageRecipe()


def tiny_runs():
    """A one-layer grid classifier and the embedding autoencoder on 12x12 stripes, the MovieLens
    autoencoder on a planted low-rank matrix (L-BFGS-B: a resumed run restarts its memory)."""
    from kernelzoo.zoo.data import random_split
    from kernelzoo.zoo.data.synthetic import planted_ratings, stripes
    x, y = stripes(96, size=12, channels=1)
    images = Data(train=(x, y), test=stripes(30, size=12, channels=1, seed=1), source="stripes 12x12",
                  class_names=("h", "v", "flat"))
    train, test = random_split(planted_ratings(), 0.2, seed=0)
    ratings = Data(train=train, test=test, source="planted rank-2 ratings")
    hp = {"epochs": 4, "batch_size": 16, "lr": 0.01}
    grid = {"grids": (2,), "grid_sides": (4,), "gammas": (25.0,), "image_size": 12}
    embedding = {"encoder": (16,), "grid_side": 4, "decoder": (8,), "image_size": 12}
    return [TinyRun("kernelnet_mnist_prior", images, grid, hp),
            TinyRun("kernelnet_embedding_mnist_ae", images, embedding, dict(hp, lr=0.003)),
            TinyRun("kernelnet_movielens_100k", ratings, {"hidden": (16,), "lambda_2": 0.5, "lambda_0": 0.001},
                    {"epochs": 4, "iterations_per_epoch": 10, "val_fraction": 0.1, "patience": 4},
                    exact_resume=False)]
