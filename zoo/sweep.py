"""`kernelzoo viz runs RUN_DIR ...`: compare held-out runs of a sweep (log.csv of each run folder).

A held-out metric logged every epoch is noisy (at a constant learning rate it can swing by several points
from one epoch to the next), so its single best epoch overstates what a run with that many epochs will
reach. For each run this prints the best epoch, the best centred moving average over `--smooth` epochs
(the epoch at its centre: an epoch count to retrain with) and the mean and standard deviation of the last
`--last` epochs, and plots every run's curve with its moving average. Epochs are the run's (log.csv's `epoch`
column, from 1; a repeated epoch counts once, its last row). A staged run (layerwise: a `stage` column) is
summarised on its last stage, the classifier: the block stages' figures are their temporary heads'. A run whose
metric is not finite in some epoch (diverged) or that is shorter than the window is skipped with a message; runs
are labelled by their path below their common parent.

    kernelzoo viz runs runs/holdout_lr0.01 runs/holdout_lr0.003 [--metric val_accuracy] [--smooth 21] [--out sweep.png]
"""
import dataclasses
import os

import numpy as np

from kernelzoo.ops.checks import check_choice, positive_int
from kernelzoo.zoo import protocol, training
from kernelzoo.zoo.plotting import figure_path, pyplot, save_figure


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One run's metric curve, summarised (epochs count from 1)."""

    label: str
    epochs: tuple
    values: tuple
    smoothed_values: tuple
    smooth: int
    best_epoch: int
    best: float
    smoothed_epoch: int
    smoothed: float
    last_mean: float
    last_std: float


def moving_average(values, window):
    """Centred moving average over `window` epochs (odd; only where the whole window fits)."""
    values = np.asarray(values, dtype="float64")
    window = positive_int(window, "smooth")
    if window % 2 == 0:
        raise ValueError(f"`smooth` must be odd (a window centred on an epoch), got {window}")
    if len(values) < window:
        raise ValueError(f"`smooth`={window} is longer than the run ({len(values)} epochs)")
    return np.convolve(values, np.ones(window) / window, mode="valid")


def summarize(values, label, smooth=21, last=50, mode="max", epochs=None):
    """A `RunSummary` of a metric's per-epoch values; `mode` "max" (accuracy) or "min" (a loss); `epochs` the
    values' epochs (from 1; default 1, 2, ...)."""
    check_choice("mode", mode, ("max", "min"))
    values = np.asarray(values, dtype="float64")
    if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"run {label!r}: expected finite per-epoch values, got {values}")
    epochs = np.arange(1, len(values) + 1) if epochs is None else np.asarray(epochs, dtype="int64")
    if epochs.shape != values.shape:
        raise ValueError(f"run {label!r}: {len(epochs)} epochs for {len(values)} values")
    pick = np.argmax if mode == "max" else np.argmin
    smoothed = moving_average(values, smooth)
    best, centre = int(pick(values)), int(pick(smoothed))
    tail = values[-positive_int(last, "last"):]
    return RunSummary(label, tuple(int(e) for e in epochs), tuple(values), tuple(smoothed), smooth,
                      int(epochs[best]), float(values[best]), int(epochs[centre + smooth // 2]),
                      float(smoothed[centre]), float(tail.mean()), float(tail.std(ddof=1)) if len(tail) > 1 else 0.0)


def read_run(folder, metric="val_accuracy"):
    """(epochs from 1, values of `metric`, stage or None) of a run folder's log.csv: one row per epoch (the last
    of a repeated one), a staged run's last stage only; ValueError naming what is missing."""
    path = os.path.join(folder, training.LOG_FILE)
    rows = training.read_log(path)
    if not rows:
        raise ValueError(f"run folder {folder!r} has no {training.LOG_FILE}" if not os.path.isfile(path) else
                         f"run folder {folder!r}: its {training.LOG_FILE} has no rows")
    if not all(metric in row for row in rows):
        raise ValueError(f"run folder {folder!r}: `metric` {metric!r} is not in every row of its log "
                         f"(columns: {sorted(rows[0])})")
    by_epoch = {int(row.get("epoch", index)): row for index, row in enumerate(rows)}
    rows = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    stage = max(row["stage"] for row in rows) if all("stage" in row for row in rows) else None
    if stage is not None:
        rows = [row for row in rows if row["stage"] == stage]
    epochs = [int(row.get("epoch", index)) + 1 for index, row in enumerate(rows)]
    return epochs, [row[metric] for row in rows], stage


def plot(summaries, path, metric):
    """Each run's curve (thin) and its moving average (thick, same colour) into a PNG; returns the path."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 5))
    for index, summary in enumerate(summaries):
        color = f"C{index % 10}"
        epochs = np.asarray(summary.epochs)
        axis.plot(epochs, summary.values, color=color, linewidth=0.6, alpha=0.45)
        half = summary.smooth // 2
        axis.plot(epochs[half:len(epochs) - half], summary.smoothed_values, color=color, linewidth=2,
                  label=f"{summary.label}: best {summary.best:.4f} (epoch {summary.best_epoch}), "
                        f"{summary.smooth}-epoch mean {summary.smoothed:.4f} (epoch {summary.smoothed_epoch})")
        axis.plot(summary.smoothed_epoch, summary.smoothed, "o", color=color)
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"{metric} per epoch (thin) and its centred moving average (thick; window in the legend)")
    return save_figure(figure, path, dpi=100)


def add_arguments(parser, command):
    check_choice("command", command, ("viz",))
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    runs = what.add_parser("runs", help="compare the held-out curves of a sweep's run folders")
    runs.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (their log.csv)")
    runs.add_argument("--metric", default="val_accuracy", help="a log.csv column (default val_accuracy)")
    runs.add_argument("--mode", default=None, choices=("max", "min"),
                      help="best is the largest or smallest value (default: max for an accuracy, min for a loss, "
                           "rmse, mse, mae or error)")
    runs.add_argument("--smooth", type=int, default=21, help="moving-average window in epochs (odd)")
    runs.add_argument("--last", type=int, default=50, help="epochs at the end that the mean and sd cover")
    runs.add_argument("--out", default=None, help="also plot the curves to this PNG")


def run(args, command):
    check_choice("command", command, ("viz",))
    mode = args.mode or default_mode(args.metric)
    summaries = []
    moving_average(np.zeros(args.smooth), args.smooth)  # --smooth checked before any run is read
    if args.out:
        figure_path(args.out, "--out")
    for folder, label in zip(args.runs, run_labels(args.runs)):
        epochs, values, stage = read_run(folder, args.metric)
        values = np.asarray(values, dtype="float64")
        if stage is not None:
            print(f"{label}: its last stage ({stage:g}, epochs {epochs[0]}-{epochs[-1]}) only")
        if not np.all(np.isfinite(values)):  # a diverged run is an outcome of a sweep, not an error
            print(f"{label}: skipped, its {args.metric} is not finite from epoch "
                  f"{epochs[int(np.argmin(np.isfinite(values)))]} (diverged)")
            continue
        if len(values) < args.smooth:  # a run stopped early is an outcome too
            print(f"{label}: skipped, {len(values)} epochs are fewer than --smooth {args.smooth}")
            continue
        summaries.append(summarize(values, label, smooth=args.smooth, last=args.last, mode=mode, epochs=epochs))
    if not summaries:
        raise ValueError(f"no run has a finite {args.metric} in at least --smooth {args.smooth} epochs: nothing to "
                         "compare")
    print(f"{'run':<48} {'epochs':>6} {'best (epoch)':>17} {f'{args.smooth}-epoch mean (centre)':>24} "
          f"{f'last {args.last}: mean (sd)':>22}")
    for s in summaries:
        print(f"{s.label:<48} {len(s.values):>6} {s.best:>9.4f} ({s.best_epoch:>4}) {s.smoothed:>16.4f} "
              f"({s.smoothed_epoch:>4}) {s.last_mean:>13.4f} ({s.last_std:.4f})")
    if args.out:
        print(f"wrote {plot(summaries, args.out, args.metric)}")
    return 0


def default_mode(metric):
    """The --mode default, "max" or "min": which end of `metric` is best (`protocol.larger_is_better`: rmse,
    mse, mae, error and loss are minimised); ValueError asking for --mode when the metric is not known."""
    larger = protocol.larger_is_better(metric)
    if larger is None:
        raise ValueError(f"--metric {metric!r}: which way is better is not known for it; give --mode max or min")
    return "max" if larger else "min"


def run_labels(folders):
    """Each run folder's path relative to the common parent of them all (a/seed0 and b/seed0 stay apart)."""
    paths = [os.path.abspath(folder) for folder in folders]
    parent = os.path.commonpath([os.path.dirname(path) for path in paths])
    return [os.path.relpath(path, parent) for path in paths]
