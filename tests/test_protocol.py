"""`kernelzoo protocol`: splits x seeds x grid, mean +- std, resumable; the MovieLens recipe on generated ratings."""
import argparse
import json

import pytest

from kernelzoo.zoo import cli, protocol
from kernelzoo.zoo.data import load_ml100k_fold
from kernelzoo.zoo.data.synthetic import write_ml100k


def test_grid_settings_labels_and_mean_std():
    configs = protocol.grid_configs(["lambda_2=5", "hidden=(8,8)", "lambda_2=10"])
    assert configs == [{"lambda_2": 5, "hidden": (8, 8)}, {"lambda_2": 10, "hidden": (8, 8)}]
    assert protocol.grid_configs([]) == [{}]
    assert [protocol.config_label(c) for c in configs + [{}]] == [
        "lambda_2=5_hidden=8-8", "lambda_2=10_hidden=8-8", "default"]
    with pytest.raises(ValueError, match="twice"):
        protocol.grid_configs(["dim=5", "dim=5"])
    with pytest.raises(ValueError, match="grid"):
        protocol.grid_configs(["dim"])
    assert protocol.settings(["u1", "u2"], [0]) == [("u1", "u1", 0), ("u2", "u2", 0)]
    assert protocol.settings(["random"], [3, 4]) == [("random-s3", "random", 3), ("random-s4", "random", 4)]
    assert protocol.settings(None, [1]) == [("s1", None, 1)]
    summary = protocol.mean_std([0.9, 0.8, 1.0])
    assert summary["mean"] == pytest.approx(0.9) and summary["std"] == pytest.approx(0.1) and summary["n"] == 3
    assert protocol.mean_std([0.5])["std"] == 0.0


def _protocol(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "protocol")
    args = parser.parse_args(["kernelnet_movielens_100k", "hidden=(4,)", "--data-dir", str(tmp_path), "--epochs", "1",
                              "--iterations-per-epoch", "2", "--quiet", "--no-tensorboard", *argv])
    return cli.run(args, "protocol")


def test_protocol_runs_splits_resumes_and_validates_without_test_ratings(tmp_path, capsys):
    write_ml100k(tmp_path)
    out = tmp_path / "folds"
    assert _protocol(tmp_path, "--splits", "u1", "u2", "--out", str(out)) == 0
    result = json.loads((out / protocol.PROTOCOL_FILE).read_text())
    (row,) = result["summary"]
    assert row["figure"] == "test_rmse" and row["n"] == 2 and set(row["values"]) == {"u1", "u2"}
    runs = {run["label"]: run for run in result["runs"]}
    assert runs["u1"]["metrics"]["test_examples"] == len(load_ml100k_fold(1, str(tmp_path))[1]["ratings"])
    assert 0 < runs["u1"]["value"] < 4 and runs["u1"]["selected_epoch"] >= 1
    assert row["mean"] == pytest.approx(protocol.mean_std(list(row["values"].values()))["mean"])
    printed = capsys.readouterr().out
    assert "test_rmse" in printed and f"{row['mean']:.4f} +- {row['std']:.4f}" in printed

    before = (out / "default" / "u1" / protocol.RUN_FILE).read_text()
    assert _protocol(tmp_path, "--splits", "u1", "u2", "--out", str(out)) == 0  # nothing re-runs
    assert capsys.readouterr().out.count("finished, not re-run") == 2
    assert (out / "default" / "u1" / protocol.RUN_FILE).read_text() == before

    grid = tmp_path / "grid"
    assert _protocol(tmp_path, "--splits", "random", "--seeds", "7", "--test-fraction", "0.2", "--validate-only",
                     "--grid", "lambda_2=0.5", "lambda_2=2", "--out", str(grid)) == 0
    result = json.loads((grid / protocol.PROTOCOL_FILE).read_text())
    assert {row["label"] for row in result["summary"]} == {"lambda_2=0.5", "lambda_2=2"}
    assert [row["mean"] for row in result["summary"]] == sorted(row["mean"] for row in result["summary"])
    for run in result["runs"]:  # the held-out training ratings only: no test figure anywhere
        assert run["figure"] == "val_rmse" and set(run["metrics"]) == {"val_rmse"} and run["seed"] == 7
        config = json.loads((grid / protocol.config_label(run["config"]) / "random-s7" / "config.json").read_text())
        assert config["overrides"]["lambda_2"] == run["config"]["lambda_2"] and config["options"]["validate_only"]
    assert "test_rmse" not in (grid / "lambda_2=2" / "random-s7" / "metrics.json").read_text()
    capsys.readouterr()
    assert _protocol(tmp_path, "--splits", "u1", "--split", "u2", "--out", str(grid)) == 2
    assert "--splits, not --split" in capsys.readouterr().err
