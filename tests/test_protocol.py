"""`kernelzoo protocol`: splits x seeds x grid, mean +- std, resumable; the MovieLens recipe on generated ratings."""
import argparse
import json
import os

import keras
import numpy as np
import pytest

from kernelzoo import cli as main_cli
from kernelzoo.zoo import cli, protocol, training
from kernelzoo.zoo.data import load_ml100k_fold
from kernelzoo.zoo.data.synthetic import planted_ratings, write_ml100k
from kernelzoo.zoo.kernelnet.recipe import best_checkpoint


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
    assert protocol.settings(["u1", "u2"], [0]) == [("u1-s0", "u1", 0), ("u2-s0", "u2", 0)]
    assert protocol.settings(["random"], [3, 4]) == [("random-s3", "random", 3), ("random-s4", "random", 4)]
    assert protocol.settings(None, [1]) == [("s1", None, 1)]
    summary = protocol.mean_std([0.9, 0.8, 1.0])
    assert summary["mean"] == pytest.approx(0.9) and summary["std"] == pytest.approx(0.1) and summary["n"] == 3
    assert protocol.mean_std([0.5])["std"] == 0.0


def _fake_protocol(out, configs, splits, seeds, trained):
    """run_protocol with a train_one that records what it trains and measures test_rmse 0.9 + 0.01 seed."""
    def train_one(config, split, seed, run_dir, resume):
        os.makedirs(run_dir)
        trained.append((split, seed))
        return {"metrics": {"test_rmse": 0.9 + 0.01 * seed}}

    return protocol.run_protocol(train_one, out, configs, protocol.settings(splits, seeds), "rmse",
                                 log=lambda *_: None)


def test_a_run_keeps_its_folder_whatever_the_other_settings_and_counts_once(tmp_path):
    trained = []
    _fake_protocol(tmp_path, [{}], ["u1", "u2"], [0], trained)
    result = _fake_protocol(tmp_path, [{}], ["u1", "u2"], [0, 1], trained)
    assert trained == [("u1", 0), ("u2", 0), ("u1", 1), ("u2", 1)]  # seed 0 is not trained again
    (row,) = result["summary"]
    assert row["n"] == 4 and set(row["values"]) == {"u1-s0", "u1-s1", "u2-s0", "u2-s1"}
    _fake_protocol(tmp_path, [{}], ["u1"], [3], trained)
    assert _fake_protocol(tmp_path, [{}], ["u1"], [0, 3], trained)["summary"][0]["n"] == 5 and len(trained) == 5


def test_a_run_in_an_old_split_named_folder_is_reused_and_never_counted_twice(tmp_path):

    legacy = tmp_path / "default" / "u1"  # older versions: a fixed fold of one seed labelled by its split
    legacy.mkdir(parents=True)
    training.write_json(str(legacy / protocol.RUN_FILE), {
        "config": {}, "split": "u1", "seed": 0, "label": "u1", "figure": "test_rmse", "value": 0.95,
        "metrics": {"test_rmse": 0.95}, "seconds": 1.0})
    trained = []
    result = _fake_protocol(tmp_path, [{}], ["u1"], [0, 1], trained)
    assert trained == [("u1", 1)] and result["summary"][0]["values"] == {"u1": 0.95, "u1-s1": 0.91}
    twin = tmp_path / "default" / "u1-s0"  # the same run under both labels (the old bug's output): refused
    twin.mkdir()
    (twin / protocol.RUN_FILE).write_text((legacy / protocol.RUN_FILE).read_text())
    with pytest.raises(ValueError, match="hold the same run"):
        protocol.collect(tmp_path, "rmse")


def test_configurations_that_would_share_a_folder_are_refused(tmp_path):
    assert protocol.config_label({"hidden": (8, 8)}) == protocol.config_label({"hidden": "8-8"})
    with pytest.raises(ValueError, match="share the run folder 'hidden=8-8'"):
        _fake_protocol(tmp_path, [{"hidden": (8, 8)}, {"hidden": "8-8"}], ["u1"], [0], [])
    _fake_protocol(tmp_path, [{"hidden": (8, 8)}], ["u1"], [0], [])
    with pytest.raises(ValueError, match="holds the run of configuration"):  # the same across two calls
        _fake_protocol(tmp_path, [{"hidden": "8-8"}], ["u1"], [0], [])


def _protocol(tmp_path, *argv):
    return main_cli.main(["protocol", "kernelnet_movielens_100k", "hidden=(4,)", "--data-dir", str(tmp_path),
                          "--epochs", "1", "--iterations-per-epoch", "2", "--quiet", "--no-tensorboard", *argv])


def test_protocol_runs_splits_resumes_and_ensembles_without_test_ratings(tmp_path, capsys):
    write_ml100k(tmp_path, planted_ratings(n_items=40, n_users=30))
    out = tmp_path / "folds"
    assert _protocol(tmp_path, "--splits", "u1", "u2", "--out", str(out)) == 0
    result = json.loads((out / protocol.PROTOCOL_FILE).read_text())
    (row,) = result["summary"]
    assert row["figure"] == "test_rmse" and row["n"] == 2 and set(row["values"]) == {"u1-s0", "u2-s0"}
    runs = {run["label"]: run for run in result["runs"]}
    assert runs["u1-s0"]["metrics"]["test_examples"] == len(load_ml100k_fold(1, str(tmp_path))[1]["ratings"])
    assert 0 < runs["u1-s0"]["value"] < 4 and runs["u1-s0"]["selected_epoch"] >= 1
    assert row["mean"] == pytest.approx(protocol.mean_std(list(row["values"].values()))["mean"])
    printed = capsys.readouterr().out
    assert "test_rmse" in printed and f"{row['mean']:.4f} +- {row['std']:.4f}" in printed

    before = (out / "default" / "u1-s0" / protocol.RUN_FILE).read_text()
    assert _protocol(tmp_path, "--splits", "u1", "u2", "--out", str(out)) == 0  # nothing re-runs
    assert capsys.readouterr().out.count("finished, not re-run") == 2
    assert (out / "default" / "u1-s0" / protocol.RUN_FILE).read_text() == before
    for flags, change in ((("--epochs", "2"), "hyperparameters.epochs 1 -> 2"),
                          (("--val-fraction", "0.1"), "hyperparameters.val_fraction 0.05 -> 0.1")):
        assert _protocol(tmp_path, "--splits", "u1", "--out", str(out), *flags) == 2  # not the finished run's result
        err = capsys.readouterr().err
        assert "finished with other settings (" in err and change in err
    assert (out / "default" / "u1-s0" / protocol.RUN_FILE).read_text() == before

    # an ensemble of 2 on u1, chosen on held-out training ratings: the test ratings are never measured
    assert _protocol(tmp_path, "--splits", "u1", "--validate-only", "--grid", "members=2", "--out", str(out)) == 0
    folder = out / "members=2" / "u1-s0"
    run = json.loads((folder / protocol.RUN_FILE).read_text())
    assert run["figure"] == "val_rmse" and set(run["metrics"]) == {"val_rmse"} and 0 < run["value"] < 4
    config = json.loads((folder / "config.json").read_text())
    assert config["hyperparameters"]["members"] == 2 and config["options"]["validate_only"]
    assert "test_rmse" not in (folder / "metrics.json").read_text()
    # member 0 is the single model of the same seed, member 1 another init; the saved model is their mean
    single = keras.models.load_model(out / "default" / "u1-s0" / "model.keras", compile=False)
    ensemble = keras.models.load_model(folder / "model.keras", compile=False)
    members = [keras.models.load_model(folder / f"member-{m}" / "model.keras", compile=False) for m in range(2)]
    for a, b in zip(single.get_weights(), members[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])
    x = np.random.default_rng(0).uniform(0, 5, size=(7, 30)).astype("float32")
    np.testing.assert_allclose(ensemble.predict(x, verbose=0),
                               (members[0].predict(x, verbose=0) + members[1].predict(x, verbose=0)) / 2, rtol=1e-5)
    (folder / protocol.RUN_FILE).unlink()  # the ensemble again: both members are finished, loaded, not re-run
    (folder / "member-1" / "log.csv").write_text("marker")
    assert _protocol(tmp_path, "--splits", "u1", "--validate-only", "--grid", "members=2", "--out", str(out)) == 0
    assert (folder / "member-1" / "log.csv").read_text() == "marker"
    assert json.loads((folder / protocol.RUN_FILE).read_text())["value"] == pytest.approx(run["value"])
    assert {row["label"] for row in json.loads((out / protocol.PROTOCOL_FILE).read_text())["summary"]} == {
        "default", "members=2"}
    capsys.readouterr()
    assert _protocol(tmp_path, "--splits", "u1", "--split", "u2", "--out", str(out)) == 2
    assert "--splits, not --split" in capsys.readouterr().err


def test_collect_groups_configurations_best_first(tmp_path):

    for config, values in (({"lambda_2": 5}, (0.95, 0.97)), ({"lambda_2": 40}, (0.90, 0.92)), ({}, (0.93,))):
        for seed, value in enumerate(values):
            run = {"config": config, "split": "random", "seed": seed, "label": f"random-s{seed}",
                   "figure": "val_rmse", "value": value, "metrics": {"val_rmse": value}, "seconds": 10.0 + seed}
            folder = tmp_path / protocol.config_label(config) / f"random-s{seed}"
            folder.mkdir(parents=True)
            training.write_json(str(folder / protocol.RUN_FILE), run)
    (tmp_path / "lambda_2=80" / "random-s0").mkdir(parents=True)  # a run not finished: not collected
    result = protocol.collect(tmp_path, "rmse")
    assert [row["label"] for row in result["summary"]] == ["lambda_2=40", "default", "lambda_2=5"]
    best = result["summary"][0]
    assert best["n"] == 2 and best["mean"] == pytest.approx(0.91) and best["std"] == pytest.approx(0.01414, abs=1e-5)
    assert best["values"] == {"random-s0": 0.90, "random-s1": 0.92} and len(result["runs"]) == 5
    assert json.loads((tmp_path / protocol.PROTOCOL_FILE).read_text())["summary"][0]["label"] == "lambda_2=40"
    table = protocol.format_table(result).splitlines()
    assert table[1].startswith("lambda_2=40") and "0.9100 +- 0.0141" in table[1] and "10-11 s" in table[1]
    assert protocol.collect(tmp_path, "accuracy")["summary"][0]["label"] == "lambda_2=5"  # larger is better



def _train(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "train")
    args = parser.parse_args(["kernelnet_movielens_100k", "hidden=(4,)", "--data-dir", str(tmp_path), "--split", "u1",
                              "--epochs", "4", "--iterations-per-epoch", "2", "--val-fraction", "0.1", "--quiet",
                              "--no-tensorboard", *argv])
    return cli.run(args, "train")


def test_refit_trains_the_initial_weights_on_every_training_rating_for_the_selected_epochs(tmp_path):
    write_ml100k(tmp_path, planted_ratings(n_items=40, n_users=30))
    out = tmp_path / "run"
    assert _train(tmp_path, "--refit", "--patience", "1", "--out", str(out)) == 0
    selected = json.loads((out / "checkpoints" / "state.json").read_text())["best"]["epoch"]
    assert 1 <= selected <= 4
    refit_log = (out / "refit" / "log.csv").read_text()
    assert len(refit_log.splitlines()) == 1 + selected and "val_rmse" not in refit_log  # no held-out ratings
    config = json.loads((out / "refit" / "config.json").read_text())
    assert config["hyperparameters"]["refit"] is True
    final, refit = (keras.models.load_model(out / p, compile=False) for p in ("model.keras", "refit/model.keras"))
    early = keras.models.load_model(best_checkpoint(out), compile=False)
    for a, b in zip(final.get_weights(), refit.get_weights()):
        np.testing.assert_array_equal(a, b)  # the run's model is the refit's
    assert not np.allclose(final.get_weights()[0], early.get_weights()[0])
    assert 0 < json.loads((out / "metrics.json").read_text())["test_rmse"] < 4

    # finished: nothing re-runs
    assert _train(tmp_path, "--refit", "--patience", "1", "--out", str(out), "--resume") == 0
    assert (out / "refit" / "log.csv").read_text() == refit_log

    held = tmp_path / "held"  # --validate-only measures the early-stopped model: no refit
    assert _train(tmp_path, "--refit", "--validate-only", "--out", str(held)) == 0
    assert not (held / "refit").exists() and "val_rmse" in (held / "metrics.json").read_text()


def test_an_ensemble_with_refit_averages_the_refitted_members(tmp_path):
    """The card's 0.8887 path (`kernelnet_movielens_100k_ensemble3 --refit`): every member is refitted on all
    training ratings, and the run's model is the mean of the refits, not of the early-stopped members."""
    write_ml100k(tmp_path, planted_ratings(n_items=40, n_users=30))
    out = tmp_path / "run"
    assert _train(tmp_path, "--refit", "--members", "2", "--patience", "1", "--out", str(out)) == 0
    ensemble = keras.models.load_model(out / "model.keras", compile=False)
    refits = [keras.models.load_model(out / f"member-{m}" / "refit" / "model.keras", compile=False) for m in range(2)]
    early = keras.models.load_model(best_checkpoint(out / "member-0"), compile=False)
    x = np.random.default_rng(1).uniform(0, 5, size=(7, 30)).astype("float32")
    np.testing.assert_allclose(ensemble.predict(x, verbose=0),
                               (refits[0].predict(x, verbose=0) + refits[1].predict(x, verbose=0)) / 2, rtol=1e-5)
    assert not np.allclose(refits[0].get_weights()[0], early.get_weights()[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_rmse"] < 4 and "val_rmse" not in metrics  # refitted members saw the held-out ratings


def test_typos_and_a_seed_beside_seeds_are_refused_before_any_data_loads(tmp_path, capsys):
    empty = tmp_path / "empty"  # no ratings here: an error about them would mean the data loaded first
    empty.mkdir()
    assert main_cli.main(["train", "kernelnet_movielens_100k", "hdden=(4,)", "--data-dir", str(empty)]) == 2
    assert "overrides: ['hdden'] are not arguments of" in capsys.readouterr().err
    assert _protocol(empty, "--splits", "u1", "--grid", "lamda_2=5", "--out", str(tmp_path / "p")) == 2
    err = capsys.readouterr().err
    assert "--grid: ['lamda_2'] are not arguments of" in err and "nor recipe hyper-parameters" in err
    assert _protocol(empty, "--seed", "5", "--seeds", "0", "1", "--out", str(tmp_path / "p")) == 2
    assert "give the seeds with --seeds, not --seed" in capsys.readouterr().err


def test_protocol_refuses_resume_strategy_and_splits_it_cannot_run_and_runs_the_seed_given(tmp_path, monkeypatch,
                                                                                          capsys):
    """--resume (a protocol always resumes), --strategy, --split beside --splits and --splits of a family without
    splits are refused before anything runs; --seed S alone is the protocol's one seed."""
    seen = []

    def run_protocol(train_one, out, configs, settings, *args, **kwargs):
        seen.append(list(settings))
        raise ValueError("the protocol ran")

    monkeypatch.setattr(protocol, "run_protocol", run_protocol)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ("--out", str(tmp_path / "p"))
    for argv, message in ((["--resume"], "--resume are not options of a protocol"),
                          (["--strategy", "mirrored"], "--strategy and --resume are not options of a protocol"),
                          (["--splits", "u1", "--split", "u2"], "give the splits with --splits, not --split")):
        assert _protocol(empty, *argv, *out) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main_cli.main(["protocol", "convnet_cifar10", "--splits", "a", *out]) == 2
    assert "--splits: SimNetRecipe has no --split option (use --seeds)" in capsys.readouterr().err
    assert seen == []
    assert _protocol(empty, "--seed", "5", *out) == 2
    assert seen == [[("s5", None, 5)]]  # label, split, seed


# ----------------------------------------------------------------------------- kernelzoo.zoo.evaluation's helpers


def test_eval_dataset_spec_and_the_dataset_a_run_names(tmp_path):
    from kernelzoo.zoo import evaluation
    assert evaluation.dataset_spec("tfds:mnist") == "mnist" and evaluation.dataset_spec("cifar10") == "cifar10"
    with pytest.raises(ValueError, match="tfds: needs a dataset name"):
        evaluation.dataset_spec("tfds:")
    assert evaluation.run_dataset({"dataset": "mnist", "data": str(tmp_path)}) == "mnist"
    assert evaluation.run_dataset({"data": str(tmp_path)}) == str(tmp_path)  # an older run: its local data path
    assert evaluation.run_dataset({"data": str(tmp_path / "gone")}) is None  # not a local path: the preset's
    assert evaluation.run_dataset({}) is None


def test_eval_finds_the_config_of_a_checkpoint_and_refuses_other_class_counts(tmp_path):
    from kernelzoo.zoo import evaluation
    os.makedirs(tmp_path / "run" / "checkpoints")
    training.write_json(str(tmp_path / "run" / training.CONFIG_FILE), {"preset": "convnet_cifar10"})
    for path in ("run/model.keras", "run/checkpoints/epoch_1.keras"):
        assert evaluation.run_config(str(tmp_path / path)) == {"preset": "convnet_cifar10"}, path
    assert evaluation.run_config(str(tmp_path / "elsewhere" / "model.keras")) is None
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="tiny")
    evaluation.check_scores(model, ["a", "b", "c"], "data")
    for names in (["a", "b"], ["a", "b", "c", "d"]):
        with pytest.raises(ValueError, match=f"scores 3 classes, data has {len(names)}"):
            evaluation.check_scores(model, names, "data")
    import types
    from kernelzoo.zoo import registry
    two = types.SimpleNamespace(class_names=["a", "b"], source="two")
    for preset in (None, registry.info("convnet_cifar10")):  # no preset: a --dataset measurement of an image model
        with pytest.raises(ValueError, match="scores 3 classes, two has 2"):
            evaluation.check_classes(model, two, preset)
    evaluation.check_classes(model, two, registry.info("kernelnet_movielens_100k"))  # not a classifier: no check


def test_eval_names_the_preset_of_a_run_folder_and_none_for_a_run_that_trained_no_preset(tmp_path):
    """A run folder's config.json names its preset; a fine-tune run's names none: no preset, not an error."""
    from kernelzoo.zoo import evaluation
    os.makedirs(tmp_path / "run")
    path = str(tmp_path / "run" / "model.keras")
    for config, expected in (({"preset": "convnet_cifar10"}, "convnet_cifar10"), ({"dataset": "folder"}, None)):
        training.write_json(str(tmp_path / "run" / training.CONFIG_FILE), config)
        assert getattr(evaluation.preset_of(path), "name", None) == expected, config


def test_eval_reads_a_run_folders_settings_only_for_its_own_preset(tmp_path):
    """The seed, options and dataset in config.json are those of the run's preset: measured as another preset
    (--preset), the file is measured with that preset's own settings."""
    from kernelzoo.zoo import evaluation, registry
    os.makedirs(tmp_path / "run")
    path = str(tmp_path / "run" / "model.keras")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    config = {"preset": "kernelnet_mnist_learned", "seed": 3}
    training.write_json(str(tmp_path / "run" / training.CONFIG_FILE), config)
    assert evaluation._load(path, None)[1:3] == (registry.info("kernelnet_mnist_learned"), config)
    assert evaluation._load(path, "kernelnet_mnist_prior")[2] == {}


def test_eval_of_a_zoo_name_refuses_another_preset():
    """A zoo name is measured with its own preset: another --preset is refused before anything loads."""
    from kernelzoo.zoo import evaluation
    with pytest.raises(ValueError, match="'kernelnet_mnist_learned' is not the preset of the zoo model"):
        evaluation.measure("kernelnet_mnist_prior", "/no/such/data", preset="kernelnet_mnist_learned")


def test_eval_warns_of_the_test_split_of_a_validate_only_run_only(recwarn):
    from kernelzoo.zoo import evaluation
    run = {"options": {"validate_only": True}}
    evaluation._warn_validate_only(run, "val")  # --holdout: its held-out images, as it validated on
    evaluation._warn_validate_only({"options": {}}, "test")
    assert not recwarn.list
    with pytest.warns(UserWarning, match="--validate-only"):
        evaluation._warn_validate_only(run, "test")


def test_eval_knows_shipped_weights_by_name_or_sha256_only(tmp_path, monkeypatch):
    """A zoo name holds its shipped weights, a .keras file only with their SHA-256 (hashed once), a model never."""
    from kernelzoo.zoo import evaluation, registry
    name = next(iter(registry.list_models(pretrained=True)))
    preset = registry.info(name)
    other = tmp_path / "other.keras"
    other.write_bytes(b"not the shipped weights")
    hashed = []
    digest = registry.sha256
    monkeypatch.setattr(registry, "sha256", lambda path: hashed.append(path) or digest(path))
    monkeypatch.setattr(registry, "load", lambda path: "model")
    monkeypatch.setattr(registry, "load_file", lambda path: "model")
    assert evaluation._load(name, None)[3] and not hashed
    assert not evaluation._load(str(other), preset)[3] and hashed == [str(other)]
    assert evaluation._load(str(other), None)[1:] == (None, {}, False)
    monkeypatch.setattr(registry, "sha256", lambda path: preset.sha256)  # a copy of the shipped weights
    assert evaluation._load(str(other), None)[1:] == (preset, {}, True)
    assert not evaluation._load(keras.Sequential(), preset)[3]


def test_eval_test_split_takes_the_first_images_of_each_class(monkeypatch):
    """`num` images: the first of each class, then the second of each, ...: 4 of 3 classes are 2, 1 and 1 (taking
    ceil(4 / 3) = 2 of each class in turn gave 2, 2 and 0), and a class out of images leaves its turn to the rest."""
    import types
    from kernelzoo.zoo import data as data_module, evaluation
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    fake = types.SimpleNamespace(test=(np.arange(10)[:, None], y), num_classes=3, source="fake")
    monkeypatch.setattr(data_module, "load_images", lambda name, data_dir=None: fake)
    x, labels, _ = evaluation.test_split("convnet_cifar10", num=5)
    assert x[:, 0].tolist() == [0, 1, 2, 3, 4] and labels.tolist() == [0, 1, 2, 0, 1]
    x, labels, _ = evaluation.test_split("convnet_cifar10", num=4)
    assert sorted(labels.tolist()) == [0, 0, 1, 2]
    x, labels, _ = evaluation.test_split("convnet_cifar10", num=10)  # classes 0 and 1 have 3: class 2 gives 4
    assert labels.tolist() == [0, 1, 2] * 3 + [2]
    x, labels, _ = evaluation.test_split("convnet_cifar10")
    assert len(x) == 10


def test_eval_of_held_out_images_draws_them_with_seed_0_and_shows_no_paper_figure(monkeypatch):
    """`measure(..., holdout=N)` measures the validation images `train --holdout N --seed 0` held out (seed 0 unless
    said) and, not the preset's test split, shows neither the card's nor the paper's figure; the test split does."""
    import types
    from kernelzoo.zoo import evaluation, registry
    preset = registry.info("convnet_cifar10")
    drawn = []

    class FakeRecipe:
        def options(self, **changes):
            return types.SimpleNamespace(holdout=None, **changes)

        def load_data(self, preset, data_dir, dataset, options, seed=0):
            return types.SimpleNamespace(class_names=[str(i) for i in range(10)], source="fake")

        def held_out(self, data, holdout, seed):
            drawn.append((holdout, seed))
            return data

        def evaluate(self, model, data, split, verbose=0):
            return {"accuracy": 0.5, "split": split}

    monkeypatch.setattr(registry, "recipe", lambda preset: FakeRecipe())
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    held = evaluation.measure(model, preset=preset, holdout=5)
    assert drawn == [(5, 0)] and held["split"] == "val" and held["paper"] is None and held["card"] is None
    test = evaluation.measure(model, preset=preset)
    assert test["split"] == "test" and test["paper"] == preset.paper and test["card"] is None  # not shipped weights
