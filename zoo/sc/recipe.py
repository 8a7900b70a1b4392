"""How the spatial contrasting family trains (paper 002 Sec. 5): the recipe hooks `kernelzoo train` calls.

- load_data: the dataset's training images as the pool of the semi-supervised protocol
  (kernelzoo.zoo.sc.data): `labels_per_class` of each class drawn with the recipe's fixed
  `label_seed` (CIFAR-10 4k: 400), every image for spatial contrasting (STL-10: + the unlabelled split).
- held_out (of validation_split and `kernelzoo eval --holdout`): --holdout N images carved from the pool,
  disjoint from the labelled subset when it can be (CIFAR-10 4k), and out of the SC set.
- initialise: the SC stage (`kernelzoo.zoo.sc.pretrain`) at `sc_layer` on the SC images: SGD lr `sc_lr`
  (0.1), momentum, lr / 10 whenever the epoch's loss stops decreasing (`plateau_patience` epochs),
  `sc_epochs` epochs (`sc_sampling`: patches of that layer's map, or crops of the images), into the run
  folder's `pretrain/` (a run folder of its own: log, checkpoint every epoch, resumable). `sc_epochs` 0
  (the *_noinit presets): no SC, the network starts from its random init.
  `sc_rescale` (--sc-rescale): then rescale the SC-trained kernels that feed a BN to their initialiser's norm
  (`models.rescale_batch_normalized_kernels`: the same function, the fine-tuning's step sizes of a fresh network).
- compile / fit: supervised fine-tuning from those weights with the Keras loop: SGD lr `lr` (0.01),
  the same plateau rule on the training loss, the mild augmentation inside the model (RandomShiftFlip).
- `precision`: "float32" or "mixed_bfloat16" (Keras mixed precision: bfloat16 compute, float32
  variables; AMX on recent Xeons, `kernelzoo bench sc`); the saved model.keras is always float32.
--resume continues the fine-tuning from its last checkpoint, or, before it has one, the SC stage from its own.
"""
import argparse
import dataclasses
import os

import numpy as np

from kernelzoo.ops.checks import (boolean, check_choice, int_in_range, nonnegative_float, nonnegative_int,
                                  positive_float, positive_int)
from kernelzoo.zoo import training
from kernelzoo.zoo.precision import MixedPrecisionMixin
from kernelzoo.zoo.recipe import DEFAULTS, Recipe, TinyRun, dataset_name, limited_train, run_settings
from kernelzoo.zoo.sc.data import as_sc_data, carve_validation, sc_images, semi_supervised
from kernelzoo.zoo.sc.loss import DISTANCES, POOLINGS, SAMPLINGS
from kernelzoo.zoo.sc.models import rescale_batch_normalized_kernels
from kernelzoo.zoo.sc.pretraining import PlateauDrop, pretrain

PRETRAIN_DIR = "pretrain"
# What every SC recipe understands besides recipe.DEFAULTS (a preset's recipe overrides them).
SC_DEFAULTS = {"schedule": "plateau", "plateau_patience": 3, "min_lr": 1e-5, "sc_epochs": 10, "sc_lr": 0.1,
               "sc_batch_size": 128, "sc_layer": "sc_features", "sc_patch_size": 4, "sc_distance": "squared",
               "sc_pooling": "mean", "sc_sampling": "features", "sc_color_jitter": 0.0, "sc_symmetric": True,
               "sc_rescale": False, "holdout": 5000}
# The labelled subset is drawn when the data loads (`load_data`: --labels-per-class, else the preset's recipe, with
# its label_seed): data protocol, not hyper-parameters (a --grid of them would train every cell on one subset).
LABELLED_SUBSET = ("labels_per_class", "label_seed")


def sc_criterion(hp):
    """The SC criterion's arguments in hyper-parameters `hp` (as `pretrain` and `SpatialContrastingTrainer`
    take them), so every caller reads a preset's criterion the same way."""
    return {"patch_size": hp["sc_patch_size"], "distance": hp["sc_distance"], "pooling": hp["sc_pooling"],
            "symmetric": hp["sc_symmetric"], "sampling": hp["sc_sampling"], "color_jitter": hp["sc_color_jitter"]}


def build_training_state(model):
    """Create the optimizer's and the compiled metrics' variables now: Keras creates them inside the
    first traced train step otherwise (without a distribution strategy), and TensorFlow then traces
    the step a second time (seconds for these networks on a small CPU)."""
    model.optimizer.build(model.trainable_variables)
    build = getattr(model, "_symbolic_build", None)  # Keras 3's own pre-build (private; skipped if absent)
    if build is not None and len(model.inputs) == 1:
        example = np.zeros((1,) + tuple(model.inputs[0].shape[1:]), "float32")
        build(data_batch=(example, np.zeros((1,), "int32"), None))


class SCRecipe(MixedPrecisionMixin, Recipe):
    """Spatial contrasting pre-training, then supervised fine-tuning (module docstring)."""

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--sc-epochs", type=int, default=None,
                            help="epochs of spatial contrasting pre-training (0: none, the *_noinit protocol)")
        parser.add_argument("--sc-lr", type=float, default=None, help="initial learning rate of the SC stage")
        parser.add_argument("--sc-batch-size", type=int, default=None,
                            help="images per SC batch (the contrasted set; at least 2)")
        parser.add_argument("--sc-patch-size", type=int, default=None,
                            help="patch side in cells of the SC layer's map (in pixels with --sc-sampling image)")
        parser.add_argument("--sc-sampling", choices=SAMPLINGS, default=None,
                            help="patches of the SC layer's map (Algorithm 1) or crops of the images, each "
                                 "through the network (what the map's patches stand in for)")
        parser.add_argument("--sc-color-jitter", type=float, default=None,
                            help="with --sc-sampling image: SimCLR's colour distortion of this strength on each "
                                 "crop (0: none)")
        parser.add_argument("--sc-distance", choices=DISTANCES, default=None,
                            help="squared (Eq. 4) or euclidean distance between patch features")
        parser.add_argument("--sc-pooling", choices=POOLINGS, default=None,
                            help="a patch's feature: the mean of its cells or all of them")
        parser.add_argument("--sc-rescale", action=argparse.BooleanOptionalAction, default=None,
                            help="after the SC stage, rescale the SC-trained kernels that feed a BN to their "
                                 "initialiser's norm (no output changes; the fine-tuning's steps regain their "
                                 "size); default the preset's")
        parser.add_argument("--plateau-patience", type=int, default=None,
                            help="epochs without a lower loss before lr / 10 (both stages)")
        parser.add_argument("--labels-per-class", type=int, default=None,
                            help="labelled training images per class, drawn with the recipe's label_seed")

    def hyperparameters(self, preset, **changes):
        """SC_DEFAULTS < `Recipe.hyperparameters`, checked; the labelled subset's keys are not among them."""
        given = [key for key in LABELLED_SUBSET if changes.get(key) is not None]
        if given:
            raise ValueError(f"`{given[0]}` draws the labelled subset when the data loads (--labels-per-class, and "
                             "the preset's label_seed): it is not a hyper-parameter")
        hp = {key: value for key, value in {**SC_DEFAULTS, **super().hyperparameters(preset, **changes)}.items()
              if key not in LABELLED_SUBSET}
        for key in set(SC_DEFAULTS) & set(DEFAULTS):  # schedule: the SC default unless the preset or a change says
            if key not in preset.recipe and changes.get(key) is None:
                hp[key] = SC_DEFAULTS[key]
        check_choice("sc_distance", hp["sc_distance"], DISTANCES)
        check_choice("sc_pooling", hp["sc_pooling"], POOLINGS)
        check_choice("sc_sampling", hp["sc_sampling"], SAMPLINGS)
        if hp["sc_color_jitter"] and hp["sc_sampling"] != "image":
            raise ValueError(f"`sc_color_jitter`={hp['sc_color_jitter']} needs sc_sampling='image' "
                             "(--sc-sampling image)")
        nonnegative_int(hp["sc_epochs"], "sc_epochs")
        positive_float(hp["sc_lr"], "sc_lr")
        int_in_range(hp["sc_batch_size"], "sc_batch_size", 2)  # a batch's other images are its negatives
        positive_int(hp["plateau_patience"], "plateau_patience")
        nonnegative_float(hp["min_lr"], "min_lr")
        boolean(hp["sc_symmetric"], "sc_symmetric")
        boolean(hp["sc_rescale"], "sc_rescale")
        return hp

    def load_data(self, preset, data_dir=None, dataset=None, options=None, seed=0, verbose=1):
        """The pool of the protocol (kernelzoo.zoo.sc.data); --limit-train N keeps N pool images of a
        seeded permutation (the labelled subset is then drawn among them)."""
        name = dataset or preset.dataset.name
        extra = None
        if os.path.basename(os.path.normpath(str(name))).lower().replace("-", "").startswith("stl10"):
            from kernelzoo.zoo.data.stl10 import load_stl10
            stl = load_stl10(name, data_dir)
            pool, test, source, class_names, extra = stl.train, stl.test, stl.source, stl.class_names, stl.unlabelled
        else:
            from kernelzoo.zoo.data import load_images
            images = load_images(name, data_dir, verbose=bool(verbose))
            pool, test, source, class_names = images.train, images.test, images.source, images.class_names
        pool = limited_train(pool, options, seed)
        per_class = getattr(options, "labels_per_class", None)
        per_class = preset.recipe.get("labels_per_class") if per_class is None else per_class
        return dataclasses.replace(semi_supervised(pool, test, source, class_names, per_class,
                                                   preset.recipe.get("label_seed", 0), extra),
                                   dataset=dataset_name(preset, dataset))

    def held_out(self, data, size, seed=0):
        """`carve_validation`: the --holdout images come from the pool and leave the SC set too."""
        return carve_validation(data, size, seed)

    def train_run(self, preset, data, out_dir, *, overrides=None, hp=None, options=None, seed=0, resume=False,
                  max_steps_per_epoch=None, strategy=None, **kwargs):
        hp = self.hyperparameters(preset) if hp is None else hp
        finetuning = resume and training.read_state(out_dir) is not None
        if strategy not in (None, "none") and hp["sc_epochs"] and not finetuning:
            raise ValueError("`strategy`: the spatial contrasting stage runs on one device; pre-train without "
                             "--strategy (or --sc-epochs 0), then fine-tune with it (--resume)")
        options = self.options() if options is None else options
        self._stage = {"out_dir": out_dir, "resume": resume, "max_steps_per_epoch": max_steps_per_epoch,
                       "settings": run_settings(preset, overrides, hp, options, seed)}  # a resumed SC stage checks them
        try:
            return super().train_run(preset, as_sc_data(data), out_dir, overrides=overrides, hp=hp, options=options,
                                     seed=seed, resume=resume, max_steps_per_epoch=max_steps_per_epoch,
                                     strategy=strategy, **kwargs)
        finally:
            self._stage = None

    def initialise(self, model, data, hp, options, seed=0, verbose=0):
        """The SC stage (module docstring); its report and the data protocol's sizes go to config.json ("init")."""
        data = as_sc_data(data)
        report = {"labelled_images": int(len(data.labelled)), "label_seed": data.label_seed,
                  "validation_images": 0 if data.validation is None else int(len(data.validation)),
                  "spatial_contrasting": None}
        if not hp["sc_epochs"]:
            return report
        stage = getattr(self, "_stage", None) or {}
        folder = None if stage.get("out_dir") is None else os.path.join(stage["out_dir"], PRETRAIN_DIR)
        images = sc_images(data)
        result = pretrain(model, hp["sc_layer"], images, **sc_criterion(hp), epochs=hp["sc_epochs"],
                          batch_size=hp["sc_batch_size"], lr=hp["sc_lr"], momentum=hp["momentum"],
                          patience=hp["plateau_patience"], min_lr=hp["min_lr"], seed=seed, out_dir=folder,
                          resume=stage.get("resume", False), verbose=verbose,
                          max_steps_per_epoch=stage.get("max_steps_per_epoch"), config=stage.get("settings"))
        last = result["history"][-1] if result["history"] else {}
        report["spatial_contrasting"] = {"images": int(len(images)), "epochs": hp["sc_epochs"], "layer": hp["sc_layer"],
                                         "final_loss": last.get("loss"), "run_folder": folder}
        if hp["sc_rescale"]:
            report["spatial_contrasting"]["rescaled"] = rescale_batch_normalized_kernels(model, hp["sc_layer"])
        return report

    def compile(self, model, hp, steps_per_epoch=None):
        """SGD (or Adam) at the recipe's lr; the plateau schedule is the `fit` callback (PlateauDrop)."""
        hp = {**DEFAULTS, **SC_DEFAULTS, **hp}
        if hp["schedule"] == "plateau":
            hp["schedule"] = "constant"
        super().compile(model, hp, steps_per_epoch)
        build_training_state(model)
        return model

    def fit(self, model, data, out_dir, hp, *, resume=False, verbose=1, callbacks=None, **kwargs):
        """The Keras loop with PlateauDrop (replayed from log.csv on --resume); then MixedPrecisionMixin's
        float32 copy of a mixed-precision model."""
        callbacks = list(callbacks or [])
        if hp["schedule"] == "plateau":
            state = training.read_state(out_dir) if resume else None
            rows = [] if state is None else [row for row in training.read_log(os.path.join(out_dir, training.LOG_FILE))
                                             if row["epoch"] < state["epoch"]]
            callbacks.insert(0, PlateauDrop("loss", 0.1, hp["plateau_patience"], min_lr=hp["min_lr"], history=rows,
                                            verbose=verbose))
            hp = dict(hp, schedule="constant")
        return super().fit(model, data, out_dir, hp, resume=resume, verbose=verbose, callbacks=callbacks, **kwargs)


def recipe_for(preset):
    """Every SC-family preset trains with SCRecipe."""
    return SCRecipe()


def tiny_runs():
    """The CIFAR-10 network at widths 8/16, one conv per block, on 12x12 stripes: 16 labels per class (48 of
    96 images), SC on all 96 (2 epochs, the preset's sampling: colour-jittered 8x8-pixel crops, 2x2 maps), then 3
    fine-tuning epochs."""
    from kernelzoo.zoo.data.synthetic import stripes
    data = semi_supervised(stripes(96, size=12), stripes(30, size=12, seed=1), "stripes 12x12x3", ("h", "v", "flat"),
                           labels_per_class=16, label_seed=0)
    hp = {"epochs": 3, "batch_size": 16, "lr": 0.05, "sc_epochs": 2, "sc_batch_size": 16, "sc_patch_size": 8}
    return [TinyRun("sc_cifar10_4k", data, {"widths": (8, 16), "head_width": 8, "block_depth": 1}, hp)]
