"""The zoo's training loop and run folder, shared by every family.

A run folder holds:
  config.json          what was run (preset, overrides, hyper-parameters, seed, dataset, strategy, host)
  log.csv              one row per epoch (Keras CSVLogger columns: epoch, loss, metrics, val_*)
  checkpoints/         epoch-NNN.keras (the last `keep` of them), last.keras + state.json (resume)
  model.keras          the final model
  metrics.json         the final measured figures (e.g. test_accuracy, test_rmse)
  training_curves.png  every logged metric per epoch
  tensorboard/         (Keras loops, when tensorboard is installed)

`train(model, (x, y), out_dir=..., epochs=...)` is the Keras loop for a compiled model:
- tf.data over uint8 arrays held in memory (decoded once), each epoch in a permutation that
  depends only on (seed, epoch), batches gathered in parallel and prefetched; nothing is
  augmented; the batch size is global (split over the replicas of a tf.distribute strategy);
- an optional learning-rate function of the epoch index only (`step_schedule`, `milestone_schedule`);
- callbacks: progress bar, CSV log, TensorBoard, a checkpoint every epoch and the resume state.
  `resume=True` reloads it and continues with the next epoch, on the same data order and
  learning rate, so a killed run ends with the weights of an uninterrupted one; random layers (Dropout,
  location noise) included: the states of their Keras random generators, which the .keras file leaves
  out, are in state.json (`random_states`). A resumed run must have the settings of its config.json
  (`start_run` checks), and log.csv loses the rows of epochs after the checkpoint. A folder whose state.json
  names a checkpoint that is gone is refused (`read_state`): neither resumed nor started again.
Loops that are not Keras `fit` (the kernelNet L-BFGS-B) write the same files with
`save_checkpoint`, `append_log` and `finish`.
"""
import bisect
import contextlib
import csv
import json
import math
import os
import re
import shutil
import time

import keras
import numpy as np

from kernelzoo.ops import checks
from kernelzoo.ops.checks import check_choice, int_in_range, positive_float, positive_int, positive_ints
from kernelzoo.zoo.plotting import pyplot, save_figure

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
CURVES_FILE = "training_curves.png"
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"
EPOCH_FILES = re.compile(r"epoch-(\d+)\.keras")
STRATEGIES = ("none", "mirrored", "multiworker")
# config.json entries a resumed run must share with the run it continues, and the hyper-parameters that say
# only how long it runs (a resume may extend it).
_RESUME_KEYS = ("preset", "builder", "config", "overrides", "hyperparameters", "options", "seed", "dataset")
_RUN_LENGTH = ("epochs", "patience")


def make_strategy(name):
    """A tf.distribute strategy by name, or None for "none".

    "mirrored": MirroredStrategy over the local GPUs, else over the logical CPU devices;
    "multiworker": MultiWorkerMirroredStrategy (the cluster comes from $TF_CONFIG).
    """
    name = check_choice("strategy", "none" if name is None else name, STRATEGIES)
    if name == "none":
        return None
    import tensorflow as tf
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def step_schedule(lr, epochs, drop_every=None, factor=0.1):
    """epoch -> lr * factor^(epoch // drop_every); drop_every defaults to half the epochs."""
    lr = positive_float(lr, "lr")
    epochs = positive_int(epochs, "epochs")
    drop_every = max(1, epochs // 2) if drop_every is None else positive_int(drop_every, "drop_every")
    factor = positive_float(factor, "factor")

    def schedule(epoch, current_lr=None):
        return float(lr * factor ** (int(epoch) // drop_every))

    return schedule


def milestone_schedule(lr, milestones, factor=0.1):
    """epoch -> lr * factor^(milestones reached): the lr drops at the start of each epoch index in `milestones`
    (strictly increasing; PyTorch's MultiStepLR stepped once per epoch). Milestones past the run's end never act."""
    lr = positive_float(lr, "lr")
    milestones = positive_ints(milestones, "milestones")
    if any(later <= earlier for earlier, later in zip(milestones, milestones[1:])):
        raise ValueError(f"`milestones` must be strictly increasing epochs, got {milestones!r}")
    factor = positive_float(factor, "factor")

    def schedule(epoch, current_lr=None):
        return float(lr * factor ** bisect.bisect_right(milestones, int(epoch)))

    return schedule


def epoch_order(size, epoch, seed):
    """The example order of `epoch` (a function of (seed, epoch) only)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(size)


def make_dataset(x, y, batch_size, *, epochs=1, start_epoch=0, seed=0, shuffle=True, steps_per_epoch=None):
    """A tf.data.Dataset of (float32 inputs, targets) batches for epochs [start_epoch, epochs).

    x stays in memory in its dtype (uint8 images: a tf.Variable, not a graph constant); each
    batch is a parallel gather + cast to float32, prefetched. y holds one target per example
    (integer labels, or anything with N rows). With shuffle, epoch e uses
    `epoch_order(N, e, seed)`; with `steps_per_epoch`, only that many batches of each epoch are kept.
    """
    import tensorflow as tf

    x, y = check_pair((x, y), "data")
    batch_size = positive_int(batch_size, "batch_size")
    epochs = positive_int(epochs, "epochs")
    start_epoch = int_in_range(start_epoch, "start_epoch", 0, epochs - 1)
    size = len(x)
    if shuffle:
        orders = np.concatenate([epoch_order(size, e, seed) for e in range(start_epoch, epochs)])
    else:
        orders = np.tile(np.arange(size), epochs - start_epoch)
    # Batches never straddle two epochs: split each epoch's order separately.
    per_epoch = orders.reshape(epochs - start_epoch, size)
    with tf.device("/cpu:0"):
        inputs = tf.Variable(x, trainable=False, name="inputs")
        targets = tf.Variable(y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) and y.ndim == 1 else y,
                              trainable=False, name="targets")
    take = -1 if steps_per_epoch is None else positive_int(steps_per_epoch, "steps_per_epoch")
    index = tf.data.Dataset.from_tensor_slices(per_epoch).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size).take(take))

    def gather(batch):
        target = tf.gather(targets, batch)
        if target.dtype != tf.int32:
            target = tf.cast(target, tf.float32)
        return tf.cast(tf.gather(inputs, batch), tf.float32), target

    options = tf.data.Options()
    options.deterministic = True
    batches = math.ceil(size / batch_size) if take < 0 else min(take, math.ceil(size / batch_size))
    index = index.apply(tf.data.experimental.assert_cardinality((epochs - start_epoch) * batches))
    dataset = index.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.with_options(options)
    dataset._kernelzoo_keepalive = (inputs, targets)  # keep the variables alive with the dataset
    return dataset


# ----------------------------------------------------------------------------- run folder


def save_checkpoint(model, out_dir, epoch, logs=None, keep=2, state=None):
    """After `epoch` epochs: checkpoints/epoch-NNN.keras, state.json (epoch, logs, `state`, the checkpoint's
    file name, the model's `random_states`) and a copy as last.keras.

    Files are written to a temporary name and renamed, and state.json names the epoch file it goes with, so
    a kill at any point leaves a state and a checkpoint of the same epoch; only the last `keep` epoch files
    are kept.
    """
    folder = os.path.join(out_dir, CHECKPOINTS)
    os.makedirs(folder, exist_ok=True)
    name = f"epoch-{epoch:03d}.keras"
    save_model(model, os.path.join(folder, name))
    write_json(os.path.join(folder, STATE_FILE),
               dict(state or {}, epoch=int(epoch), checkpoint=name,
                    logs={k: float(v) for k, v in (logs or {}).items()}, time=time.time(),
                    random_states=[np.asarray(v).tolist() for v in random_states(model)]))
    last = os.path.join(folder, LAST_CHECKPOINT)
    shutil.copyfile(os.path.join(folder, name), last + ".tmp")
    os.replace(last + ".tmp", last)
    prune_numbered_files(folder, EPOCH_FILES, positive_int(keep, "keep_checkpoints"))


def prune_numbered_files(folder, pattern, keep):
    """Remove the files of `folder` whose names match `pattern` (a compiled regex whose group 1 is a number)
    but the `keep` highest-numbered ones."""
    numbered = sorted((int(match.group(1)), name) for name in os.listdir(folder)
                      if (match := pattern.fullmatch(name)))
    remove_files_but(folder, pattern, {name for _, name in numbered[-keep:]})


def remove_files_but(folder, pattern, keep):
    """Remove the files of `folder` whose names match `pattern` (a compiled regex) but the names in `keep`."""
    for name in os.listdir(folder):
        if pattern.fullmatch(name) and name not in keep:
            os.remove(os.path.join(folder, name))


class EpochCheckpoint(keras.callbacks.Callback):
    """`save_checkpoint` at the end of every epoch of a Keras `fit`."""

    def __init__(self, out_dir, keep=2, state=None):
        super().__init__()
        self.out_dir, self.keep, self.state = out_dir, positive_int(keep, "keep_checkpoints"), dict(state or {})

    def on_epoch_end(self, epoch, logs=None):
        save_checkpoint(self.model, self.out_dir, epoch + 1, logs, self.keep, self.state)


def read_state(out_dir):
    """The resume state of a run folder (dict with "epoch"), or None when it has no state.json.

    ValueError naming `out_dir` when the checkpoint state.json names is missing: the run could not resume, and a
    new one would overwrite its config.json and log.csv. (last.keras, a copy of the newest checkpoint saved, does
    not say its epoch: a kill between state.json and the copy leaves the previous one.)
    """
    path = os.path.join(out_dir, CHECKPOINTS, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        state = json.load(handle)
    checkpoint = _checkpoint_path(out_dir, state)
    if not os.path.isfile(checkpoint):
        raise ValueError(f"`out_dir` {os.fspath(out_dir)!r} holds a run whose {CHECKPOINTS}/{STATE_FILE} (epoch "
                         f"{state.get('epoch')}) names {os.path.basename(checkpoint)}, which is missing: restore it "
                         "to resume the run, or choose another out_dir")
    return state


def _checkpoint_path(out_dir, state):
    """The checkpoint saved with `state` (runs before it was named there: last.keras)."""
    return os.path.join(out_dir, CHECKPOINTS, state.get("checkpoint", LAST_CHECKPOINT))


def load_last(out_dir, compile=True):
    """The model of the last checkpoint (weights, and optimizer state when `compile`): the one its state.json
    names, so that weights and epoch count always match; with the random states state.json records."""
    import kernelzoo  # noqa: F401  (registers the custom layers)
    state = read_state(out_dir)
    path = _checkpoint_path(out_dir, state) if state is not None else os.path.join(out_dir, CHECKPOINTS,
                                                                                     LAST_CHECKPOINT)
    model = keras.models.load_model(path, compile=compile)
    saved = (state or {}).get("random_states")  # None: a checkpoint saved before they were recorded
    if saved is not None:
        variables = random_states(model)
        if len(saved) != len(variables):
            raise ValueError(f"`out_dir` {out_dir!r}: state.json holds {len(saved)} random states, its checkpoint's "
                             f"model has {len(variables)} random generators")
        for variable, value in zip(variables, saved):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    return model


def random_states(model):
    """The state variables of the Keras random generators (SeedGenerator) of `model` and its nested layers, in
    model order: its variables that are not weights, which `model.save` leaves out."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def start_run(out_dir, resume, config=None):
    """The completed epochs of the run in `out_dir` (0 for a new run, whose config.json is written).

    Refuses to overwrite a run unless `resume`, and to resume one with other settings than its
    config.json holds (preset, builder config, overrides, hyper-parameters but `epochs` and `patience`,
    options, seed):
    the data order, the held-out images or the model would silently change half-way.
    """
    out_dir = checks.path(out_dir, "out_dir")
    state = check_not_overwriting(out_dir, resume)
    os.makedirs(out_dir, exist_ok=True)
    if state is None and config is not None:
        write_json(os.path.join(out_dir, CONFIG_FILE), config)
    if state is not None and config is not None:
        check_resumed_config(out_dir, config)
    _trim_log(out_dir, 0 if state is None else int(state["epoch"]))  # rows a kill left after the checkpoint
    return 0 if state is None else int(state["epoch"])


def check_not_overwriting(out_dir, resume):
    """The resume state of the run in `out_dir` (None: no run there); a run there without `resume` is refused.
    Recipes call it before their initialisation (k-means, L-BFGS, a pre-training stage) too, not only here."""
    state = read_state(out_dir)
    if state is not None and not resume:
        raise ValueError(f"`out_dir`={out_dir!r} already holds a run ({CHECKPOINTS}/{STATE_FILE}); pass "
                         "resume=True (--resume) to continue it, or choose another out_dir")
    return state


def _trim_log(out_dir, epochs):
    """Drop the log.csv rows of epochs after the checkpoint (a kill between a row and its checkpoint; with no
    checkpoint yet, every row: a run killed in its first epoch starts again)."""
    path = os.path.join(out_dir, LOG_FILE)
    if not os.path.isfile(path):
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or "epoch" not in rows[0]:
        return
    column = rows[0].index("epoch")
    kept = [row for row in rows[1:] if len(row) > column and _number(row[column]) < epochs]  # NaN: dropped
    if len(kept) < len(rows) - 1:
        with open(path + ".tmp", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([rows[0]] + kept)
        os.replace(path + ".tmp", path)


def read_config(out_dir):
    """The config.json of the run folder `out_dir` (what was run), or None."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def config_changes(out_dir, config, run_length=False):
    """["key before -> now", ...]: the settings (`_RESUME_KEYS`) in which `config` differs from the run's
    config.json; entries the saved one lacks (such as defaults added since) pass. Epochs and patience only say
    how long a run goes: they count only with `run_length` (a finished run of another length is another run)."""
    saved = read_config(out_dir)
    if saved is None:
        return []
    config = json.loads(json.dumps(config, default=str))  # tuples as lists, as saved
    ignored = () if run_length else _RUN_LENGTH
    changes = []
    for key in _RESUME_KEYS:
        if key not in saved or key not in config:
            continue
        before, now = saved[key], config[key]
        if isinstance(before, dict) and isinstance(now, dict):
            # the user's overrides must match both ways; elsewhere only what both configs name
            names = sorted(set(before) | set(now) if key == "overrides" else set(before) & set(now))
            changes += [f"{key}.{name} {before.get(name)!r} -> {now.get(name)!r}" for name in names
                        if before.get(name) != now.get(name) and not (key == "hyperparameters" and name in ignored)]
        elif before != now:
            changes.append(f"{key} {before!r} -> {now!r}")
    return changes


def check_resumed_config(out_dir, config):
    """ValueError naming what differs when `config` (what a resume is asked to run) changes a setting of the
    run's config.json (`config_changes`)."""
    changes = config_changes(out_dir, config)
    if changes:
        raise ValueError(f"`resume`: {out_dir!r} was started with other settings ({'; '.join(changes)}): resume it "
                         f"with those of its {CONFIG_FILE}, or start a new run in another folder")


def append_log(out_dir, row):
    """Append one row (a dict with the same keys every time) to log.csv."""
    path = os.path.join(out_dir, LOG_FILE)
    new = not os.path.isfile(path)
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def finish(model, out_dir, title=None):
    """model.keras and training_curves.png; returns {model, model_path, history (log.csv rows), curves}."""
    path = os.path.join(out_dir, MODEL_FILE)
    save_model(model, path)
    result = {"model": model, "model_path": path, "history": read_log(os.path.join(out_dir, LOG_FILE))}
    if result["history"]:
        result["curves"] = plot_curves(result["history"], os.path.join(out_dir, CURVES_FILE), title=title or model.name)
    return result


def write_json(path, data):
    """Write JSON atomically (temporary file + rename)."""
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(path + ".tmp", path)


def save_model(model, path):
    """`model.save(path)` through a temporary file and a rename (a kill leaves the previous file whole).

    A compiled model's optimizer is built first: saved before its first step it would hold none of the slot
    variables a compiled load creates, and Keras would warn that it skips loading it (nothing is lost: the slots
    of a never-stepped optimizer are its initial values).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    temporary = path[:-len(".keras")] + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)


def tensorboard_available():
    """Whether the tensorboard package (needed by tf.summary) is importable."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the Keras loop


def train(model, train_data, *, out_dir, epochs, batch_size=64, lr_schedule=None, val_data=None, seed=0,
          resume=False, verbose=1, tensorboard=True, keep_checkpoints=2, max_steps_per_epoch=None, config=None,
          callbacks=None, strategy=None):
    """Train a compiled `model` on (inputs, targets) arrays into the run folder `out_dir`.

    Args:
      model: a compiled keras.Model (built and compiled in `strategy.scope()` when distributed); when
        resuming, the checkpoint's model (`load_last`) or None to load it here.
      train_data, val_data: (x (N, ...), y (N, ...)) pairs; val_data optional.
      epochs, batch_size: the loop; the batch size is global.
      lr_schedule: epoch -> learning rate (e.g. `step_schedule`), or None to keep the optimizer's own.
      seed: data order seed.
      resume: continue from out_dir/checkpoints if a state is there (else start fresh).
      max_steps_per_epoch: cap the steps of each epoch (quick runs and tests).
      config: written to config.json when the run starts.
      strategy: a tf.distribute strategy (the checkpoint is reloaded in its scope).
    Returns a dict: model, model_path, history (log.csv rows), curves.
    """
    epochs = positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    if max_steps_per_epoch is not None:
        max_steps_per_epoch = positive_int(max_steps_per_epoch, "max_steps_per_epoch")
    x, y = check_pair(train_data, "train_data")
    start_epoch = start_run(out_dir, resume, config)
    out_dir = os.fspath(out_dir)
    if start_epoch:
        if model is None:
            with strategy.scope() if strategy else contextlib.nullcontext():
                model = load_last(out_dir)
        if verbose:
            print(f"resuming {out_dir} after epoch {start_epoch}/{epochs}", flush=True)
    elif not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}")
    if not getattr(model, "compiled", False):
        raise ValueError(f"`model` {model.name!r} must be compiled (the family recipe's compile hook does it)")
    steps = math.ceil(len(x) / batch_size)
    if max_steps_per_epoch is not None:
        steps = min(steps, max_steps_per_epoch)
    callbacks = list(callbacks or [])
    if lr_schedule is not None:
        callbacks.append(keras.callbacks.LearningRateScheduler(lr_schedule))
    callbacks += [keras.callbacks.CSVLogger(os.path.join(out_dir, LOG_FILE), append=start_epoch > 0),
                  EpochCheckpoint(out_dir, keep=keep_checkpoints, state={"seed": seed})]
    if tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"), write_graph=False))
    elif tensorboard and verbose:
        print("tensorboard is not installed: TensorBoard logs skipped (log.csv is written)", flush=True)
    if start_epoch < epochs:
        dataset = make_dataset(x, y, batch_size, epochs=epochs, start_epoch=start_epoch, seed=seed,
                               steps_per_epoch=steps)
        validation = None
        if val_data is not None:
            validation = make_dataset(*check_pair(val_data, "val_data"), 256, shuffle=False)
        model.fit(dataset, epochs=epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
                  validation_data=validation, callbacks=callbacks, verbose=verbose, shuffle=False)
    return finish(model, out_dir)


def evaluate(model, data, batch_size=256, verbose=0):
    """{"loss", metrics..., "examples"} of a compiled model on (x, y)."""
    x, y = check_pair(data, "data")
    values = model.evaluate(make_dataset(x, y, batch_size, shuffle=False), verbose=verbose, return_dict=True)
    out = {key: float(value) for key, value in values.items()}
    out["examples"] = int(len(x))
    return out


def read_log(path):
    """Rows of a log.csv file as dicts of floats (empty list if missing)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _number(text):
    try:
        return float(text)
    except ValueError:
        return float("nan")


def plot_curves(history, path, title=None):
    """Every logged metric per epoch (train, and validation when logged) into a PNG; returns the path.

    Dotted lines mark learning-rate drops, dash-dotted ones the start of a new stage (layerwise runs)."""
    import matplotlib.ticker

    plt = pyplot()

    if not history:
        raise ValueError("`history` is empty: nothing to plot")
    skip = {"epoch", "learning_rate", "iterations", "stage"}
    metrics = [key for key in history[0] if key not in skip and not key.startswith("val_")]
    epochs = [row["epoch"] + 1 for row in history]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if all(key in row for row in history) and np.any(np.isfinite([row[key] for row in history])):
                axis.plot(epochs, [row[key] for row in history], style, marker="o", markersize=3,
                          label="validation" if prefix else "train")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
        for column, changed, style in (("learning_rate", lambda a, b: b < a, ":"),
                                       ("stage", lambda a, b: b != a, "-.")):
            values = [row.get(column) for row in history]
            for e, (before, after) in enumerate(zip(values, values[1:]), start=2):
                if before is not None and after is not None and changed(before, after):
                    axis.axvline(e - 0.5, color="grey", linestyle=style, linewidth=1)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path, dpi=100)


def check_pair(data, name):
    """(x, y) arrays with the same number of rows, else ValueError naming `name`."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"`{name}` must be an (inputs, targets) pair, got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"`{name}` inputs must be a non-empty array (N, ...), got shape {x.shape}")
    if y.shape[:1] != (x.shape[0],) or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"`{name}` targets must hold {x.shape[0]} numeric rows, got {y.dtype} {y.shape}")
    return x, y
