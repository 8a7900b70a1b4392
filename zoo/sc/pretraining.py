"""Spatial contrasting pre-training of any Keras conv backbone (paper 002, Sec. 4.2 and 5).

    import kernelzoo.zoo.sc as sc
    model = ...                                   # any keras.Model with a 4D feature map at `layer_name`
    sc.pretrain(model, "block3_pool", unlabelled_images, patch_size=4, epochs=20)
    model.compile(...); model.fit(labelled_images, labels, ...)   # fine-tune from the SC weights

`pretrain` trains, in place, the layers of `model` up to `layer_name` with the spatial contrasting
criterion (kernelzoo.zoo.sc.loss) on unlabelled images: SGD with momentum, the learning rate divided
by 10 whenever the epoch's loss stops decreasing (`PlateauDrop`: by less than a 1e-3 share for
`patience` epochs), as the paper. The layers after `layer_name` are untouched. With `out_dir` it
writes a run folder like every zoo run (kernelzoo.zoo.training: config.json, log.csv, a checkpoint
every epoch, model.keras = `model` with its SC weights, training_curves.png) and `resume=True`
continues an interrupted one where it stopped, drawing the same batches and patches as an
uninterrupted run would (data order from (seed, epoch), patch positions from (seed, step) folded with
SC_STREAM, the optimizer's momenta saved beside each checkpoint).

`SpatialContrastingTrainer` is the Keras model behind it (a custom `train_step` on a backbone) for
those who want their own loop: `SpatialContrastingTrainer(backbone, patch_size).compile(optimizer)`
then `fit(images)`.
"""
import os
import re

import keras
import numpy as np
import tensorflow as tf

from kernelzoo.ops.checks import (boolean, check_choice, float_in_range, image_batch, int_in_range,
                                  nonnegative_float, nonnegative_int, normalize_tuple, positive_float, positive_int)
from kernelzoo.zoo import training
from kernelzoo.zoo.inputs import as_model_input
from kernelzoo.zoo.sc.loss import (DISTANCES, POOLINGS, SAMPLINGS, positions_grid, spatial_contrasting_from_images,
                                   spatial_contrasting_from_maps)

OPTIMIZER_FILE = "sc-optimizer-{epoch:03d}.npz"
OPTIMIZER_FILES = re.compile(r"sc-optimizer-(\d+)\.npz")
# Folded into the SC stream's seed: the patch positions of (seed, step) must not be the bits that the model's own
# stateless layers (RandomShiftFlip: (seed, call count), the same pair in the SC stage) draw their crops with.
SC_STREAM = 0x5C


class SpatialContrastingTrainer(keras.Model):
    """Trains `backbone` (a model whose output is (N, H, W, C) feature maps) with the SC criterion.

    `fit(images)` (targets, if any, are ignored) minimises `spatial_contrasting_from_maps` of the
    backbone's output (`sampling="features"`: patches of `patch_size` cells of its map) or
    `spatial_contrasting_from_images` (`sampling="image"`: crops of `patch_size` pixels of the input,
    the backbone run on the crops); the patch positions of a step are drawn with the stateless seed
    (`seed`, the optimizer's iteration count; folded with SC_STREAM). Regularisation losses of the backbone's layers are
    added. `color_jitter` (with sampling="image"): each crop's colours distorted on its own
    (`jitter_colors`). `map_shape` is the (h, w, C) map the criterion reads (one crop's with sampling="image").
    Every batch needs at least 2 images (the others are the negatives; InvalidArgumentError otherwise, a trailing
    batch of one image included, except where Keras compiles the step with XLA, as on a GPU: `pretrain` never
    makes such a batch). It is a training device, not a model to save: save the backbone's model instead.
    """

    def __init__(self, backbone, patch_size, distance="squared", pooling="mean", symmetric=True, seed=0,
                 sampling="features", color_jitter=0.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise ValueError(f"`backbone` must be a keras.Model, got {type(backbone).__name__}")
        if len(backbone.outputs) != 1 or len(backbone.outputs[0].shape) != 4:
            raise ValueError(f"`backbone` {backbone.name!r} must output one feature map (N, H, W, C), got "
                             f"{[tuple(o.shape) for o in backbone.outputs]}")
        if None in tuple(backbone.inputs[0].shape[1:]) + tuple(backbone.outputs[0].shape[1:]):
            raise ValueError(f"`backbone` {backbone.name!r} needs a fixed input size (input "
                             f"{tuple(backbone.inputs[0].shape)}, map {tuple(backbone.outputs[0].shape)}): the "
                             "patch grid is drawn from it; build the model on keras.Input((H, W, C))")
        self.patch_size = normalize_tuple(patch_size, "patch_size")
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.color_jitter = float_in_range(color_jitter, "color_jitter", 0.0, 1.25)
        if self.color_jitter and self.sampling != "image":
            raise ValueError(f"`color_jitter`={color_jitter} needs sampling='image' (the two patches of a feature "
                             "map come from one pass over the image: their colours cannot differ)")
        if self.sampling == "image":
            self.grid = positions_grid(backbone.inputs[0].shape[1:3], self.patch_size)
            backbone = _any_input_size(backbone)
            self.map_shape = _crop_map_shape(backbone, self.patch_size)
        else:
            self.grid = positions_grid(backbone.outputs[0].shape[1:3], self.patch_size)
            self.map_shape = tuple(backbone.outputs[0].shape[1:])
        self.backbone = backbone
        self.distance = check_choice("distance", distance, DISTANCES)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.symmetric = boolean(symmetric, "symmetric")
        self.seed = nonnegative_int(seed, "seed")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, inputs, training=False):
        return self.backbone(inputs, training=training)

    def sc_loss(self, images, step, training=True):
        """The SC loss of a batch with the patches of step `step`."""
        seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)]), SC_STREAM)
        if self.sampling == "image":
            return spatial_contrasting_from_images(self.backbone, images, self.patch_size, seed, self.distance,
                                                   self.pooling, self.symmetric, training, self.color_jitter)
        features = self.backbone(images, training=training)
        return spatial_contrasting_from_maps(features, self.patch_size, seed, self.distance, self.pooling,
                                             self.symmetric)

    def train_step(self, data):
        """One SGD step on the SC loss plus the backbone's regularisation losses; logs the SC loss alone (what
        PlateauDrop watches: the criterion, whatever the weight decay)."""
        images = data[0] if isinstance(data, (tuple, list)) else data
        variables = self.backbone.trainable_variables
        with tf.GradientTape() as tape:
            loss = self.sc_loss(images, self.optimizer.iterations)
            total = loss + tf.add_n(self.backbone.losses) if self.backbone.losses else loss
        self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        self.loss_tracker.update_state(self.sc_loss(images, 0, training=False))
        return {"loss": self.loss_tracker.result()}


def _any_input_size(backbone):
    """`backbone` (its layers shared) callable on images of any height and width: Keras checks a
    functional model's inputs against the shape it was built with, and the crops are smaller (the
    check is switched off on `backbone` itself, which then also takes other sizes)."""
    shape = (None, None) + tuple(backbone.inputs[0].shape[3:])
    inputs = keras.Input(shape, dtype=backbone.inputs[0].dtype, name=backbone.inputs[0].name)
    backbone.input_spec = None
    return keras.Model(inputs, backbone(inputs), name=backbone.name)


def _crop_map_shape(backbone, patch_size):
    """The (h, w, C) map of one crop; ValueError naming `patch_size` when the crops are too small to
    leave a feature map."""
    problem = f"`patch_size` {tuple(patch_size)} (pixels, sampling='image'): crops that small leave no feature map"
    try:
        shape = backbone.compute_output_shape((None,) + tuple(patch_size) + tuple(backbone.inputs[0].shape[3:]))
    except ValueError as error:
        raise ValueError(f"{problem} ({error})") from error
    if any(size is not None and size < 1 for size in shape[1:3]):
        raise ValueError(f"{problem} (output shape {shape})")
    return tuple(shape[1:])


class PlateauDrop(keras.callbacks.Callback):
    """lr * `factor` when the monitored loss has not decreased by more than a `min_delta` share of its
    best for `patience` epochs (then the count restarts); never below `min_lr`.

    Logs the learning rate the epoch ran with as "learning_rate". `history` (log.csv rows of the
    epochs already run, for a resumed run) replays the decisions so the count continues where it
    stopped; the learning rate itself is the optimizer's (restored with it).
    """

    def __init__(self, monitor="loss", factor=0.1, patience=3, min_delta=1e-3, min_lr=0.0, history=(), verbose=0):
        super().__init__()
        self.monitor = monitor
        self.factor = positive_float(factor, "factor")
        self.patience = positive_int(patience, "patience")
        self.min_delta, self.min_lr = nonnegative_float(min_delta, "min_delta"), nonnegative_float(min_lr, "min_lr")
        self.verbose = verbose
        self.best, self.wait = float("inf"), 0
        for row in history:
            if monitor in row:
                self._update(float(row[monitor]))

    def _update(self, value):
        """Whether to drop the rate after an epoch with loss `value`."""
        if value < self.best - self.min_delta * abs(self.best) or not np.isfinite(self.best):
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.wait = 0
            return True
        return False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = rate
        if self.monitor in logs and self._update(float(logs[self.monitor])) and rate > self.min_lr:
            new = max(rate * self.factor, self.min_lr)
            self.model.optimizer.learning_rate.assign(new)
            if self.verbose:
                print(f"epoch {epoch + 1}: {self.monitor} stopped decreasing, learning rate {rate:g} -> {new:g}",
                      flush=True)


class _RunFolder(keras.callbacks.Callback):
    """After every SC epoch: a log.csv row, the model's checkpoint, the optimizer's variables."""

    def __init__(self, model, out_dir, rows, state):
        super().__init__()
        self.target, self.out_dir, self.rows, self.state = model, out_dir, rows, state

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows.append(row)
        if self.out_dir is None:
            return
        folder = os.path.join(self.out_dir, training.CHECKPOINTS)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, OPTIMIZER_FILE.format(epoch=epoch + 1))
        np.savez(path[:-4] + ".tmp.npz", *[np.asarray(v.numpy()) for v in self.model.optimizer.variables])
        os.replace(path[:-4] + ".tmp.npz", path)
        training.append_log(self.out_dir, row)
        training.save_checkpoint(self.target, self.out_dir, epoch + 1, logs, state=self.state)
        training.prune_numbered_files(folder, OPTIMIZER_FILES, keep=2)  # as save_checkpoint keeps two epoch files


def feature_layer(model, layer_name):
    """The backbone of `model` up to `layer_name` (sharing its layers); ValueError naming the argument."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}")
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ValueError(f"`layer_name`={layer_name!r} is not a layer of {model.name!r} (layers: {names})")
    output = model.get_layer(layer_name).output
    if len(output.shape) != 4:
        raise ValueError(f"`layer_name`={layer_name!r} outputs shape {tuple(output.shape)}, not a feature map "
                         "(N, H, W, C)")
    return keras.Model(model.inputs, output, name=f"{model.name}_to_{layer_name}")


def pretrain(model, layer_name, images, *, patch_size, epochs=10, batch_size=128, lr=0.1, momentum=0.9,
             distance="squared", pooling="mean", symmetric=True, sampling="features", color_jitter=0.0, patience=3,
             min_lr=1e-5, seed=0, out_dir=None, resume=False, verbose=1, max_steps_per_epoch=None, callbacks=None,
             config=None):
    """Spatial contrasting pre-training of `model` up to `layer_name`, in place (module docstring).

    Args:
      model: a keras.Model (built; any conv backbone, e.g. a zoo model or keras.applications).
      layer_name: the layer whose (N, H, W, C) output the criterion reads.
      images: unlabelled images (N, H, W, C), numeric (raw pixels for the zoo's models: the
        preprocessing is inside them); reshaped to the model's input when only a unit channel differs.
      patch_size: int or (ph, pw), in cells of that feature map, or in pixels of the images with
        sampling="image" (at least 2 positions must remain).
      epochs, batch_size, lr, momentum: SGD; lr * 0.1 on a plateau of `patience` epochs, >= `min_lr`. A batch's
        other images are its negatives: batch_size >= 2, and an epoch whose last batch would hold one image drops
        it (the shuffled order leaves out another image each epoch).
      distance: "squared" or "euclidean"; pooling: "mean" or "flatten"; symmetric: Eq. 3's average.
      sampling: "features" (patches of the layer's map, Algorithm 1) or "image" (crops of the images,
        each through the network: `SpatialContrastingTrainer`); color_jitter: with "image", SimCLR's
        colour distortion of strength s on each crop (0: none).
      seed: data order and patch positions.
      out_dir: a run folder to write (checkpoint every epoch); None: train in memory only.
      resume: continue the run in `out_dir`.
      max_steps_per_epoch: cap the steps of each epoch (quick runs).
      callbacks: more Keras callbacks for the trainer's fit.
      config: the run's settings, written to out_dir/config.json when the run starts with these arguments
        ("spatial_contrasting"); a resume with other settings is refused (`training.check_resumed_config`; default
        {"hyperparameters": these arguments}, so epochs alone may change).
    Returns {"model", "history" (one dict per epoch: epoch, loss, learning_rate)} and, with `out_dir`,
    what `training.finish` returns (model_path, curves).
    """
    backbone = feature_layer(model, layer_name)
    trainer = SpatialContrastingTrainer(backbone, patch_size, distance, pooling, symmetric, seed, sampling,
                                        color_jitter, name=f"sc_{model.name}")
    images = as_model_input(image_batch(images, "images"), model)
    if len(images) < 2:
        raise ValueError(f"`images`: spatial contrasting needs at least 2 images (the others are each one's "
                         f"negatives), got {len(images)}")
    epochs, batch_size = positive_int(epochs, "epochs"), int_in_range(batch_size, "batch_size", 2)
    lr, momentum = positive_float(lr, "lr"), float(momentum)
    patience, min_lr = positive_int(patience, "patience"), nonnegative_float(min_lr, "min_lr")
    arguments = {"layer_name": layer_name, "patch_size": list(trainer.patch_size), "epochs": epochs,
                 "batch_size": batch_size, "lr": lr, "momentum": momentum, "distance": trainer.distance,
                 "pooling": trainer.pooling, "symmetric": trainer.symmetric, "sampling": trainer.sampling,
                 "color_jitter": trainer.color_jitter, "plateau_patience": patience, "min_lr": min_lr,
                 "seed": seed, "images": int(len(images))}
    start, rows = 0, []
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        settings = {"hyperparameters": arguments} if config is None else config
        start = training.start_run(out_dir, resume, {**settings, "spatial_contrasting": arguments})
        if start:
            model.set_weights(training.load_last(out_dir, compile=False).get_weights())
            rows = training.read_log(os.path.join(out_dir, training.LOG_FILE))  # start_run dropped later rows
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum))
    trainer.optimizer.build(backbone.trainable_variables)  # not inside the traced step (a second trace)
    if start:
        _restore_optimizer(trainer, out_dir, start)
    steps = -(-(len(images) - 1) // batch_size)  # the batches of at least 2 images: a trailing one of 1 is dropped
    if max_steps_per_epoch is not None:
        steps = min(steps, positive_int(max_steps_per_epoch, "max_steps_per_epoch"))
    if verbose:
        height, width, channels = trainer.map_shape
        what = "resuming" if start else "starting"
        unit = "-pixel crops of the images" if trainer.sampling == "image" else "-cell patches"
        print(f"spatial contrasting at {layer_name!r} ({height}x{width}x{channels} map, "
              f"{trainer.patch_size[0]}x{trainer.patch_size[1]}{unit} at {trainer.grid[0] * trainer.grid[1]} "
              f"positions, {trainer.distance} distance) on {len(images):,} images: {what} at epoch "
              f"{start + 1}/{epochs}", flush=True)
    if start < epochs:
        dataset = training.make_dataset(images, np.zeros(len(images), np.int32), batch_size, epochs=epochs,
                                        start_epoch=start, seed=seed, steps_per_epoch=steps)
        plateau = PlateauDrop("loss", 0.1, patience, min_lr=min_lr, history=rows, verbose=verbose)
        folder = _RunFolder(model, out_dir, rows, {"seed": seed, "stage": "spatial_contrasting"})
        trainer.fit(dataset, epochs=epochs, initial_epoch=start, steps_per_epoch=steps,
                    callbacks=[plateau, *(callbacks or []), folder], verbose=verbose, shuffle=False)
    if out_dir is None:
        return {"model": model, "history": rows}
    return training.finish(model, out_dir, title=f"{model.name}: spatial contrasting at {layer_name}")


def _restore_optimizer(trainer, out_dir, epoch):
    path = os.path.join(out_dir, training.CHECKPOINTS, OPTIMIZER_FILE.format(epoch=epoch))
    if not os.path.isfile(path):
        raise ValueError(f"`out_dir`={out_dir!r}: the optimizer state of epoch {epoch} ({path}) is missing; "
                         "the run cannot resume exactly (start a new run folder)")
    with np.load(path) as saved:
        values = [saved[f"arr_{index}"] for index in range(len(saved.files))]
    variables = trainer.optimizer.variables
    if len(values) != len(variables):
        raise ValueError(f"`out_dir`={out_dir!r}: {path} holds {len(values)} optimizer variables, the model "
                         f"needs {len(variables)} (another model?)")
    for variable, value in zip(variables, values):
        variable.assign(value)
