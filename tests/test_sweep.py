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
    assert summary.smoothed_epoch == 23 and summary.smoothed == pytest.approx(0.6)  # the first full window's centre
    assert summary.last_mean == pytest.approx(np.mean(values[-10:]))
    assert summary.last_std == pytest.approx(np.std(values[-10:], ddof=1))
    losses = sweep.summarize(1 - values, "run", smooth=5, last=10, mode="min")
    assert losses.best_epoch == 51 and losses.smoothed_epoch == 23
    assert sweep.summarize([0, 0, 1, 1, 1, 0, 0], "run", smooth=3).smoothed_epoch == 4
    assert sweep.summarize([0, 0, 1, 1, 1, 0, 0], "run", smooth=3, epochs=range(11, 18)).smoothed_epoch == 14


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


def test_a_staged_run_is_summarised_on_its_last_stage_with_the_runs_epochs(tmp_path, capsys):
    """A layerwise log.csv: the block stages' val figures are their temporary heads' (here higher than the
    classifier's), so only the last stage counts; epochs keep the run's numbers."""
    folder = tmp_path / "layerwise"
    folder.mkdir()
    for epoch in range(9):
        stage, value = (1, 0.9) if epoch < 3 else (3, 0.5 + 0.01 * epoch)
        training.append_log(str(folder), {"epoch": epoch, "stage": stage, "val_accuracy": value})
    epochs, values, stage = sweep.read_run(str(folder))
    assert (epochs, stage) == ([4, 5, 6, 7, 8, 9], 3) and values[0] == pytest.approx(0.53)
    from kernelzoo.cli import main
    assert main(["viz", "runs", str(folder), "--smooth", "3", "--last", "2"]) == 0
    printed = capsys.readouterr().out
    assert "its last stage (3, epochs 4-9) only" in printed
    assert "0.5800 (   9)" in printed and "0.5700 (   8)" in printed  # best epoch 9, 3-epoch mean centred on 8


def test_a_repeated_epoch_counts_once_short_runs_are_skipped_and_the_plot_makes_its_folder(tmp_path, capsys):
    _log(tmp_path / "repeated", [0.1, 0.2, 0.3, 0.4, 0.5])
    for epoch in range(2, 7):  # an older resume appended epochs 2-6 again (the later rows count)
        training.append_log(str(tmp_path / "repeated"), {"epoch": epoch, "val_accuracy": 0.6 + 0.01 * epoch})
    epochs, values, _ = sweep.read_run(str(tmp_path / "repeated"))
    assert epochs == [1, 2, 3, 4, 5, 6, 7] and values[2:] == pytest.approx([0.62, 0.63, 0.64, 0.65, 0.66])
    _log(tmp_path / "short", [0.9])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / training.LOG_FILE).write_text("epoch,val_accuracy\n")
    from kernelzoo.cli import main
    out = tmp_path / "new" / "folder" / "sweep.png"
    assert main(["viz", "runs", str(tmp_path / "repeated"), str(tmp_path / "short"), "--smooth", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "short: skipped, 1 epochs are fewer than --smooth 3" in printed
    assert "repeated" in printed and "0.6600 (   7)" in printed and out.stat().st_size > 0
    with pytest.raises(ValueError, match="has no rows"):
        sweep.read_run(str(tmp_path / "empty"))
