"""A run folder knows the data and settings it trained with: a resume or a protocol's reuse on other data (or with
another --max-steps-per-epoch) is refused, a longer resume keeps its lr drops, and `kernelzoo eval` of its model
measures that data, checks the class count and compares with no card or paper."""
import argparse
import json
import os
import re
import shutil

import numpy as np
import pytest

from kernelzoo.zoo import cli, registry, training
from kernelzoo.zoo.data.synthetic import stripes
from kernelzoo.zoo.evaluation import measure
from kernelzoo.zoo.recipe import Recipe, dataset_name, run_settings

PRESET = "convnet_cifar10"  # its tiny builder trains in seconds on 10x10 stripes (3 classes)
TINY = ["n=4", "patch_size=3", "dropout=0.0", "--batch-size", "6", "--quiet", "--no-tensorboard"]


def _stripes_folders(root, seed, classes=3):
    from PIL import Image
    for split, count in (("train", 12), ("test", 6)):
        x, y = stripes(count, seed=seed + (split == "test"))
        for i, (image, label) in enumerate(zip(x, y)):
            if label < classes:
                os.makedirs(os.path.join(root, split, f"class{label}"), exist_ok=True)
                Image.fromarray(image).save(os.path.join(root, split, f"class{label}", f"{i:03d}.png"))
    return root


def _train(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "train")
    return cli.run(parser.parse_args([PRESET, *TINY, *argv]), "train")


@pytest.fixture(autouse=True)
def no_preset_data(tmp_path, monkeypatch):
    """A data directory without CIFAR-10: the preset's dataset is never read (nor downloaded)."""
    monkeypatch.setenv("KERNELZOO_DATA_DIR", str(tmp_path))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, its dataset A, another dataset B of the same classes) after one epoch on A."""
    root = tmp_path_factory.mktemp("identity")
    a, b = _stripes_folders(str(root / "A"), 0), _stripes_folders(str(root / "B"), 5)
    assert _train(["--dataset", a, "--epochs", "1", "--out", str(root / "run")]) == 0
    return str(root / "run"), a, b


def _copy(run_dir, tmp_path, **changes):
    """A copy of the run folder whose config.json has `changes` (None: the key removed)."""
    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    path = os.path.join(copy, training.CONFIG_FILE)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config.update(changes)
    training.write_json(path, {key: value for key, value in config.items() if value is not None})
    return copy, config


def test_a_resume_on_another_dataset_is_refused_but_an_older_run_that_does_not_say_resumes(run, tmp_path):
    run_dir, a, b = run
    copy, config = _copy(run_dir, tmp_path)
    assert config["dataset"] == os.path.abspath(a)
    with pytest.raises(ValueError, match=re.escape(f"dataset {os.path.abspath(a)!r} -> {os.path.abspath(b)!r}")):
        _train(["--dataset", b, "--epochs", "2", "--out", copy, "--resume"])
    older, _ = _copy(run_dir, tmp_path / "older", dataset=None)  # written before runs recorded their dataset
    training.check_resumed_config(older, dict(config, dataset=os.path.abspath(b)))


def test_a_resume_with_another_max_steps_per_epoch_is_refused(run, tmp_path):
    run_dir, a, _ = run
    copy, config = _copy(run_dir, tmp_path)
    assert config["hyperparameters"]["max_steps_per_epoch"] is None
    with pytest.raises(ValueError, match=re.escape("hyperparameters.max_steps_per_epoch None -> 1")):
        _train(["--dataset", a, "--epochs", "2", "--out", copy, "--resume", "--max-steps-per-epoch", "1"])


def test_a_longer_resume_keeps_the_lr_drops_the_run_started_with(run, tmp_path):
    """--epochs 1 made convnet_cifar10's drop every 10 of 20 epochs a drop every epoch: resumed to 4 epochs, the run
    goes on dropping every epoch (not every 2, as a new 4-epoch run would); a --lr-drop-every given is compared."""
    run_dir, a, _ = run
    copy, config = _copy(run_dir, tmp_path)
    assert config["hyperparameters"]["lr_drop_every"] == 1
    with pytest.raises(ValueError, match=re.escape("hyperparameters.lr_drop_every 1 -> 2")):
        _train(["--dataset", a, "--epochs", "4", "--out", copy, "--resume", "--lr-drop-every", "2"])
    assert _train(["--dataset", a, "--epochs", "4", "--out", copy, "--resume"]) == 0
    lr = config["hyperparameters"]["lr"]
    rates = [row["learning_rate"] for row in training.read_log(os.path.join(copy, training.LOG_FILE))]
    assert rates == pytest.approx([lr, lr / 10, lr / 100, lr / 1000])


def test_a_protocol_reuses_a_finished_run_only_on_its_dataset(run):
    run_dir, a, _ = run
    with open(os.path.join(run_dir, training.CONFIG_FILE), encoding="utf-8") as handle:
        config = json.load(handle)
    preset = registry.info(PRESET)

    def planned(dataset):  # what `kernelzoo protocol --dataset DATASET` asks of the run
        return run_settings(preset, config["overrides"], config["hyperparameters"],
                            argparse.Namespace(**config["options"]), config["seed"], dataset_name(preset, dataset))

    assert training.config_changes(run_dir, planned(a), True) == []
    assert training.config_changes(run_dir, planned("/does-not-exist"), True) == [
        f"dataset {os.path.abspath(a)!r} -> '/does-not-exist'"]


def test_eval_of_a_run_measures_the_dataset_it_trained_on_with_no_card_or_paper(run):
    run_dir, a, _ = run
    result = measure(os.path.join(run_dir, "model.keras"))
    assert result["examples"] == 6 and result["card"] is None and result["paper"] is None
    assert result["data"] == f"{a} (the dataset in its run folder's config.json)"
    assert measure(os.path.join(run_dir, "model.keras"), dataset=a)["paper"] is None  # not CIFAR-10 either


def test_eval_refuses_data_of_another_class_count_before_measuring(run, tmp_path):
    run_dir, _, _ = run
    two = _stripes_folders(str(tmp_path / "two"), 0, classes=2)
    with pytest.raises(ValueError, match=r"scores 3 classes, .*two has 2 \(class0, class1\)"):
        measure(os.path.join(run_dir, "model.keras"), dataset=two)


def test_eval_of_an_older_validate_only_run_reads_its_data_path_and_warns_of_the_test_split(run, tmp_path):
    run_dir, a, _ = run
    with open(os.path.join(run_dir, training.CONFIG_FILE), encoding="utf-8") as handle:
        options = json.load(handle)["options"]
    copy, _ = _copy(run_dir, tmp_path, dataset=None, data=a, options=dict(options, validate_only=True))
    with pytest.warns(UserWarning, match="--validate-only .* measures the test split now"):
        result = measure(os.path.join(copy, "model.keras"))
    assert result["data"].startswith(a) and result["examples"] == 6
    assert np.isfinite(result["accuracy"])


def test_kernelzoo_protocol_refuses_a_finished_run_of_another_dataset_and_quiet_decodes_quietly(run, tmp_path,
                                                                                                   capfd):
    _, a, b = run

    def protocol(dataset):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser, "protocol")
        return cli.run(parser.parse_args([PRESET, *TINY, "--dataset", dataset, "--epochs", "1", "--seeds", "0",
                                          "--out", str(tmp_path / "protocol")]), "protocol")

    assert protocol(a) == 0
    assert "decoding" not in "".join(capfd.readouterr())  # --quiet: no bar while the images are decoded
    with pytest.raises(ValueError, match="finished with other settings .*dataset"):
        protocol(b)


def test_sc_pools_keep_the_dataset_they_were_read_from(run):
    from kernelzoo.zoo.sc.data import as_sc_data, carve_validation
    from kernelzoo.zoo.sc.recipe import SCRecipe

    _, a, _ = run
    recipe = SCRecipe()
    data = recipe.load_data(registry.info("sc_cifar10_4k"), dataset=a, options=recipe.options(labels_per_class=2),
                            verbose=0)
    assert data.dataset == os.path.abspath(a)
    assert carve_validation(data, 2, 0).dataset == data.dataset
    plain = Recipe().load_data(registry.info(PRESET), dataset=a, verbose=0)
    assert as_sc_data(plain).dataset == os.path.abspath(a)
