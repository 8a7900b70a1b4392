"""`kernelzoo viz runs`: summaries and plot of held-out sweeps (kernelzoo.zoo.sweep)."""
import numpy as np
import pytest

from kernelzoo.zoo import sweep, training


def test_a_single_spike_is_the_best_epoch_but_not_the_best_moving_average():
    values = np.full(60, 0.5)
    values[20:40] = 0.6  # a plateau of 20 epochs (21-40) ...
    values[50] = 0.9  # ... and a one-epoch spike (51) after it
    summary = sweep.summarize(values, "run", smooth=5, last=10)
    assert (summary.best_epoch, summary.best) == (51, 0.9)
    assert 23 <= summary.smoothed_epoch <= 38 and summary.smoothed == pytest.approx(0.6)
    assert summary.last_mean == pytest.approx(np.mean(values[-10:]))
    assert summary.last_std == pytest.approx(np.std(values[-10:], ddof=1))
    losses = sweep.summarize(1 - values, "run", smooth=5, last=10, mode="min")
    assert losses.best_epoch == 51 and 23 <= losses.smoothed_epoch <= 38


def test_moving_average_is_centred_and_checks_its_window():
    np.testing.assert_allclose(sweep.moving_average([1, 2, 3, 4, 5], 3), [2, 3, 4])
    with pytest.raises(ValueError, match="`smooth` must be odd"):
        sweep.moving_average([1, 2, 3, 4], 2)
    with pytest.raises(ValueError, match="longer than the run"):
        sweep.moving_average([1, 2, 3], 5)
    with pytest.raises(ValueError, match="finite"):
        sweep.summarize([0.5, float("nan"), 0.5], "run", smooth=1)


def test_viz_runs_reads_run_folders_and_plots(tmp_path, capsys):
    for name, level in (("lr_a", 0.5), ("lr_b", 0.6)):
        folder = tmp_path / name
        folder.mkdir()
        for epoch in range(9):
            training.append_log(str(folder),
                                {"epoch": epoch, "accuracy": 0.7, "val_accuracy": level + 0.01 * (epoch % 3)})
    out = tmp_path / "sweep.png"
    from kernelzoo.cli import main
    assert main(["viz", "runs", str(tmp_path / "lr_a"), str(tmp_path / "lr_b"), "--smooth", "3", "--last", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lr_b" in printed and "0.6200" in printed and out.stat().st_size > 0
    with pytest.raises(ValueError, match="`metric` 'val_loss'"):
        sweep.read_run(str(tmp_path / "lr_a"), "val_loss")
    with pytest.raises(ValueError, match="has no log.csv"):
        sweep.read_run(str(tmp_path), "val_accuracy")


def _log(folder, values, metric="val_accuracy"):
    folder.mkdir(parents=True)
    for epoch, value in enumerate(values):
        training.append_log(str(folder), {"epoch": epoch, metric: value})


def test_errors_are_minimised_runs_keep_their_paths_and_a_diverged_run_is_skipped(tmp_path, capsys):
    from kernelzoo.cli import main

    for name in ("a/seed0", "b/seed0"):
        _log(tmp_path / name, [1.0, 0.8, 0.9, 1.2], "val_rmse")
    _log(tmp_path / "c/seed0", [1.0, float("nan"), 0.9, 1.2], "val_rmse")
    runs = [str(tmp_path / name) for name in ("a/seed0", "b/seed0", "c/seed0")]
    assert main(["viz", "runs", *runs, "--metric", "val_rmse", "--smooth", "1", "--last", "2"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if "seed0 " in line]
    assert rows[0].startswith("a/seed0") and rows[1].startswith("b/seed0")  # not two rows labelled seed0
    assert "0.8000 (   2)" in rows[0]  # rmse: the smallest is the best epoch
    assert "c/seed0: skipped" in printed and "from epoch 2" in printed
    assert [sweep.default_mode(m) for m in ("val_accuracy", "val_loss", "val_mse", "mean_absolute_error")] == [
        "max", "min", "min", "min"]
    with pytest.raises(ValueError, match="--mode"):
        sweep.default_mode("val_f00")
