"""Fig. 3 of Muller 2018 (Sec. 3.1): accuracy of identical kernelNets against the dimensionality d.

Three networks differ only in the kernel of their kernelized weight matrix: dot product
(embedding dimensionality d* = d), 2nd-degree polynomial (d* = (d + 1)(d + 2) / 2) and Gaussian
RBF (d* infinite). Ours, as the extracted paper names neither: the data set is MNIST and the
network a small fully-connected kernelNet, raw pixels -> /255 -> `KernelDense(hidden, dim=d)` ->
ReLU -> softmax. Each (kernel, d, lr, l2) trains `repeats` times with Adam (seeds 0..repeats-1, the
same for every cell); lr and l2 are chosen per (kernel, d) by the best mean accuracy on images
held out of the training set, and the figure shows the test accuracy at that choice (mean and
standard error over the repeats). The sweep saves every finished run to a JSON file and skips
those runs when started again.

Initialisation (ours): locations ~ N(0, d^-1/2) so u.v has unit variance at any d, RBF width
gamma = 1 / (2 sqrt(d)) so gamma ||u - v||^2 starts near 1, per-input scales alpha ~ He normal.
l2 is a Keras L2 penalty on every weight but the biases (locations, alpha, softmax kernel).
"""
import json
import math
import os
import time

import keras
import numpy as np

from kernelzoo.layers.kernel_dense import KernelDense
from kernelzoo.ops.checks import check_choice, nonnegative_float, positive_float, positive_int
from kernelzoo.progress import progbar
from kernelzoo.zoo import training
from kernelzoo.zoo.plotting import pyplot, save_figure
from kernelzoo.zoo.recipe import Data, Recipe

KERNELS = ("dot", "poly", "rbf")
RESULTS_FILE = "dimensionality.json"
FIGURE_FILE = "dimensionality.png"
# Defaults sized so the whole sweep takes about half an hour on one CPU core.
DEFAULTS = {"kernels": KERNELS, "dims": (1, 2, 4, 8, 16, 32, 64), "repeats": 5, "lrs": (1e-3, 1e-2),
            "l2s": (0.0, 1e-4), "train_size": 10000, "holdout": 5000, "hidden": 100, "epochs": 3, "batch_size": 128}


def embedding_dimension(kernel, dim):
    """d* of a kernel on d-dimensional locations: d (dot), (d + 1)(d + 2) / 2 (poly), inf (rbf)."""
    kernel, dim = check_choice("kernel", kernel, KERNELS), positive_int(dim, "dim")
    return {"dot": dim, "poly": (dim + 1) * (dim + 2) // 2, "rbf": math.inf}[kernel]


def kernelnet_fc(kernel, dim, input_shape=(28, 28), hidden=100, num_classes=10, l2=0.0):
    """Raw pixels -> /255 -> KernelDense(hidden, kernel, dim) -> ReLU -> softmax (module docstring)."""
    kernel, dim = check_choice("kernel", kernel, KERNELS), positive_int(dim, "dim")
    l2 = nonnegative_float(l2, "l2")
    penalty = keras.regularizers.L2(l2) if l2 else None
    locations = keras.initializers.RandomNormal(stddev=dim ** -0.25)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = keras.layers.Flatten(name="pixels")(x)
    x = KernelDense(positive_int(hidden, "hidden"), kernel_function=kernel, dim=dim, gamma=0.5 / math.sqrt(dim),
                    activation="relu", alpha_initializer="he_normal", input_locations_initializer=locations,
                    output_locations_initializer=locations, alpha_regularizer=penalty,
                    input_locations_regularizer=penalty, output_locations_regularizer=penalty, name="kernel")(x)
    outputs = keras.layers.Dense(positive_int(num_classes, "num_classes"), activation="softmax",
                                 kernel_regularizer=penalty, name="softmax")(x)
    return keras.Model(inputs, outputs, name=f"kernelnet_fc_{kernel}_d{dim}")


def train_cell(data, kernel, dim, lr, l2, seed, hidden, epochs, batch_size):
    """One run: build, train with Adam, and measure accuracy on data.val and data.test."""
    keras.utils.set_random_seed(seed)
    x, y = data.train
    model = kernelnet_fc(kernel, dim, x.shape[1:], hidden, int(y.max()) + 1, l2)
    Recipe().compile(model, {"optimizer": "adam", "schedule": "constant", "lr": lr, "epochs": epochs})
    steps = -(-len(x) // batch_size)
    model.fit(training.make_dataset(x, y, batch_size, epochs=epochs, seed=seed), epochs=epochs,
              steps_per_epoch=steps, verbose=0, shuffle=False)
    return {"val_accuracy": training.evaluate(model, data.val)["accuracy"],
            "test_accuracy": training.evaluate(model, data.test)["accuracy"]}


def mnist_data(data_dir=None, train_size=DEFAULTS["train_size"], holdout=DEFAULTS["holdout"], seed=0):
    """`Data` of `train_size` training images and `holdout` others held out of the MNIST training set (a
    seeded permutation), and the MNIST test set."""
    from kernelzoo.zoo.data import load_mnist

    train_size, holdout = positive_int(train_size, "train_size"), positive_int(holdout, "holdout")
    (x, y), test = load_mnist(data_dir)
    if train_size + holdout > len(x):
        raise ValueError(f"train_size + holdout must be at most {len(x)}, got {train_size} + {holdout}")
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = np.sort(order[holdout:holdout + train_size]), np.sort(order[:holdout])
    return Data(train=(x[train], y[train]), val=(x[val], y[val]), test=test, source="MNIST")


def run_key(kernel, dim, lr, l2, seed):
    """The name of one run in the results file."""
    return f"{kernel} d={dim} lr={lr:g} l2={l2:g} seed={seed}"


def sweep(data, out_dir, kernels=DEFAULTS["kernels"], dims=DEFAULTS["dims"], repeats=DEFAULTS["repeats"],
          lrs=DEFAULTS["lrs"], l2s=DEFAULTS["l2s"], hidden=DEFAULTS["hidden"], epochs=DEFAULTS["epochs"],
          batch_size=DEFAULTS["batch_size"], verbose=1):
    """Train every (kernel, d, lr, l2, seed < repeats) run that out_dir/dimensionality.json does not hold yet.

    `data` is a `Data` with train, val (held out: chooses lr and l2) and test. The file is rewritten after
    every run, so a killed sweep resumes where it stopped; a file of another setup (data, sizes, network,
    budget) is refused. Returns the results dict: setup, runs, summary (`summarize`).
    """
    kernels = _values(kernels, "kernels", lambda value, name: check_choice(name, value, KERNELS))
    dims, repeats = _values(dims, "dims", positive_int), positive_int(repeats, "repeats")
    lrs, l2s = _values(lrs, "lrs", positive_float), _values(l2s, "l2s", nonnegative_float)
    hidden, epochs = positive_int(hidden, "hidden"), positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    setup = {"data": data.source, "train": len(data.train[0]), "holdout": len(data.val[0]),
             "test": len(data.test[0]), "hidden": hidden, "epochs": epochs, "batch_size": batch_size,
             "optimizer": "adam"}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RESULTS_FILE)
    results = _read(path, setup)
    cells = [(k, d, lr, l2, seed) for k in kernels for d in dims for lr in lrs for l2 in l2s for seed in range(repeats)]
    todo = [cell for cell in cells if run_key(*cell) not in results["runs"]]
    bar = progbar(len(todo), f"{len(todo)} of {len(cells)} runs to train ({path})", bool(verbose and todo), "run",
                  ("val_accuracy",))
    for done, (kernel, dim, lr, l2, seed) in enumerate(todo, 1):
        start = time.time()
        scores = train_cell(data, kernel, dim, lr, l2, seed, hidden, epochs, batch_size)
        results["runs"][run_key(kernel, dim, lr, l2, seed)] = {
            "kernel": kernel, "dim": dim, "lr": lr, "l2": l2, "seed": seed, **scores,
            "seconds": round(time.time() - start, 2)}
        training.write_json(path, results)
        if bar is not None:
            bar.update(done, values=[("val_accuracy", scores["val_accuracy"])])
    results["summary"] = summarize(results["runs"], kernels, dims, lrs, l2s, repeats)
    training.write_json(path, results)
    return results


def _values(values, name, check):
    """A non-empty tuple of distinct values, each normalised by `check(value, name)`."""
    values = tuple(dict.fromkeys(check(value, name) for value in values))
    if not values:
        raise ValueError(f"`{name}` must hold at least one value")
    return values


def _read(path, setup):
    """The results file's contents, or a fresh one; ValueError when it holds another setup."""
    if not os.path.isfile(path):
        return {"setup": setup, "runs": {}}
    with open(path, encoding="utf-8") as handle:
        results = json.load(handle)
    changed = {key: (results["setup"].get(key), value) for key, value in setup.items()
               if results["setup"].get(key) != value}
    if changed:
        raise ValueError(f"out_dir: {path} holds a sweep of another setup (saved, now: {changed}); "
                         f"use another out_dir")
    return results


def summarize(runs, kernels, dims, lrs, l2s, repeats):
    """Per kernel and d: d*, the (lr, l2) of the best mean held-out accuracy over the seeds, and at that
    choice the mean and standard error of the held-out and test accuracies."""
    summary = []
    for kernel in kernels:
        for dim in dims:
            grid = {(lr, l2): [runs[run_key(kernel, dim, lr, l2, seed)] for seed in range(repeats)]
                    for lr in lrs for l2 in l2s}
            (lr, l2), chosen = max(grid.items(), key=lambda item: np.mean([r["val_accuracy"] for r in item[1]]))
            row = {"kernel": kernel, "dim": dim, "embedding_dim": _finite(embedding_dimension(kernel, dim)),
                   "lr": lr, "l2": l2, "repeats": repeats}
            for split in ("val", "test"):
                values = np.array([r[f"{split}_accuracy"] for r in chosen])
                row[f"{split}_accuracy"] = float(values.mean())
                row[f"{split}_stderr"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
            summary.append(row)
    return summary


def _finite(value):
    """`value`, or None for infinity (JSON has no infinity)."""
    return None if math.isinf(value) else value


def plot(results, path):
    """Test accuracy at the held-out choice of lr and l2 against d, one line per kernel, standard-error bars."""
    plt = pyplot()
    setup, summary = results["setup"], results["summary"]
    labels = {"dot": "dot product (d* = d)", "poly": "polynomial, degree 2 (d* = (d+1)(d+2)/2)",
              "rbf": "Gaussian RBF (d* infinite)"}
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=100)
    for kernel in dict.fromkeys(row["kernel"] for row in summary):
        rows = [row for row in summary if row["kernel"] == kernel]
        ax.errorbar([row["dim"] for row in rows], [100 * row["test_accuracy"] for row in rows],
                    yerr=[100 * row["test_stderr"] for row in rows], marker="o", capsize=3, label=labels[kernel])
    dims = sorted({row["dim"] for row in summary})
    if len(dims) > 1 and dims[-1] / dims[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    epochs = f"{setup['epochs']} epoch" + "s" * (setup["epochs"] > 1)
    ax.set(xlabel="dimensionality d of the locations u, v",
           ylabel=f"test accuracy (%), mean +- s.e. of {summary[0]['repeats']}",
           title=f"{setup['data']}: {setup['train']:,} training images, {epochs}, {setup['hidden']} hidden units\n"
                 f"Adam; lr, l2 chosen on {setup['holdout']:,} held-out images")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
