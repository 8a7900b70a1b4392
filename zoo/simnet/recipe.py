"""How the SimNet family trains (paper 000 Sec. 5-6): the recipe hooks `kernelzoo train` calls.

- initialise: the unsupervised initialisation on unlabeled training images (ZCA whitening,
  generalized-Gaussian mixture templates and weights, MEX offsets, k-means for the Coates
  baseline); --no-init keeps random templates but still fits the whitening (Sec. 6.3 ablation).
- train: --tune-weight-decay first picks the weight decay of the similarity weights and
  offsets on --holdout training images (the recipe's 5000 by default), then trains on the whole
  training set; --holdout / --validate-only are the recipe's validation protocol
  (kernelzoo.zoo.recipe: a held-out run, the test split never touched with --validate-only).
The rest (SGD with momentum, lr / 10 every lr_drop_every epochs, Keras loop) is the default recipe;
--precision mixed_bfloat16 trains under Keras's mixed policy and saves a float32 model (zoo/precision.py).

The Coates et al. baseline trains with CoatesRecipe instead: the same unsupervised initialisation
(whitening, k-means centroids, feature standardisation), then its linear classifier fitted once on
the frozen features (`kernelzoo.zoo.frozen_features`: an L2-SVM as Coates et al., L-BFGS, the L2
chosen on --holdout training images), not by SGD epochs through the triangle coding.
"""
import os
import time

import numpy as np

from kernelzoo.ops.checks import nonnegative_float, positive_int
from kernelzoo.zoo import training
from kernelzoo.zoo.frozen_features import FrozenFeaturesRecipe
from kernelzoo.zoo.precision import MixedPrecisionMixin
from kernelzoo.zoo.recipe import AdamW, Data, Recipe, TinyRun, add_optimizer_argument

# The variables the recipe's weight decay applies to (the builders' regularised ones): similarity weights and
# offsets (SimNet), kernels (baselines); never templates, biases or MEX parameters.
DECAYED = ("weights", "offsets", "kernel")


class SimNetRecipe(MixedPrecisionMixin, Recipe):
    """Image classification with the paper's unsupervised initialisation and weight-decay tuning.

    `weight_decay` is the paper's SGD decay (an L2 term built into the model) with sgd and adam; with adamw it
    is AdamW's decoupled decay of the same variables instead (the model gets no L2 term). `precision`
    (--precision mixed_bfloat16) is meant for the ConvNet baseline (oneDNN's bfloat16 convolutions:
    docs/benchmarks.md); the similarity and MEX kernels accumulate in float32 whatever their activations.
    """

    optimizers = ("sgd", "adam", "adamw")
    checkpoints_initialisation = True  # the ZCA and mixture fits: minutes a run killed in its first epoch keeps

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_optimizer_argument(parser)
        parser.add_argument("--momentum", type=float, default=None)
        parser.add_argument("--lr-drop-every", type=int, default=None,
                            help="epochs between lr / 10 steps (default: the recipe's, half of --epochs)")
        parser.add_argument("--weight-decay", type=float, default=None,
                            help="weight decay on similarity weights and offsets (baselines: all kernels): an L2 "
                                 "term with sgd and adam, decoupled (AdamW) with --optimizer adamw")
        parser.add_argument("--tune-weight-decay", default=None, metavar="W1,W2,...",
                            help="choose the weight decay among these on --holdout training images first "
                                 "(default the recipe's 5000; 'preset' = the recipe's grid), then train on "
                                 "the whole training set with it; not with --validate-only")
        add_init_images_argument(parser)
        parser.add_argument("--no-init", action="store_true",
                            help="random templates, unit weights, zero offsets (paper Sec. 6.3 ablation); the "
                                 "preprocessing (whitening) is still fitted")

    def build(self, preset, data, overrides=None, hp=None):
        """The builder's `weight_decay` is the recipe's (tuned by --tune-weight-decay); 0 with adamw, whose
        decay is the optimizer's (checked here all the same, before the initialisation's minutes). An override of
        it is refused: it would silently beat --weight-decay, every tuned value and adamw's decoupled decay."""
        if "weight_decay" in (overrides or {}):
            raise ValueError("overrides: `weight_decay` is the recipe's: give it as --weight-decay (or choose it "
                             "with --tune-weight-decay)")
        decoupled = hp is not None and hp["optimizer"] == "adamw"
        if decoupled:
            nonnegative_float(hp["weight_decay"], "weight_decay")
        weight_decay = {} if hp is None else {"weight_decay": 0.0 if decoupled else hp["weight_decay"]}
        return super().build(preset, data, {**weight_decay, **(overrides or {})})

    def optimizer(self, name, lr, hp, model):
        if name != "adamw":
            return super().optimizer(name, lr, hp, model)
        exclude = {variable.name for variable in model.trainable_variables} - set(DECAYED)
        return AdamW(learning_rate=lr, weight_decay=nonnegative_float(hp["weight_decay"], "weight_decay"),
                     exclude=exclude)

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        if not hp.get("unsupervised_init", True):
            return None
        return initialise_from_images(model, data, options.init_images, similarity=not options.no_init, seed=seed,
                                      verbose=verbose)

    def train(self, preset, data, out_dir, *, overrides=None, hp=None, options=None, seed=0, verbose=1, **kwargs):
        """The recipe's validation protocol (--holdout, --validate-only: `Recipe.train`), or with
        --tune-weight-decay: one held-out run per value, then the whole training set with the best."""
        hp = self.hyperparameters(preset) if hp is None else hp
        options = self.options() if options is None else options
        if options.validate_only and options.tune_weight_decay:
            raise ValueError("--tune-weight-decay with --validate-only: the tuning is held-out already (one "
                             "--holdout run per value) and ends with a run on the whole training set measured on the "
                             "test split; drop --validate-only, or give --weight-decay W for one held-out run")
        if not options.tune_weight_decay:
            return super().train(preset, data, out_dir, overrides=overrides, hp=hp, options=options, seed=seed,
                                 verbose=verbose, **kwargs)

        def run(folder, weight_decay, fit_data):
            return self.train_run(preset, fit_data, folder, overrides=overrides,
                                  hp=dict(hp, weight_decay=weight_decay), options=options, seed=seed,
                                  verbose=verbose, **kwargs)

        held_out = self.validation_split(data, hp, self.options(holdout=options.holdout, validate_only=True), seed=seed)
        weight_decay = self._tune(preset, held_out, out_dir, hp, options, run, verbose)
        return run(out_dir, weight_decay, data)

    def _tune(self, preset, held_out, out_dir, hp, options, run, verbose):
        """The weight decay with the best held-out accuracy (tuning.json in the run folder)."""
        grid = (list(hp.get("weight_decay_grid") or [0.0]) if options.tune_weight_decay == "preset"
                else weight_decays(options.tune_weight_decay))
        scores = {}
        for value in grid:
            result = run(os.path.join(out_dir, "tune", f"wd={decay_label(value)}"), value, held_out)
            scores[value] = result["history"][-1].get("val_accuracy", float("nan"))
            if verbose:
                print(f"weight decay {decay_label(value)}: held-out accuracy {scores[value]:.4f}", flush=True)
        chosen = max(scores, key=lambda v: scores[v])
        os.makedirs(out_dir, exist_ok=True)
        training.write_json(os.path.join(out_dir, "tuning.json"),
                            {"holdout": len(held_out.val[0]),
                             "scores": {decay_label(k): v for k, v in scores.items()}, "chosen": chosen})
        if verbose:
            print(f"chosen weight decay: {decay_label(chosen)}", flush=True)
        return chosen


def weight_decays(text):
    """The values of --tune-weight-decay "W1,W2,...": distinct finite numbers >= 0, else ValueError naming it."""
    name = "--tune-weight-decay"
    items = [item.strip() for item in str(text).split(",")]
    if not all(items):
        raise ValueError(f"`{name}` must be comma-separated numbers, got an empty item in {text!r}")
    values = [nonnegative_float(item, name) for item in items]
    if len(set(values)) < len(values):
        raise ValueError(f"`{name}` lists a value twice: {text!r}")
    return values


def decay_label(value):
    """A weight decay in folder names and tuning.json: its :g form where that reads back as the same float (1e-07),
    else its repr (1.0000001e-07), so that two values never share a folder."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


class CoatesRecipe(FrozenFeaturesRecipe):
    """Coates et al.: k-means triangle coding fitted without labels, then an L2-SVM on the frozen features."""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_init_images_argument(parser)

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        return initialise_from_images(model, data, options.init_images, seed=seed, verbose=verbose)


def add_init_images_argument(parser):
    """--init-images, shared by both recipes."""
    parser.add_argument("--init-images", type=int, default=5000,
                        help="unlabeled training images for the unsupervised initialisation")


def initialise_from_images(model, data, count, *, similarity=True, seed=0, verbose=0):
    """`unsupervised_init` on `count` training images drawn without replacement (seeded); its report."""
    from kernelzoo.zoo.simnet.init import unsupervised_init
    x = np.asarray(data.train[0])
    count = min(len(x), positive_int(count, "init_images"))
    sample = x[np.sort(np.random.default_rng(seed).choice(len(x), count, replace=False))]
    started = time.time()
    reports = unsupervised_init(model, sample, seed=seed, similarity=similarity, verbose=bool(verbose))
    if verbose:
        print(f"unsupervised initialisation on {count} images: {sorted(reports)} "
              f"({time.time() - started:.0f} s)", flush=True)
    return {name: value if isinstance(value, str) else {"log_likelihood": value["mixture"].log_likelihood}
            for name, value in reports.items()}


def recipe_for(preset):
    """The Coates et al. baseline trains with CoatesRecipe, every other SimNet-family preset with SimNetRecipe."""
    return CoatesRecipe() if preset.builder.endswith(".coates_baseline") else SimNetRecipe()


def tiny_runs():
    """A 4-template SimNet, a 4-filter ConvNet and an 8-centroid Coates network on 10x10 stripes (three classes)."""
    from kernelzoo.zoo.data.synthetic import stripes
    data = Data(train=stripes(96), test=stripes(30, seed=1), source="stripes 10x10x3", class_names=("h", "v", "flat"))
    hp = {"epochs": 4, "batch_size": 16, "lr": 0.05, "lr_drop_every": 3}
    # the SimNet takes a smaller lr: its logits are sums over 64 positions
    return [TinyRun("simnet_cifar10_wl2_n400", data, {"n": 4, "patch_size": 3}, dict(hp, lr=0.005)),
            TinyRun("convnet_cifar10", data, {"n": 4, "patch_size": 3, "dropout": 0.0}, hp),
            TinyRun("coates_cifar10_n1600", data, {"n": 8, "patch_size": 3},
                    {"epochs": 4, "batch_size": 16, "holdout": 24, "l2_grid": (1.0, 0.1, 0.01)})]
