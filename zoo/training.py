"""A reusable, resumable Keras trainer for the zoo's image classifiers.

`train(model, (x, y), out_dir=..., epochs=...)`:
- tf.data over uint8 arrays held in memory (decoded once), each epoch in a
  permutation that depends only on (seed, epoch), batches gathered in parallel
  and prefetched; nothing is augmented (the paper does not augment);
- SGD with momentum, the learning rate a step function of the epoch index only
  (lr * 0.1^(epoch // drop_every), default: /10 after half the epochs);
- callbacks: progress bar, CSV log (log.csv), TensorBoard (tensorboard/), a
  checkpoint every epoch (checkpoints/epoch-NNN.keras, the last `keep_checkpoints`
  kept) and the resume state (checkpoints/last.keras + state.json: weights,
  optimizer state and epoch). `resume=True` reloads it and continues with the
  next epoch, on the same data order and learning rate, so a killed run ends
  with the weights of an uninterrupted one;
- at the end: model.keras, test-set evaluation (test_metrics.json) and the
  training curves (training_curves.png).
"""
import csv
import json
import math
import os
import shutil
import time

import keras
import numpy as np

from kernelzoo.ops.checks import positive_float, positive_int

STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"


def step_schedule(lr, epochs, drop_every=None, factor=0.1):
    """epoch -> lr * factor^(epoch // drop_every); drop_every defaults to half the epochs."""
    lr = positive_float(lr, "lr")
    epochs = positive_int(epochs, "epochs")
    drop_every = max(1, epochs // 2) if drop_every is None else positive_int(drop_every, "drop_every")
    factor = positive_float(factor, "factor")

    def schedule(epoch, current_lr=None):
        return float(lr * factor ** (int(epoch) // drop_every))

    return schedule


def epoch_order(size, epoch, seed):
    """The example order of `epoch` (a function of (seed, epoch) only)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(size)


def make_dataset(x, y, batch_size, *, epochs=1, start_epoch=0, seed=0, shuffle=True, steps_per_epoch=None):
    """A tf.data.Dataset of (float32 images, labels) batches for epochs [start_epoch, epochs).

    With `steps_per_epoch`, only the first that many batches of each epoch are kept.

    x stays uint8 in memory (a tf.Variable, not a graph constant); each batch is a
    parallel gather + cast, prefetched. With shuffle, epoch e uses `epoch_order(N, e, seed)`.
    """
    import tensorflow as tf

    x, y = _check_xy(x, y)
    batch_size = positive_int(batch_size, "batch_size")
    epochs = positive_int(epochs, "epochs")
    if not 0 <= start_epoch < epochs:
        raise ValueError(f"`start_epoch` must be in [0, {epochs}), got {start_epoch!r}")
    size = len(x)
    if shuffle:
        orders = np.concatenate([epoch_order(size, e, seed) for e in range(start_epoch, epochs)])
    else:
        orders = np.tile(np.arange(size), epochs - start_epoch)
    # Batches never straddle two epochs: split each epoch's order separately.
    per_epoch = orders.reshape(epochs - start_epoch, size)
    with tf.device("/cpu:0"):
        images = tf.Variable(x, trainable=False, name="images")
        labels = tf.Variable(y.astype(np.int32), trainable=False, name="labels")
    take = -1 if steps_per_epoch is None else positive_int(steps_per_epoch, "steps_per_epoch")
    index = tf.data.Dataset.from_tensor_slices(per_epoch).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size).take(take))

    def gather(batch):
        return tf.cast(tf.gather(images, batch), tf.float32), tf.gather(labels, batch)

    options = tf.data.Options()
    options.deterministic = True
    batches = math.ceil(size / batch_size) if take < 0 else min(take, math.ceil(size / batch_size))
    index = index.apply(tf.data.experimental.assert_cardinality((epochs - start_epoch) * batches))
    dataset = index.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.with_options(options)
    dataset._kernelzoo_keepalive = (images, labels)  # keep the variables alive with the dataset
    return dataset


def compile_model(model, lr=0.01, momentum=0.9):
    """SGD with momentum on the softmax loss of logits, with accuracy."""
    from kernelzoo.zoo.simnet.models import LOSS
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=positive_float(lr, "lr"),
                                                 momentum=float(momentum)),
                  loss=LOSS, metrics=["accuracy"])
    return model


class EpochCheckpoint(keras.callbacks.Callback):
    """Every epoch: checkpoints/epoch-NNN.keras, and the resume state last.keras + state.json.

    The .keras files hold weights and optimizer state; state.json the number of
    completed epochs. Files are written to a temporary name and renamed, so a kill
    during the save leaves the previous state intact.
    """

    def __init__(self, folder, keep=2, metadata=None):
        super().__init__()
        self.folder = folder
        self.keep = positive_int(keep, "keep_checkpoints")
        self.metadata = dict(metadata or {})
        os.makedirs(folder, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        epoch_file = os.path.join(self.folder, f"epoch-{epoch + 1:03d}.keras")
        _atomic_save(self.model, epoch_file)
        shutil.copyfile(epoch_file, os.path.join(self.folder, LAST_CHECKPOINT + ".tmp"))
        os.replace(os.path.join(self.folder, LAST_CHECKPOINT + ".tmp"), os.path.join(self.folder, LAST_CHECKPOINT))
        state = dict(self.metadata, epoch=epoch + 1, logs={k: float(v) for k, v in (logs or {}).items()},
                     time=time.time())
        _atomic_json(os.path.join(self.folder, STATE_FILE), state)
        old = sorted(f for f in os.listdir(self.folder) if f.startswith("epoch-") and f.endswith(".keras"))
        for name in old[:-self.keep]:
            os.remove(os.path.join(self.folder, name))


def tensorboard_available():
    """Whether the tensorboard package (needed by tf.summary) is importable."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _atomic_save(model, path):
    temporary = path[:-len(".keras")] + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)


def _atomic_json(path, data):
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(path + ".tmp", path)


def read_state(out_dir):
    """The resume state of a run folder (dict with "epoch"), or None."""
    path = os.path.join(out_dir, "checkpoints", STATE_FILE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(out_dir, "checkpoints", LAST_CHECKPOINT)):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def train(model, train_data, *, out_dir, epochs, batch_size=64, lr=0.01, momentum=0.9, lr_drop_every=None,
          val_data=None, test_data=None, seed=0, resume=False, verbose=1, tensorboard=True, keep_checkpoints=2,
          max_steps_per_epoch=None, metadata=None, callbacks=None):
    """Train `model` (uncompiled or compiled) on (x, y) uint8 arrays; see the module docstring.

    Args:
      model: the keras.Model (already initialised); ignored when resuming from a checkpoint.
      train_data, val_data, test_data: (x uint8 (N, H, W, C), y int (N,)) tuples; val/test optional.
      out_dir: run folder (log.csv, tensorboard/, checkpoints/, model.keras, test_metrics.json, PNG).
      epochs, batch_size, lr, momentum, lr_drop_every: the SGD recipe (lr / 10 every lr_drop_every
        epochs, default half the epochs).
      seed: data order seed.
      resume: continue from out_dir/checkpoints if a state is there (else start fresh).
      max_steps_per_epoch: cap the steps of each epoch (quick runs and tests).
      callbacks: extra Keras callbacks.
    Returns a dict: model, history (list of per-epoch dicts from log.csv), test metrics, paths.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ValueError(f"`out_dir` must be a path, got {out_dir!r}")
    out_dir = os.fspath(out_dir)
    epochs = positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    x, y = _check_xy(*_pair(train_data, "train_data"), name="train_data")
    checkpoints = os.path.join(out_dir, "checkpoints")
    state = read_state(out_dir)
    start_epoch = 0
    if state is not None and not resume:
        raise ValueError(f"`out_dir`={out_dir!r} already holds a run (checkpoints/{STATE_FILE}); pass "
                         "resume=True (--resume) to continue it, or choose another out_dir")
    if state is not None:
        import kernelzoo  # noqa: F401  (registers the custom layers)
        model = keras.models.load_model(os.path.join(checkpoints, LAST_CHECKPOINT))
        start_epoch = int(state["epoch"])
        if verbose:
            print(f"resuming {out_dir} after epoch {start_epoch}/{epochs}", flush=True)
    elif not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        compile_model(model, lr, momentum)
    os.makedirs(out_dir, exist_ok=True)
    steps = math.ceil(len(x) / batch_size)
    if max_steps_per_epoch is not None:
        steps = min(steps, positive_int(max_steps_per_epoch, "max_steps_per_epoch"))
    schedule = step_schedule(lr, epochs, lr_drop_every)
    callbacks = list(callbacks or []) + [keras.callbacks.LearningRateScheduler(schedule),
                 keras.callbacks.CSVLogger(os.path.join(out_dir, "log.csv"), append=start_epoch > 0),
                 EpochCheckpoint(checkpoints, keep=keep_checkpoints,
                                 metadata=dict(metadata or {}, epochs=epochs, batch_size=batch_size, lr=lr,
                                               momentum=momentum, seed=seed))]
    if tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"), write_graph=False))
    elif tensorboard and verbose:
        print("tensorboard is not installed: TensorBoard logs skipped (log.csv is written)", flush=True)
    if start_epoch < epochs:
        dataset = make_dataset(x, y, batch_size, epochs=epochs, start_epoch=start_epoch, seed=seed,
                               steps_per_epoch=steps)
        validation = None
        if val_data is not None:
            validation = make_dataset(*_check_xy(*_pair(val_data, "val_data"), name="val_data"), 256,
                                      shuffle=False)
        model.fit(dataset, epochs=epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
                  validation_data=validation, callbacks=callbacks, verbose=verbose, shuffle=False)
    final = os.path.join(out_dir, "model.keras")
    model.save(final)
    result = {"model": model, "model_path": final, "history": read_log(os.path.join(out_dir, "log.csv"))}
    if test_data is not None:
        metrics = evaluate(model, test_data, verbose=verbose)
        _atomic_json(os.path.join(out_dir, "test_metrics.json"), metrics)
        result["test"] = metrics
    if result["history"]:
        result["curves"] = plot_curves(result["history"], os.path.join(out_dir, "training_curves.png"),
                                       title=model.name)
    return result


def evaluate(model, data, batch_size=256, verbose=0):
    """{"loss", "accuracy", "examples"} of a compiled model on (x, y)."""
    x, y = _check_xy(*_pair(data, "data"), name="data")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        compile_model(model)
    values = model.evaluate(make_dataset(x, y, batch_size, shuffle=False), verbose=verbose, return_dict=True)
    out = {key: float(value) for key, value in values.items()}
    out["examples"] = int(len(x))
    return out


def read_log(path):
    """Rows of a CSVLogger file as dicts of floats (empty list if missing)."""
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
    """Loss and accuracy per epoch (train, and validation when logged) into a PNG; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not history:
        raise ValueError("`history` is empty: nothing to plot")
    epochs = [row["epoch"] + 1 for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
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
        if "learning_rate" in history[0]:
            rates = [row["learning_rate"] for row in history]
            for e, (before, after) in enumerate(zip(rates, rates[1:]), start=2):
                if after < before:
                    axis.axvline(e - 0.5, color="grey", linestyle=":", linewidth=1)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _pair(data, name):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"`{name}` must be an (images, labels) pair, got {type(data).__name__}")
    return data


def _check_xy(x, y, name="data"):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"`{name}` images must be a non-empty 4D array (N, H, W, C), got shape {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{name}` labels must be {x.shape[0]} integers, got {y.dtype} {y.shape}")
    return x, y


