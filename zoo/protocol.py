"""`kernelzoo protocol`: one zoo model trained over a protocol's splits (and a grid of settings), mean +- std.

A protocol is a list of (split, seed) settings, each trained like `kernelzoo train` with that split and
seed:
  --splits u1 u2 u3 u4 u5                            the canonical ML-100K folds (seed 0 each);
  --splits random --seeds 0 1 2 3 4 --test-fraction 0.2   seeded random splits (the seed draws the split,
                                                     and, in the MovieLens recipe, the held-out validation
                                                     ratings (seed + 1000) and the initialisation);
  --seeds 0 1 2                                      any family: the preset's split, repeated seeds.
`--grid KEY=VALUE ...` compares settings: the product over the keys of their values (a key given
twice has two values), each a builder argument (lambda_2=5, "hidden=(1000,1000)") or a recipe
hyper-parameter (patience=3). With `--validate-only` the figure is the held-out validation metric and
the test split is never measured, so the best row of the table is a choice made without test data.

Run folders: OUT/CONFIG/SPLIT (CONFIG "default" or e.g. "lambda_2=5", SPLIT e.g. "u1" or
"random-s3"), each with its `run.json` (figures, selected epoch, wall time) once finished. Resumable:
a finished run is never re-run (and is refused when asked with other settings than its config.json holds),
a killed one continues from its checkpoint (--resume). OUT/protocol.json
and the printed table collect every finished run under OUT, so stages of a grid run into the same OUT
add up: every configuration ever tried there is recorded.
"""
import glob
import itertools
import json
import os
import re
import time

import numpy as np

from kernelzoo.zoo import training

RUN_FILE = "run.json"
PROTOCOL_FILE = "protocol.json"
# metric -> whether larger is better (the table's best row).
LARGER_IS_BETTER = {"accuracy": True, "rmse": False}


def grid_configs(items):
    """["lambda_2=5", "lambda_2=10", "dim=10"] -> [{lambda_2: 5, dim: 10}, {lambda_2: 10, dim: 10}]:
    the product over the keys (in first-seen order) of their values; [] -> [{}]."""
    from kernelzoo.zoo.cli import parse_overrides

    values = {}
    for item in items:
        try:
            ((key, value),) = parse_overrides([item]).items()
        except ValueError as error:
            raise ValueError(f"grid: {error}") from None
        if value in values.setdefault(key, []):
            raise ValueError(f"grid: {item!r} is given twice")
        values[key].append(value)
    return [dict(zip(values, combination)) for combination in itertools.product(*values.values())]


def config_label(config):
    """A folder name for a grid configuration: "default", or "lambda_2=5_hidden=1000-1000"."""
    if not config:
        return "default"
    parts = []
    for key, value in config.items():
        text = "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        parts.append(f"{key}={re.sub(r'[^A-Za-z0-9.+-]', '', text)}")
    return "_".join(parts)


def settings(splits, seeds):
    """[(label, split, seed)]: every split with every seed; a split other than "random" (or None) is a
    fixed fold, labelled by its name alone when it has one seed."""
    splits = list(splits) if splits else [None]
    seeds = list(seeds) if seeds else [0]
    if len(set(splits)) != len(splits) or len(set(seeds)) != len(seeds):
        raise ValueError(f"splits {splits} and seeds {seeds} must not repeat")
    out = []
    for split, seed in itertools.product(splits, seeds):
        if split is None or split == "random" or len(seeds) > 1:
            label = f"s{seed}" if split is None else f"{split}-s{seed}"
        else:
            label = split
        out.append((label, split, int(seed)))
    return out


def run_protocol(train_one, out_dir, configs, protocol_settings, metric, *, validate_only=False, planned=None,
                 log=print):
    """Train every (config, setting) not finished yet under `out_dir`, then return `collect(out_dir, metric)`.

    `train_one(config, split, seed, run_dir, resume)` trains one run and returns its result dict
    ("metrics": {test_* or val_*: value}, optionally "selected_epoch", "val_rmse"...).
    `planned(config, split, seed)`: the run's settings (`recipe.run_settings`); a finished run is reused only
    when its config.json holds the same (ValueError naming the differences otherwise), its length included.
    """
    key = f"{'val' if validate_only else 'test'}_{metric}"
    for config, (label, split, seed) in itertools.product(configs, protocol_settings):
        run_dir = os.path.join(out_dir, config_label(config), label)
        if os.path.isfile(os.path.join(run_dir, RUN_FILE)):
            changes = [] if planned is None else training.config_changes(run_dir, planned(config, split, seed), True)
            if changes:
                raise ValueError(f"protocol: {run_dir!r} finished with other settings ({'; '.join(changes)}): "
                                 "give another --out, or the settings it ran with")
            log(f"{config_label(config)} {label}: finished, not re-run")
            continue
        resume = training.read_state(run_dir) is not None
        log(f"{config_label(config)} {label}: {'resuming' if resume else 'training'} into {run_dir}")
        started = time.time()
        result = train_one(config, split, seed, run_dir, resume)
        metrics = {k: float(v) for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float))}
        if key not in metrics:
            raise ValueError(f"the run in {run_dir} measured {sorted(metrics)}, not {key}")
        record = {"config": config, "split": split, "seed": seed, "label": label, "figure": key,
                  "value": metrics[key], "metrics": metrics, "seconds": round(time.time() - started, 1),
                  "resumed": resume}
        record.update({k: result[k] for k in ("selected_epoch", "val_rmse") if k in result})
        training.write_json(os.path.join(run_dir, RUN_FILE), record)
        log(f"{config_label(config)} {label}: {key} {metrics[key]:.4f} ({record['seconds']:.0f} s)")
    return collect(out_dir, metric)


def collect(out_dir, metric=None):
    """Every finished run under `out_dir` (OUT/CONFIG/SPLIT/run.json) grouped by configuration and figure:
    {"runs": [...], "summary": [{config, figure, n, mean, std (sample, ddof 1), values {label: value},
    seconds}] (best first when `metric` says which way is better)}; also written to OUT/protocol.json."""
    runs = []
    for path in sorted(glob.glob(os.path.join(glob.escape(os.fspath(out_dir)), "*", "*", RUN_FILE))):
        with open(path, encoding="utf-8") as handle:
            runs.append(json.load(handle))
    groups = {}
    for run in runs:
        groups.setdefault((config_label(run["config"]), run["figure"]), []).append(run)
    summary = []
    for (label, figure), group in groups.items():
        values = np.array([run["value"] for run in group])
        summary.append(dict(mean_std(values), config=group[0]["config"], label=label, figure=figure,
                            values={run["label"]: run["value"] for run in group},
                            seconds=[run["seconds"] for run in group]))
    larger = LARGER_IS_BETTER.get(metric)
    if larger is not None:
        summary.sort(key=lambda row: (row["figure"], -row["mean"] if larger else row["mean"]))
    result = {"runs": runs, "summary": summary}
    if runs:
        training.write_json(os.path.join(out_dir, PROTOCOL_FILE), result)
    return result


def mean_std(values):
    """{"mean", "std" (sample std, ddof 1; 0 for one value), "n"} of a list of figures."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("mean_std: no values")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n": int(values.size)}


def format_table(result):
    """The summary as a text table: configuration, figure, n, mean +- std, per split, wall time."""
    lines = [f"{'configuration':36s} {'figure':10s} {'n':>2s}  {'mean +- std':17s}  per split; seconds"]
    for row in result["summary"]:
        splits = ", ".join(f"{label} {value:.4f}" for label, value in row["values"].items())
        seconds = f"{min(row['seconds']):.0f}-{max(row['seconds']):.0f} s"
        lines.append(f"{row['label']:36s} {row['figure']:10s} {row['n']:2d}  "
                     f"{row['mean']:.4f} +- {row['std']:.4f}  {splits}; {seconds}")
    return "\n".join(lines)
