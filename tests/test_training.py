"""The resumable trainer and the train/eval CLI on tiny synthetic data."""
import argparse
import json
import os

import keras
import numpy as np
import pytest

import kernelzoo  # noqa: F401
from kernelzoo.zoo import init, training
from kernelzoo.zoo.simnet import cli, models


def _stripes(count, seed=0, size=10):
    """Three learnable classes: horizontal stripes, vertical stripes, flat colour; plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    grid = np.arange(size)
    patterns = [np.tile((grid[:, None] % 2) * 1.0, (1, size)), np.tile((grid[None, :] % 2) * 1.0, (size, 1)),
                np.full((size, size), 0.5)]
    images = np.stack([patterns[label] for label in labels])[..., None] * np.array([200.0, 150.0, 100.0])
    images = images + rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def _tiny_simnet():
    model = models.simnet_patch_labeling(n=6, p=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    x, _ = _stripes(60, seed=5)
    init.unsupervised_init(model, x, num_patches=800, iterations=5, seed=0)
    return model


def test_schedule_and_epoch_order():
    schedule = training.step_schedule(0.01, 100)
    assert schedule(0) == 0.01 and schedule(49) == 0.01 and schedule(50) == pytest.approx(0.001)
    np.testing.assert_array_equal(training.epoch_order(10, 3, 0), training.epoch_order(10, 3, 0))
    assert not np.array_equal(training.epoch_order(10, 3, 0), training.epoch_order(10, 4, 0))


def test_dataset_visits_every_example_once_per_epoch():
    x, y = _stripes(10)
    batches = list(training.make_dataset(x, y, 4, epochs=2, seed=1))
    assert [len(b[1]) for b in batches] == [4, 4, 2, 4, 4, 2]
    first = np.concatenate([b[0].numpy() for b in batches[:3]])
    assert sorted(map(bytes, first.astype(np.uint8))) == sorted(map(bytes, x))


def test_tiny_simnet_trains_and_loss_drops(tmp_path):
    x, y = _stripes(96)
    result = training.train(_tiny_simnet(), (x, y), out_dir=str(tmp_path / "run"), epochs=6, batch_size=16,
                            lr=0.05, test_data=_stripes(30, seed=1), verbose=0, tensorboard=False)
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < 0.8 * losses[0]
    assert result["test"]["accuracy"] > 0.6
    for name in ("model.keras", "log.csv", "test_metrics.json", "training_curves.png",
                 "checkpoints/last.keras", "checkpoints/state.json", "checkpoints/epoch-006.keras"):
        assert os.path.isfile(tmp_path / "run" / name), name
    assert not os.path.isfile(tmp_path / "run" / "checkpoints" / "epoch-004.keras")  # keeps the last 2


class _Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("killed")


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path):
    x, y = _stripes(48)
    kwargs = dict(epochs=4, batch_size=16, lr=0.05, verbose=0, tensorboard=False, seed=3)
    straight = training.train(_tiny_simnet(), (x, y), out_dir=str(tmp_path / "a"), **kwargs)["model"]
    with pytest.raises(KeyboardInterrupt):
        training.train(_tiny_simnet(), (x, y), out_dir=str(tmp_path / "b"), callbacks=[_Kill()], **kwargs)
    assert training.read_state(str(tmp_path / "b"))["epoch"] == 2
    resumed = training.train(None, (x, y), out_dir=str(tmp_path / "b"), resume=True, **kwargs)
    for a, b in zip(straight.weights, resumed["model"].weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
    rows = resumed["history"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert resumed["model"].optimizer.iterations.numpy() == straight.optimizer.iterations.numpy()


def test_train_refuses_to_overwrite_a_run(tmp_path):
    x, y = _stripes(12)
    model = models.convnet_baseline(n=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    training.train(model, (x, y), out_dir=str(tmp_path), epochs=1, batch_size=6, verbose=0, tensorboard=False)
    with pytest.raises(ValueError, match="out_dir"):
        training.train(model, (x, y), out_dir=str(tmp_path), epochs=1, verbose=0)


def test_training_bad_arguments(tmp_path):
    x, y = _stripes(6)
    model = models.convnet_baseline(n=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    with pytest.raises(ValueError, match="`epochs`"):
        training.train(model, (x, y), out_dir=str(tmp_path), epochs=0)
    with pytest.raises(ValueError, match="`train_data`"):
        training.train(model, x, out_dir=str(tmp_path), epochs=1)
    with pytest.raises(ValueError, match="`out_dir`"):
        training.train(model, (x, y), out_dir=None, epochs=1)
    with pytest.raises(ValueError, match="`model`"):
        training.train("model", (x, y), out_dir=str(tmp_path / "x"), epochs=1)
    with pytest.raises(ValueError, match="`lr`"):
        training.step_schedule(-1, 10)
    with pytest.raises(ValueError, match="`history`"):
        training.plot_curves([], str(tmp_path / "c.png"))


def _write_folder_dataset(root):
    from PIL import Image
    for split, count, seed in (("train", 36, 0), ("test", 12, 1)):
        x, y = _stripes(count, seed=seed)
        for i, (image, label) in enumerate(zip(x, y)):
            folder = os.path.join(root, split, f"class{label}")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.png"))


def _parse(command, argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, command)
    return parser.parse_args(argv)


def test_cli_train_then_eval(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERNELZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "stripes"
    _write_folder_dataset(str(data))
    out = tmp_path / "run"
    args = _parse("train", ["simnet_cifar10_wl2_n400", "n=4", "patch_size=3", "--dataset", str(data), "--epochs", "2",
                            "--batch-size", "12", "--init-images", "20", "--out", str(out), "--quiet",
                            "--no-tensorboard"])
    assert cli.run(args, "train") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"]["epochs"] == 2 and run["overrides"] == {"n": 4, "patch_size": 3}
    assert (out / "test_metrics.json").is_file() and (out / "training_curves.png").is_file()
    capsys.readouterr()
    assert cli.run(_parse("eval", [str(out / "model.keras"), "--dataset", str(data), "--json",
                                   str(tmp_path / "m.json")]), "eval") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["examples"] == 12 and 0 <= metrics["accuracy"] <= 1


def test_cli_validate_only_with_random_init(tmp_path, monkeypatch, capsys):
    """--validate-only trains on train minus the holdout and never evaluates the test split;
    --no-init keeps the random templates but still fits the whitening (paper Sec. 6.3)."""
    monkeypatch.setenv("KERNELZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "stripes"
    _write_folder_dataset(str(data))
    out = tmp_path / "run"
    args = _parse("train", ["simnet_cifar10_wl2_n400", "n=4", "patch_size=3", "--dataset", str(data), "--epochs", "1",
                            "--batch-size", "12", "--holdout", "12", "--validate-only", "--no-init",
                            "--init-images", "20", "--out", str(out), "--quiet", "--no-tensorboard"])
    assert cli.run(args, "train") == 0
    assert "held-out accuracy" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert (run["train_examples"], run["validation_examples"]) == (24, 12)
    assert run["init"] == {"patch_whitening": "zca"}
    assert not (out / "test_metrics.json").exists()
    assert "val_accuracy" in training.read_log(str(out / "log.csv"))[-1]


def test_unsupervised_init_without_similarity_keeps_random_templates():
    model = models.simnet_patch_labeling(n=6, p=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    before = keras.ops.convert_to_numpy(model.get_layer("similarity").templates)
    reports = init.unsupervised_init(model, _stripes(60)[0], num_patches=800, similarity=False)
    assert reports == {"patch_whitening": "zca"}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("similarity").templates), before)
    assert 0.8 < before.std() < 1.2      # the paper's unit-variance Gaussian templates


def test_cli_bad_arguments():
    with pytest.raises(ValueError, match="overrides"):
        cli.parse_overrides(["n"])
    with pytest.raises(ValueError, match="name"):
        cli.entry("no_such_model")
    with pytest.raises(ValueError, match="command"):
        cli.add_arguments(argparse.ArgumentParser(), "fly")
    with pytest.raises(ValueError, match="model"):
        cli.run(_parse("eval", ["missing.keras"]), "eval")
    assert cli.parse_overrides(["n=4", "weighted=false", "p=1.5", "name=x"]) == {
        "n": 4, "weighted": False, "p": 1.5, "name": "x"}
