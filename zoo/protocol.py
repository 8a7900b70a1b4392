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

Run folders: OUT/CONFIG/SETTING (CONFIG "default" or e.g. "lambda_2=5", SETTING SPLIT-sSEED, e.g. "u1-s0"
or "random-s3", or sSEED), each with its `run.json` (figures, selected epoch, wall time) once finished.
Resumable: a finished run (found by its configuration, split and seed, so the u1/ folders of older versions
count too) is never re-run, nor counted twice (and is refused when asked with other settings than its
config.json holds); a killed one continues from its checkpoint (--resume). OUT/protocol.json
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
# metric (or a log column's last word) -> whether larger is better (the table's best row, `kernelzoo viz runs`).
LARGER_IS_BETTER = {"accuracy": True, "auc": True, "precision": True, "recall": True,
                    "rmse": False, "mse": False, "mae": False, "error": False, "loss": False, "crossentropy": False}


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
    """[(label, split, seed)]: every split with every seed, labelled "SPLIT-sSEED" ("sSEED" without a split) so
    that a run's folder does not depend on the other settings of the call."""
    splits = list(splits) if splits else [None]
    seeds = list(seeds) if seeds else [0]
    if len(set(splits)) != len(splits) or len(set(seeds)) != len(seeds):
        raise ValueError(f"splits {splits} and seeds {seeds} must not repeat")
    return [(f"s{seed}" if split is None else f"{split}-s{seed}", split, int(seed))
            for split, seed in itertools.product(splits, seeds)]


def run_protocol(train_one, out_dir, configs, protocol_settings, metric, *, validate_only=False, planned=None,
                 log=print):
    """Train every (config, setting) not finished yet under `out_dir`, then return `collect(out_dir, metric)`.

    `train_one(config, split, seed, run_dir, resume)` trains one run and returns its result dict
    ("metrics": {test_* or val_*: value}, optionally "selected_epoch", "val_rmse"...).
    A finished run is found by its (config, split, seed), whatever its folder's name (older versions labelled a
    fixed fold of one seed by its split alone), and never re-run.
    `planned(config, split, seed)`: the run's settings (`recipe.run_settings`); a finished run is reused only
    when its config.json holds the same (ValueError naming the differences otherwise), its length included.
    """
    key = f"{'val' if validate_only else 'test'}_{metric}"
    _check_folder_names(configs)
    finished = finished_runs(out_dir)
    records = dict(finished.values())  # run folder -> its run.json record
    for config, (label, split, seed) in itertools.product(configs, protocol_settings):
        name = f"{config_label(config)} {label}"
        found = finished.get((config_key(config), split, seed))
        run_dir = found[0] if found else os.path.join(out_dir, config_label(config), label)
        if run_dir in records:
            _check_finished(run_dir, records[run_dir], config, split, seed,
                            None if planned is None else planned(config, split, seed))
            log(f"{name}: finished, not re-run")
            continue
        resume = training.read_state(run_dir) is not None
        log(f"{name}: {'resuming' if resume else 'training'} into {run_dir}")
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
        log(f"{name}: {key} {metrics[key]:.4f} ({record['seconds']:.0f} s)")
    return collect(out_dir, metric)


def config_key(config):
    """A configuration as canonical JSON (tuples as lists, keys sorted): equal settings give equal keys."""
    return json.dumps(config, sort_keys=True, default=str)


def _check_folder_names(configs):
    """ValueError when two configurations would share a run folder (`config_label` drops some characters)."""
    seen = {}
    for config in configs:
        other = seen.setdefault(config_label(config), config)
        if config_key(other) != config_key(config):
            raise ValueError(f"grid: {other} and {config} would share the run folder {config_label(config)!r}: "
                             "spell one of the values differently")


def _check_finished(run_dir, record, config, split, seed, planned):
    """ValueError when the finished run in `run_dir` (its run.json `record`) is not the run of (config, split,
    seed) or, with `planned` (its settings), ran with other settings."""
    if (config_key(record["config"]), record["split"], record["seed"]) != (config_key(config), split, seed):
        raise ValueError(f"protocol: {run_dir!r} holds the run of configuration {record['config']}, split "
                         f"{record['split']}, seed {record['seed']}, not {config}, {split}, {seed}: give another --out")
    changes = [] if planned is None else training.config_changes(run_dir, planned, True)
    if changes:
        raise ValueError(f"protocol: {run_dir!r} finished with other settings ({'; '.join(changes)}): "
                         "give another --out, or the settings it ran with")


def finished_runs(out_dir):
    """{(config_key, split, seed): (run folder, run.json record)} of every finished run under `out_dir`
    (OUT/CONFIG/LABEL/run.json); ValueError when two folders hold the same run (a split run under its old
    label and its new one): it would be counted twice."""
    found = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(os.fspath(out_dir)), "*", "*", RUN_FILE))):
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        run_key = (config_key(record["config"]), record["split"], record["seed"])
        folder = os.path.dirname(path)
        if run_key in found:
            raise ValueError(f"protocol: {found[run_key][0]!r} and {folder!r} hold the same run (configuration "
                             f"{record['config']}, split {record['split']}, seed {record['seed']}): remove one")
        found[run_key] = (folder, record)
    return found


def larger_is_better(metric):
    """Whether a larger `metric` is better: True, False, or None when unknown; a log column such as
    "val_rmse" or "mean_squared_error" is judged by its last word."""
    return LARGER_IS_BETTER.get(metric, LARGER_IS_BETTER.get(str(metric).rpartition("_")[2]))


def collect(out_dir, metric=None):
    """Every finished run under `out_dir` (`finished_runs`) grouped by configuration and figure:
    {"runs": [...], "summary": [{config, figure, n, mean, std (sample, ddof 1), values {label: value},
    seconds}] (best first when `metric` says which way is better)}; also written to OUT/protocol.json."""
    runs = [record for _, record in finished_runs(out_dir).values()]
    groups = {}
    for run in runs:
        groups.setdefault((config_key(run["config"]), run["figure"]), []).append(run)
    summary = []
    for (_, figure), group in groups.items():
        values = np.array([run["value"] for run in group])
        summary.append(dict(mean_std(values), config=group[0]["config"], label=config_label(group[0]["config"]),
                            figure=figure, values={run["label"]: run["value"] for run in group},
                            seconds=[run["seconds"] for run in group]))
    larger = larger_is_better(metric)
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
