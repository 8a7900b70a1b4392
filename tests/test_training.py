"""The shared trainer and run folder, the recipe hooks and the train/eval CLI on tiny synthetic data."""
import argparse
import json
import os
import re

import keras
import numpy as np
import pytest

from kernelzoo import cli as main_cli
from kernelzoo.zoo import cli, registry, training
from kernelzoo.zoo.data.synthetic import stripes
from kernelzoo.zoo.recipe import DEFAULTS, Data, Recipe, classification_loss, scaled_milestones, seeded_subset
from kernelzoo.zoo.simnet import init, models


def _tiny_simnet():
    model = models.simnet_patch_labeling(n=6, p=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    init.unsupervised_init(model, stripes(60, seed=5)[0], num_patches=800, iterations=5, seed=0)
    return Recipe().compile(model, dict(DEFAULTS, lr=0.05))


def test_schedule_and_epoch_order():
    """The step schedule drops 10x at half the epochs; an epoch's order is a permutation of the examples (each
    seen once), a function of (seed, epoch) only."""
    schedule = training.step_schedule(0.01, 100)
    assert schedule(0) == 0.01 and schedule(49) == 0.01 and schedule(50) == pytest.approx(0.001)
    np.testing.assert_array_equal(np.sort(training.epoch_order(10, 3, 0)), np.arange(10))
    np.testing.assert_array_equal(training.epoch_order(10, 3, 0), training.epoch_order(10, 3, 0))
    assert not np.array_equal(training.epoch_order(10, 3, 0), training.epoch_order(10, 4, 0))


def test_step_schedule_drops_every_half_of_an_odd_run_rounded_down():
    """drop_every defaults to epochs // 2: a 5-epoch run drops at epochs 2 and 4, not at 3."""
    rates = [training.step_schedule(1.0, 5)(epoch) for epoch in range(5)]
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_milestone_schedule_drops_at_each_milestone_as_multisteplr():
    schedule = training.milestone_schedule(0.1, (60, 85, 100))
    rates = [schedule(epoch) for epoch in range(105)]
    assert rates[:60] == [0.1] * 60 and rates[100:] == pytest.approx([1e-4] * 5)
    assert rates[60] == pytest.approx(0.01) and rates[84] == pytest.approx(0.01) and rates[85] == pytest.approx(1e-3)
    assert training.milestone_schedule(1.0, [2], factor=0.5)(7) == 0.5  # a list, another factor; past the end


@pytest.mark.parametrize("milestones, factor, name", [
    ((), 0.1, "milestones"), ((5, 5), 0.1, "milestones"), ((8, 3), 0.1, "milestones"), ((0, 3), 0.1, "milestones"),
    ((2.5,), 0.1, "milestones"), (5, 0.1, "milestones"), ((3,), 0.0, "factor")])
def test_milestone_schedule_names_its_bad_arguments(milestones, factor, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        training.milestone_schedule(0.1, milestones, factor)
    with pytest.raises(ValueError, match="`lr`"):
        training.milestone_schedule(0, (3,))


def test_recipe_schedules_and_their_bad_hyperparameters():
    recipe = Recipe()
    rates = recipe.lr_schedule(dict(DEFAULTS, lr=0.1, epochs=6, schedule="milestones", lr_milestones=(2, 4)))
    assert [rates(epoch) for epoch in range(6)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert recipe.lr_schedule(dict(DEFAULTS, lr=0.1, epochs=6))(3) == pytest.approx(0.01)  # step: after half
    assert recipe.lr_schedule(dict(DEFAULTS, schedule="cosine")) is None
    with pytest.raises(ValueError, match="`lr_milestones`"):
        recipe.lr_schedule(dict(DEFAULTS, schedule="milestones"))
    with pytest.raises(ValueError, match="`lr_milestones`.*increasing"):
        recipe.lr_schedule(dict(DEFAULTS, schedule="milestones", lr_milestones=(4, 2)))
    with pytest.raises(ValueError, match="schedule"):
        recipe.lr_schedule(dict(DEFAULTS, schedule="exponential"))


def test_other_epochs_move_the_milestones_with_them():
    """CKN-5's 60/85/100 of 105 epochs: at the same fractions of a 40-epoch run; explicit milestones win."""
    recipe, preset = Recipe(), registry.info("ckn_cifar10_sup5")
    assert recipe.hyperparameters(preset)["lr_milestones"] == (60, 85, 100)
    assert recipe.hyperparameters(preset, epochs=40)["lr_milestones"] == (23, 32, 38)
    assert recipe.hyperparameters(preset, epochs=210)["lr_milestones"] == (120, 170, 200)
    assert recipe.hyperparameters(preset, epochs=2)["lr_milestones"] == (1, 2)  # merged, never epoch 0
    assert recipe.hyperparameters(preset, epochs=40, lr_milestones=(30,))["lr_milestones"] == (30,)
    for epochs, new_epochs in ((0, 40), (105, 0), (105, 2.5)):
        with pytest.raises(ValueError, match="`epochs`"):
            scaled_milestones((60, 85, 100), epochs, new_epochs)


def test_an_early_milestone_of_a_shortened_run_stays_at_epoch_1():
    """A milestone at 5 of 100 epochs is at 0.2 of a 4-epoch run: epoch 1, not a drop before the first epoch."""
    assert scaled_milestones((5, 50), 100, 4) == (1, 2)


def test_other_epochs_move_the_lr_drops_in_proportion_and_the_recipes_own_epochs_not_at_all():
    """convnet_cifar10_n6400 drops every 45 of its 150 epochs: --epochs 150 given changes nothing, 30 drop every 9;
    a drop at half a run stays at E // 2 (the cards' short runs: 3 epochs of a 20-epoch recipe drop every epoch)."""
    recipe, preset = Recipe(), registry.info("convnet_cifar10_n6400")
    assert recipe.hyperparameters(preset, epochs=150)["lr_drop_every"] == 45
    assert recipe.hyperparameters(preset, epochs=30)["lr_drop_every"] == 9
    assert recipe.hyperparameters(preset, epochs=30, lr_drop_every=7)["lr_drop_every"] == 7
    half = registry.info("simnet_cifar10_wl2_n400")  # 20 epochs, a drop every 10
    assert [recipe.hyperparameters(half, epochs=e)["lr_drop_every"] for e in (3, 27, 40)] == [1, 13, 20]


def test_dataset_visits_every_example_once_per_epoch():
    x, y = stripes(10)
    batches = list(training.make_dataset(x, y, 4, epochs=2, seed=1))
    assert [len(b[1]) for b in batches] == [4, 4, 2, 4, 4, 2]
    first = np.concatenate([b[0].numpy() for b in batches[:3]])
    assert sorted(map(bytes, first.astype(np.uint8))) == sorted(map(bytes, x))


def test_a_capped_resumed_dataset_starts_each_epoch_at_the_head_of_its_own_order():
    """steps_per_epoch=1 from start_epoch 1: one batch an epoch, the first of epoch_order(N, e, seed) for e = 1, 2
    (an epoch never runs on into the rest of the one before)."""
    x, y = np.zeros((12, 2), np.uint8), np.arange(12)
    batches = list(training.make_dataset(x, y, 4, epochs=3, start_epoch=1, seed=2, steps_per_epoch=1))
    assert [b[1].numpy().tolist() for b in batches] == [training.epoch_order(12, e, 2)[:4].tolist() for e in (1, 2)]


def test_tiny_simnet_trains_into_a_run_folder(tmp_path):
    x, y = stripes(96)
    out = tmp_path / "run"
    result = training.train(_tiny_simnet(), (x, y), out_dir=str(out), epochs=6, batch_size=16,
                            lr_schedule=training.step_schedule(0.05, 6), verbose=0, tensorboard=False)
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < 0.8 * losses[0]
    assert training.evaluate(result["model"], stripes(30, seed=1))["accuracy"] > 0.6
    for name in ("model.keras", "log.csv", "training_curves.png", "checkpoints/last.keras", "checkpoints/state.json",
                 "checkpoints/epoch-006.keras"):
        assert os.path.isfile(out / name), name
    assert not os.path.isfile(out / "checkpoints" / "epoch-004.keras")  # keeps the last 2
    assert [row["learning_rate"] for row in result["history"]][2:4] == pytest.approx([0.05, 0.005])


def test_train_refuses_to_overwrite_a_run_and_needs_a_compiled_model(tmp_path):
    x, y = stripes(12)
    model = models.convnet_baseline(n=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    with pytest.raises(ValueError, match="compiled"):
        training.train(model, (x, y), out_dir=str(tmp_path), epochs=1, verbose=0)
    Recipe().compile(model, DEFAULTS)
    training.train(model, (x, y), out_dir=str(tmp_path), epochs=1, batch_size=6, verbose=0, tensorboard=False)
    with pytest.raises(ValueError, match="out_dir"):
        training.train(model, (x, y), out_dir=str(tmp_path), epochs=1, verbose=0)


@pytest.mark.parametrize("optimizer", [keras.optimizers.Adam, lambda: keras.optimizers.SGD(momentum=0.9)])
def test_a_checkpoint_saved_before_the_first_step_resumes_without_a_warning(tmp_path, recwarn, optimizer):
    """The optimizer is saved built, so a compiled load finds every slot (Keras warns and skips it otherwise)."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer(), loss="mse")
    training.save_checkpoint(model, str(tmp_path), 0)
    resumed = training.load_last(str(tmp_path))
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]
    assert len(resumed.optimizer.variables) == len(model.optimizer.variables) > 2


def test_a_kill_inside_a_checkpoint_resumes_from_a_matching_state(tmp_path):
    """state.json names its checkpoint: killed after the epoch file or after the state, the run resumes from
    weights of the epoch its state counts; log rows past that epoch are dropped."""
    x, y = stripes(24)
    config = {"preset": "p", "hyperparameters": {"lr": 0.05, "epochs": 2}, "seed": 0}
    model = _tiny_simnet()
    training.train(model, (x, y), out_dir=str(tmp_path), epochs=2, batch_size=8, verbose=0, tensorboard=False,
                   config=config)
    state = training.read_state(str(tmp_path))
    assert state["epoch"] == 2 and state["checkpoint"] == "epoch-002.keras"
    two = model.get_weights()
    model.set_weights([w + 1.0 for w in two])  # epoch 3's file written, then killed before its state.json
    training.save_model(model, str(tmp_path / "checkpoints" / "epoch-003.keras"))
    training.append_log(str(tmp_path), {"epoch": 2, "accuracy": 0.5, "loss": 1.0})
    assert [row["epoch"] for row in training.read_log(str(tmp_path / "log.csv"))] == [0, 1, 2]
    assert training.start_run(str(tmp_path), True, config) == 2
    assert [row["epoch"] for row in training.read_log(str(tmp_path / "log.csv"))] == [0, 1]
    for loaded, saved in zip(training.load_last(str(tmp_path)).get_weights(), two):
        np.testing.assert_array_equal(loaded, saved)
    training.write_json(str(tmp_path / "checkpoints" / "state.json"),  # killed after the state, before last.keras
                        {"epoch": 3, "checkpoint": "epoch-003.keras", "seed": 0})
    for loaded, saved in zip(training.load_last(str(tmp_path)).get_weights(), model.get_weights()):
        np.testing.assert_array_equal(loaded, saved)  # epoch 3's weights, as its state counts (not last.keras)
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)  # a run saved before state.json named its file
    training.save_model(model, str(old / "checkpoints" / "last.keras"))
    training.write_json(str(old / "checkpoints" / "state.json"), {"epoch": 3})
    assert training.read_state(str(old))["epoch"] == 3 and training.load_last(str(old)).count_params() > 0


def test_a_resume_without_a_model_continues_the_checkpoints_model(tmp_path):
    """train(None, resume=True) loads the checkpoint's model, optimizer included: one more epoch, one more step."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    data = (np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32))
    training.train(model, data, out_dir=str(tmp_path), epochs=1, batch_size=4, verbose=0, tensorboard=False)
    result = training.train(None, data, out_dir=str(tmp_path), epochs=2, batch_size=4, resume=True, verbose=0,
                            tensorboard=False)
    assert [int(row["epoch"]) for row in result["history"]] == [0, 1]
    assert int(result["model"].optimizer.iterations) == 2


def test_a_state_whose_checkpoint_is_gone_is_refused_not_restarted(tmp_path):
    """state.json names epoch-001.keras, deleted: neither a resume nor a new run (which would overwrite config.json
    and log.csv) goes on."""
    x, y = stripes(12)
    model = Recipe().compile(models.convnet_baseline(n=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3),
                             DEFAULTS)
    training.train(model, (x, y), out_dir=str(tmp_path), epochs=1, batch_size=6, verbose=0, tensorboard=False,
                   config={"seed": 0})
    os.remove(tmp_path / "checkpoints" / "epoch-001.keras")
    files = {name: (tmp_path / name).read_text() for name in ("config.json", "log.csv")}
    for resume in (False, True):
        with pytest.raises(ValueError, match="`out_dir` .*epoch-001.keras, which is missing"):
            training.train(model, (x, y), out_dir=str(tmp_path), epochs=2, batch_size=6, resume=resume, verbose=0,
                           tensorboard=False, config={"seed": 1})
    assert {name: (tmp_path / name).read_text() for name in files} == files


def test_a_resumed_run_draws_the_dropout_masks_of_the_uninterrupted_one(tmp_path):
    """The Keras random generators' states (not in the .keras file) are in state.json and restored on resume: the
    ConvNet baseline with dropout 0.5, killed at the start of epoch 2 and resumed, ends with the same weights."""
    import dataclasses

    from conftest import TinyRuns, _Kill
    from kernelzoo.zoo.simnet.recipe import tiny_runs

    run = next(run for run in tiny_runs() if run.preset == "convnet_cifar10")
    run = dataclasses.replace(run, overrides=dict(run.overrides, dropout=0.5))
    straight = TinyRuns.train(run, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        TinyRuns.train(run, tmp_path / "resumed", callbacks=[_Kill()])
    (seed, counter), = training.read_state(str(tmp_path / "resumed"))["random_states"]
    assert counter == 2 * 6  # 6 steps per epoch
    resumed = TinyRuns.train(run, tmp_path / "resumed", resume=True)
    assert [int(row["epoch"]) for row in resumed["history"]] == [0, 1, 2, 3]
    for a, b in zip(straight["model"].weights, resumed["model"].weights):  # equal only with equal dropout masks
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_a_run_resumes_only_with_its_own_settings(tmp_path):
    x, y = stripes(12)
    config = {"preset": "p", "overrides": {"n": 2}, "hyperparameters": {"lr": 0.05, "epochs": 1},
              "options": {"holdout": 5}, "seed": 3, "host": "a"}
    training.train(_tiny_simnet(), (x, y), out_dir=str(tmp_path), epochs=1, batch_size=6, verbose=0,
                   tensorboard=False, config=config)
    longer = dict(config, hyperparameters={"lr": 0.05, "epochs": 4, "patience": 9}, host="b")  # run longer, elsewhere
    assert training.start_run(str(tmp_path), True, longer) == 1
    other_lr = {"lr": 0.01, "epochs": 1}
    for changed, message in ((dict(config, seed=0), "seed 3 -> 0"),
                             (dict(config, hyperparameters=other_lr), "hyperparameters.lr 0.05 -> 0.01"),
                             (dict(config, options={"holdout": None}), "options.holdout 5 -> None"),
                             (dict(config, overrides={}), "overrides.n 2 -> None")):
        with pytest.raises(ValueError, match=re.escape(message)):
            training.start_run(str(tmp_path), True, changed)


def test_a_resume_is_refused_when_the_preset_its_builder_or_its_config_changed(tmp_path):
    """A preset renamed, or whose builder or builder config changed since the run started (another zoo version),
    builds another model: each difference is named. Settings the resumed call does not give are not compared."""
    config = {"preset": "p", "builder": "simnet:convnet_baseline", "config": {"n": 6, "patch_size": 3}, "seed": 0}
    training.write_json(str(tmp_path / training.CONFIG_FILE), config)
    training.check_resumed_config(str(tmp_path), config)
    for changed, message in ((dict(config, preset="q"), "preset 'p' -> 'q'"),
                             (dict(config, builder="simnet:simnet"), "builder 'simnet:convnet_baseline' -> 'simnet:"),
                             (dict(config, config={"n": 8, "patch_size": 3}), "config.n 6 -> 8")):
        with pytest.raises(ValueError, match=re.escape(message)):
            training.check_resumed_config(str(tmp_path), changed)
    training.check_resumed_config(str(tmp_path), {"seed": 0})


def test_a_cosine_run_resumes_only_with_its_own_epochs(tmp_path):
    """The cosine decay's length is fixed when the run starts (its checkpoint keeps it): resumed with more epochs it
    would train at lr 0, so another --epochs is refused; its own resumes."""
    preset = registry.info("kernelnet_mnist_prior")
    recipe = registry.recipe(preset)
    grid = {"grids": (2,), "grid_sides": (4,), "gammas": (25.0,), "image_size": 12}
    data = Data(train=stripes(32, size=12, channels=1), test=None, source="stripes", class_names=("h", "v", "f"))

    def train(epochs, resume):
        hp = recipe.hyperparameters(preset, epochs=epochs, batch_size=16)
        assert hp["schedule"] == "cosine"
        return recipe.train(preset, data, str(tmp_path), overrides=grid, hp=hp, resume=resume, verbose=0,
                            tensorboard=False)

    train(1, False)
    with pytest.raises(ValueError, match="`--epochs` 2: .* cosine over 1 epochs, a length fixed when it started"):
        train(2, True)
    assert len(train(1, True)["history"]) == 1


def test_eval_draws_the_run_folders_split_with_its_seed(tmp_path, monkeypatch):
    """A run's held-out images and random splits depend on its --seed: eval of its model.keras loads the data
    with the seed in its config.json (an explicit seed wins)."""
    from kernelzoo.zoo import evaluation
    from kernelzoo.zoo.kernelnet.mnist import kernelnet_mnist

    kernelnet_mnist(grids=(1,), grid_sides=(2,), gammas=(25.0,)).save(tmp_path / "model.keras")
    training.write_json(str(tmp_path / "config.json"), {"preset": "kernelnet_mnist_prior", "options": {}, "seed": 7})
    seeds = []

    def load_data(self, preset, data_dir=None, dataset=None, options=None, seed=0):
        seeds.append(seed)
        raise RuntimeError("data loaded")

    monkeypatch.setattr(type(registry.recipe(registry.info("kernelnet_mnist_prior"))), "load_data", load_data)
    for seed in (None, 2):
        with pytest.raises(RuntimeError, match="data loaded"):
            evaluation.measure(str(tmp_path / "model.keras"), seed=seed)
    assert seeds == [7, 2]


def test_training_bad_arguments(tmp_path):
    x, y = stripes(6)
    model = Recipe().compile(models.convnet_baseline(n=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3),
                             DEFAULTS)
    with pytest.raises(ValueError, match="`epochs`"):
        training.train(model, (x, y), out_dir=str(tmp_path), epochs=0)
    with pytest.raises(ValueError, match="`train_data`"):
        training.train(model, x, out_dir=str(tmp_path), epochs=1)
    for inputs, targets in ((x[:0], y[:0]), (np.arange(6), y)):  # no example, examples without a feature axis
        with pytest.raises(ValueError, match=r"`train_data` inputs must be a non-empty array \(N, ...\)"):
            training.train(model, (inputs, targets), out_dir=str(tmp_path), epochs=1)
    for targets in (y[:5], y.astype(str)):  # a label short, labels that are not numbers
        with pytest.raises(ValueError, match="`train_data` targets must hold 6 numeric rows"):
            training.train(model, (x, targets), out_dir=str(tmp_path), epochs=1)
    with pytest.raises(ValueError, match="`out_dir`"):
        training.train(model, (x, y), out_dir=None, epochs=1)
    with pytest.raises(ValueError, match=re.escape("`start_epoch` must be an int in [0, 1], got 2")):
        training.make_dataset(x, y, 4, epochs=2, start_epoch=2)  # past the last epoch: nothing left to run
    with pytest.raises(ValueError, match="`model`"):
        training.train("model", (x, y), out_dir=str(tmp_path / "x"), epochs=1)
    with pytest.raises(ValueError, match="`lr`"):
        training.step_schedule(-1, 10)
    with pytest.raises(ValueError, match="`history`"):
        training.plot_curves([], str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="strategy"):
        training.make_strategy("ring")


def test_hyperparameters_override_and_scale_the_lr():
    recipe = Recipe()
    preset = registry.info("simnet_cifar10_wl2_n400")
    hp = recipe.hyperparameters(preset, epochs=4, batch_size=None)
    assert (hp["epochs"], hp["lr_drop_every"], hp["batch_size"]) == (4, 2, 64)
    linear = registry.info("kernelnet_mnist_prior")
    scaled = recipe.hyperparameters(type(linear)(**{**linear.__dict__,
                                                    "recipe": dict(linear.recipe, lr_scaling="linear")}),
                                    batch_size=256)
    assert scaled["lr"] == pytest.approx(2 * linear.recipe["lr"])
    assert recipe.hyperparameters(linear, batch_size=256)["lr"] == linear.recipe["lr"]
    with pytest.raises(ValueError, match="no_such_option"):
        recipe.options(no_such_option=1)


def test_a_given_lr_is_not_scaled_with_the_batch_size():
    """lr_scaling "linear" scales the recipe's lr with another batch size; an lr given with it is used as given."""
    import dataclasses
    preset = registry.info("kernelnet_mnist_prior")
    linear = dataclasses.replace(preset, recipe=dict(preset.recipe, lr_scaling="linear"))
    assert Recipe().hyperparameters(linear, batch_size=4 * preset.recipe["batch_size"], lr=0.5)["lr"] == 0.5


def test_a_limited_training_set_is_a_seeded_draw_kept_in_order():
    """--limit-train N keeps N examples, each with its label, in their order; the seed picks them; more is refused."""
    x, y = np.arange(20) * 10, np.arange(20)
    kept_x, kept_y = seeded_subset((x, y), 6, "--limit-train", 0)
    assert list(kept_x) == sorted(kept_x) and list(kept_x) == list(kept_y * 10) and len(set(kept_y)) == 6
    assert list(seeded_subset((x, y), 6, "--limit-train", 1)[1]) != list(kept_y)
    with pytest.raises(ValueError, match="--limit-train"):
        seeded_subset((x, y), 21, "--limit-train", 0)


def test_build_names_overrides_its_builder_does_not_take():
    """A misspelt override is a ValueError naming it and the builder's arguments, not a TypeError from the builder."""
    preset = registry.info("kernelnet_movielens_100k")
    with pytest.raises(ValueError, match=r"overrides: \['hdden'\] are not arguments of .*'hidden'"):
        Recipe().build(preset, None, {"hdden": (4,)})


def test_optimizer_option_is_shared_and_checked_per_recipe_before_training():
    from kernelzoo.zoo.kernelnet.recipe import RatingsRecipe
    from kernelzoo.zoo.simnet.recipe import SimNetRecipe
    simnet, ratings = registry.info("simnet_cifar10_wl2_n400"), registry.info("kernelnet_movielens_100k")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "train")
    args = parser.parse_args(["simnet_cifar10_wl2_n400", "--optimizer", "sgd"])  # the preset's is adam
    assert cli._family_options(args, SimNetRecipe()).optimizer == "sgd"  # not another family's option
    hp = cli._hyperparameters(args, simnet, SimNetRecipe())
    assert hp["optimizer"] == "sgd" and SimNetRecipe().hyperparameters(simnet)["optimizer"] == "adam"
    assert isinstance(SimNetRecipe().compile(_tiny_simnet(), hp).optimizer, keras.optimizers.SGD)
    assert RatingsRecipe().hyperparameters(ratings, optimizer="adam")["optimizer"] == "adam"
    with pytest.raises(ValueError, match="`optimizer` must be one of \\('sgd', 'adam', 'adamw'\\)"):
        SimNetRecipe().hyperparameters(simnet, optimizer="lbfgs")
    with pytest.raises(ValueError, match="`optimizer`"):
        RatingsRecipe().hyperparameters(ratings, optimizer="sgd")


def test_adamw_decays_only_the_papers_variables_and_a_resumed_run_decays_the_same(tmp_path):
    """--optimizer adamw: the decay is AdamW's, decoupled (no L2 term in the model), on the similarity weights
    and offsets only, and the exclusion survives a checkpoint (Keras's own does not)."""
    from kernelzoo.zoo.simnet.recipe import SimNetRecipe
    recipe, preset = SimNetRecipe(), registry.info("simnet_cifar10_wl2_n400")
    hp = recipe.hyperparameters(preset, optimizer="adamw", weight_decay=0.5, lr=0.1)
    data = Data(train=stripes(12, seed=0), test=None, source="stripes", class_names=("a", "b", "c"))
    model = recipe.build(preset, data, {"n": 4, "patch_size": 3, "input_shape": (10, 10, 3)}, hp)
    assert not model.losses  # the same setting with adam builds the L2 term
    assert recipe.build(preset, data, {"n": 4, "patch_size": 3}, dict(hp, optimizer="adam")).losses
    for optimizer in ("adamw", "adam"):  # refused at the build, before the initialisation runs
        with pytest.raises(ValueError, match="`weight_decay`"):
            recipe.build(preset, data, {"n": 4, "patch_size": 3}, dict(hp, optimizer=optimizer, weight_decay=-0.1))
    for variable in model.trainable_variables:  # offsets start at zero, which a decay leaves in place
        variable.assign(np.random.default_rng(0).uniform(0.5, 1.5, variable.shape))
    recipe.compile(model, hp)
    path = str(tmp_path / "m.keras")
    training.save_model(model, path)  # as a run's checkpoint
    for candidate in (model, keras.models.load_model(path)):
        before = {v.name: np.array(v) for v in candidate.trainable_variables}
        candidate.optimizer.apply([keras.ops.zeros_like(v) for v in candidate.trainable_variables],
                                  candidate.trainable_variables)  # zero gradients: only the decay moves them
        moved = {v.name for v in candidate.trainable_variables if not np.allclose(np.array(v), before[v.name])}
        assert moved == {"weights", "offsets"}, moved
        assert sorted(candidate.optimizer.get_config()["exclude"]) == ["templates"]


def _write_folder_dataset(root):
    from PIL import Image
    for split, count, seed in (("train", 36, 0), ("test", 12, 1)):
        x, y = stripes(count, seed=seed)
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
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["epochs"] == 2 and config["overrides"] == {"n": 4, "patch_size": 3}
    assert config["preset"] == "simnet_cifar10_wl2_n400" and config["options"]["init_images"] == 20
    assert json.loads((out / "metrics.json").read_text())["test_examples"] == 12
    assert (out / "training_curves.png").is_file()
    capsys.readouterr()
    # the run folder's config.json gives the protocol; --dataset points at the same local copy
    assert cli.run(_parse("eval", [str(out / "model.keras"), "--dataset", str(data), "--json",
                                   str(tmp_path / "m.json")]), "eval") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["examples"] == 12 and 0 <= metrics["accuracy"] <= 1 and metrics["card"] is None
    assert "accuracy measured" in capsys.readouterr().out


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
    assert "val_accuracy" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == {"patch_whitening": "zca"} and config["data"].endswith("stripes")
    assert not (out / "metrics.json").exists()
    last = training.read_log(str(out / "log.csv"))[-1]
    # `kernelzoo eval --holdout N` measures the same held-out images as the run's last epoch
    capsys.readouterr()
    assert cli.run(_parse("eval", [str(out / "model.keras"), "--dataset", str(data), "--holdout", "12", "--json",
                                   str(tmp_path / "held.json")]), "eval") == 0
    held = json.loads((tmp_path / "held.json").read_text())
    assert held["examples"] == 12 and held["card"] is None and held["data"].endswith("held-out training images, seed 0")
    assert held["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert held["accuracy"] == pytest.approx(last["val_accuracy"])


def test_a_copy_of_shipped_weights_is_known_by_its_sha256(tmp_path):
    """`kernelzoo eval simnet_cifar10_l1.keras` (a downloaded copy, no run folder) measures it as its preset."""
    import shutil
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.evaluation import _load, measure, preset_of
    copy = tmp_path / "downloaded.keras"
    shutil.copyfile(registry.weights_path("simnet_cifar10_l1"), copy)
    assert preset_of(copy).name == "simnet_cifar10_l1"
    model, preset, run, shipped = _load(str(copy), None)
    assert preset.name == "simnet_cifar10_l1" and run == {} and shipped and model.count_params() > 0  # no run folder
    with open(copy, "ab") as handle:
        handle.write(b"\0")  # other content: no preset, and measure asks for one
    assert preset_of(copy) is None
    with pytest.raises(ValueError, match="--preset NAME"):
        measure(str(copy), "/no/such/data")


def test_a_zoo_name_in_capitals_has_its_preset():
    """`kernelzoo export SIMNET_CIFAR10_L1 --verify --data-dir ...` loads the zoo model, so its test split is known."""
    from kernelzoo.zoo.evaluation import preset_of
    assert preset_of("SIMNET_CIFAR10_L1").name == "simnet_cifar10_l1"


def test_eval_holdout_needs_a_recipe_with_held_out_images():
    from kernelzoo.zoo.evaluation import measure
    with pytest.raises(ValueError, match="`holdout`: RatingsRecipe has no held-out image split"):
        measure("kernelnet_movielens_100k", "/no/such/data", holdout=10)


def test_cli_trains_a_family_builder_with_its_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "stripes"
    _write_folder_dataset(str(data))
    monkeypatch.chdir(tmp_path)
    args = _parse("train", ["simnet:convnet_baseline", "n=3", "patch_size=3", "--dataset", str(data), "--epochs", "1",
                            "--quiet", "--no-tensorboard"])
    assert cli.run(args, "train") == 0
    # its own folder, not the borrowed preset's runs/convnet_cifar10
    out = tmp_path / "runs" / "simnet_convnet_baseline"
    assert json.loads((out / "config.json").read_text())["preset"] == "convnet_cifar10"
    assert os.listdir(tmp_path / "runs") == ["simnet_convnet_baseline"]
    with pytest.raises(ValueError, match="builder"):
        cli.training_target("simnet:resnet")


def test_unsupervised_init_without_similarity_keeps_random_templates():
    model = models.simnet_patch_labeling(n=6, p=2, input_shape=(10, 10, 3), num_classes=3, patch_size=3)
    before = keras.ops.convert_to_numpy(model.get_layer("similarity").templates)
    reports = init.unsupervised_init(model, stripes(60)[0], num_patches=800, similarity=False)
    assert reports == {"patch_whitening": "zca"}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("similarity").templates), before)
    assert 0.8 < before.std() < 1.2      # the paper's unit-variance Gaussian templates


@pytest.fixture
def no_data_loading(monkeypatch):
    """Recipe.load_data fails the test: what must be refused before the data loads never reaches it (nor trains)."""
    def load_data(*args, **kwargs):
        raise RuntimeError("data loaded")

    monkeypatch.setattr(Recipe, "load_data", load_data)


def test_cli_bad_arguments(capsys, no_data_loading):
    with pytest.raises(ValueError, match="overrides"):
        cli.parse_overrides(["n"])
    with pytest.raises(ValueError, match="name"):
        cli.training_target("no_such_model")
    with pytest.raises(ValueError, match="command"):
        cli.add_arguments(argparse.ArgumentParser(), "fly")
    assert main_cli.main(["eval", "missing.keras"]) == 2
    assert "kernelzoo eval: error: `model`: no such file 'missing.keras'" in capsys.readouterr().err
    assert main_cli.main(["train", "simnet_cifar10_l1", "--split", "u2"]) == 2
    assert "--split is not an option of SimNetRecipe" in capsys.readouterr().err  # another family's option
    assert cli.parse_overrides(["n=4", "weighted=false", "p=1.5", "name=x"]) == {
        "n": 4, "weighted": False, "p": 1.5, "name": "x"}


def test_cli_train_names_another_familys_option_as_its_flag(capsys, no_data_loading):
    """A MovieLens option given to an image preset is refused as the user typed it (--val-fraction, not
    --val_fraction), before the data loads."""
    assert main_cli.main(["train", "convnet_cifar10", "--val-fraction", "0.2"]) == 2
    assert "--val-fraction is not an option of SimNetRecipe" in capsys.readouterr().err


def test_overrides_read_none_and_refuse_a_key_that_is_not_a_name():
    """KEY=none / KEY=null is None (a builder's "no such layer"), not the string; a KEY that is no Python name
    would reach the builder as a keyword it cannot take: refused, naming the item."""
    assert cli.parse_overrides(["a=none", "b=null", "c=(4,)"]) == {"a": None, "b": None, "c": (4,)}
    for item in ("2n=3", "=3", "patch size=3"):
        with pytest.raises(ValueError, match=re.escape(repr(item))):
            cli.parse_overrides([item])


def test_cli_train_passes_every_option_to_the_recipe(tmp_path, monkeypatch):
    """What `kernelzoo train` is given reaches the recipe's load_data and train (nothing loads or trains here); with
    no options: runs/NAME, seed 0, no resume, progress bars and TensorBoard."""
    recipe_class = type(registry.recipe(registry.info("convnet_cifar10")))
    seen = {}

    def load_data(self, preset, data_dir, dataset, options, seed=0, verbose=1):
        seen.update(data_dir=data_dir, dataset=dataset, load_seed=seed, load_verbose=verbose)
        return Data(train=None, test=None, source="fake", class_names=())

    def train(self, preset, data, out_dir, *, overrides, hp, seed, resume, verbose, tensorboard, max_steps_per_epoch,
              **kwargs):
        seen.update(out=out_dir, overrides=overrides, epochs=hp["epochs"], seed=seed, resume=resume, verbose=verbose,
                    tensorboard=tensorboard, max_steps_per_epoch=max_steps_per_epoch)
        return {"model_path": os.path.join(out_dir, "model.keras")}

    monkeypatch.setattr(recipe_class, "load_data", load_data)
    monkeypatch.setattr(recipe_class, "train", train)
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "run")
    assert main_cli.main(["train", "convnet_cifar10", "n=3", "dropout=none", "--data-dir", "/my/data", "--dataset",
                          "stripes", "--out", out, "--epochs", "2", "--seed", "7", "--resume", "--quiet",
                          "--no-tensorboard", "--max-steps-per-epoch", "3"]) == 0
    assert seen == {"data_dir": "/my/data", "dataset": "stripes", "load_seed": 7, "load_verbose": 0, "out": out,
                    "overrides": {"n": 3, "dropout": None}, "epochs": 2, "seed": 7, "resume": True, "verbose": 0,
                    "tensorboard": False, "max_steps_per_epoch": 3}
    seen.clear()
    assert main_cli.main(["train", "convnet_cifar10"]) == 0
    assert seen["out"] == os.path.join("runs", "convnet_cifar10") and seen["data_dir"] is None
    defaults = {"seed": 0, "load_seed": 0, "resume": False, "verbose": 1, "tensorboard": True}
    assert {key: seen[key] for key in defaults} == defaults


@pytest.mark.parametrize("flag, name", [("--epochs", "epochs"), ("--batch-size", "batch_size"),
                                        ("--max-steps-per-epoch", "max_steps_per_epoch"), ("--holdout", "--holdout"),
                                        ("--limit-train", "--limit-train")])
def test_cli_refuses_a_bad_size_before_the_data_loads(tmp_path, capsys, no_data_loading, flag, name):
    """Named before the data loads and before the run folder gets anything (the ConvNet baseline's recipe
    checkpoints its initialisation): the corrected command then runs in the same folder."""
    out = tmp_path / "run"
    assert main_cli.main(["train", "convnet_cifar10", "--out", str(out), flag, "0"]) == 2
    assert f"`{name}` must be a positive int, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_recipe_refuses_a_bad_size_before_writing_the_run_folder(tmp_path):
    """The same checks when the hyper-parameters are given as a dict (no `hyperparameters` call)."""
    from kernelzoo.zoo.simnet.recipe import tiny_runs

    run = next(run for run in tiny_runs() if run.preset == "convnet_cifar10")
    preset = registry.info(run.preset)
    recipe = registry.recipe(preset)
    hp = recipe.hyperparameters(preset, **run.hp)
    for name in ("epochs", "batch_size", "max_steps_per_epoch"):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive int, got 0"):
            recipe.train(preset, run.data, str(tmp_path / "run"), overrides=run.overrides, hp=dict(hp, **{name: 0}),
                         verbose=0, tensorboard=False)
        assert not (tmp_path / "run").exists()


def test_recipe_holdout_and_validate_only(tmp_path):
    """The base recipe's validation protocol: --holdout N trains on the rest and logs val_* every epoch
    (the test split still measured at the end); --validate-only reports the held-out figures and never
    reads the test split; the split is the seeded permutation of holdout_split."""
    from kernelzoo.zoo.data import holdout_split
    from kernelzoo.zoo.recipe import Data
    recipe = registry.recipe(registry.info("kernelnet_mnist_prior"))
    preset = registry.info("kernelnet_mnist_prior")
    x, y = stripes(60, size=12, channels=1)
    grid = {"grids": (2,), "grid_sides": (4,), "gammas": (25.0,), "image_size": 12}
    hp = recipe.hyperparameters(preset, epochs=2, batch_size=16, lr=0.01)
    data = Data(train=(x, y), test=stripes(20, size=12, channels=1, seed=1), source="stripes",
                class_names=("h", "v", "f"))

    split = recipe.validation_split(data, hp, recipe.options(holdout=15), seed=3)
    (fit_x, _), (val_x, val_y) = holdout_split(x, y, 15, seed=3)
    np.testing.assert_array_equal(split.train[0], fit_x)
    np.testing.assert_array_equal(split.val[1], val_y)
    assert split.test is data.test and recipe.validation_split(data, hp, recipe.options()) is data

    out = tmp_path / "holdout"
    result = recipe.train(preset, data, str(out), overrides=grid, hp=hp, options=recipe.options(holdout=15), seed=3,
                          verbose=0, tensorboard=False)
    log = training.read_log(str(out / "log.csv"))
    assert len(log) == 2 and all(0 <= row["val_accuracy"] <= 1 for row in log)
    assert json.loads((out / "metrics.json").read_text())["test_examples"] == 20
    assert json.loads((out / "config.json").read_text())["options"]["holdout"] == 15
    with pytest.raises(ValueError, match="seed 3 -> 0"):  # resumed with another seed: other held-out images
        recipe.train(preset, data, str(out), overrides=grid, hp=hp, options=recipe.options(holdout=15), seed=0,
                     resume=True, verbose=0, tensorboard=False)

    never = Data(train=(x, y), test=object(), source="stripes", class_names=("h", "v", "f"))  # unusable test split
    out = tmp_path / "validate"
    result = recipe.train(preset, never, str(out), overrides=grid, hp=hp,
                          options=recipe.options(holdout=15, validate_only=True), seed=3, verbose=0, tensorboard=False)
    assert result["metrics"]["val_examples"] == 15 and not (out / "metrics.json").exists()
    last = training.read_log(str(out / "log.csv"))[-1]
    assert result["metrics"]["val_accuracy"] == pytest.approx(last["val_accuracy"])
    # resumed after its last epoch on the same split: the same figure
    again = recipe.train(preset, never, str(out), overrides=grid, hp=hp,
                         options=recipe.options(holdout=15, validate_only=True), seed=3, resume=True, verbose=0,
                         tensorboard=False)
    assert again["metrics"]["val_accuracy"] == pytest.approx(result["metrics"]["val_accuracy"])
    with pytest.raises(ValueError, match="holdout"):  # no recipe default to fall back on
        recipe.validation_split(data, hp, recipe.options(validate_only=True))
    with pytest.raises(ValueError, match="holdout"):
        recipe.validation_split(data, hp, recipe.options(holdout=60))


def test_cli_holdout_for_every_image_family(tmp_path, monkeypatch, capsys):
    """--holdout / --validate-only are options of every image recipe; the MovieLens recipe (its own
    --val-fraction) refuses --holdout."""
    monkeypatch.setenv("KERNELZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "stripes"
    _write_folder_dataset(str(data))
    out = tmp_path / "run"
    args = _parse("train", ["simnet:convnet_baseline", "n=3", "patch_size=3", "--dataset", str(data), "--epochs", "2",
                            "--batch-size", "12", "--holdout", "12", "--out", str(out), "--quiet", "--no-tensorboard"])
    assert cli.run(args, "train") == 0
    assert all("val_accuracy" in row for row in training.read_log(str(out / "log.csv")))
    assert (out / "metrics.json").exists()
    capsys.readouterr()
    assert main_cli.main(["train", "kernelnet_movielens_100k", "--holdout", "5"]) == 2
    assert "--holdout is not an option of RatingsRecipe" in capsys.readouterr().err


def test_pruning_keeps_the_highest_numbers_or_the_named_files_and_nothing_else(tmp_path):
    names = ["epoch-9.keras", "epoch-10.keras", "epoch-100.keras", "epoch-7.keras.tmp", "last.keras", "state.json"]
    for name in names:
        (tmp_path / name).write_text("x")
    training.prune_numbered_files(str(tmp_path), training.EPOCH_FILES, keep=2)  # "epoch-9" > "epoch-100" as text
    assert sorted(os.listdir(tmp_path)) == sorted(set(names) - {"epoch-9.keras"})
    training.remove_files_but(str(tmp_path), training.EPOCH_FILES, {"epoch-10.keras"})
    assert sorted(os.listdir(tmp_path)) == sorted(set(names) - {"epoch-9.keras", "epoch-100.keras"})


def test_keep_checkpoints_is_the_count_of_epoch_files_kept(tmp_path):
    """save_checkpoint(keep=3) keeps the three newest epoch files, train(keep_checkpoints=1) only the last one."""
    def epoch_files(out):
        return sorted(name for name in os.listdir(out / training.CHECKPOINTS) if training.EPOCH_FILES.fullmatch(name))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    for epoch in range(1, 5):
        training.save_checkpoint(model, str(tmp_path / "saved"), epoch, keep=3)
    assert epoch_files(tmp_path / "saved") == ["epoch-002.keras", "epoch-003.keras", "epoch-004.keras"]
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    training.train(model, (x, y), out_dir=str(tmp_path / "run"), epochs=2, batch_size=4, keep_checkpoints=1,
                   verbose=0, tensorboard=False)
    assert epoch_files(tmp_path / "run") == ["epoch-002.keras"]


def test_recipe_load_data_decodes_quietly_when_not_verbose(tmp_path, capsys):
    """--quiet: no image-decoding progress bar either."""
    _write_folder_dataset(str(tmp_path / "stripes"))
    preset = registry.info("convnet_cifar10")
    data = Recipe().load_data(preset, dataset=str(tmp_path / "stripes"), verbose=0)
    assert len(data.train[0]) == 36 and capsys.readouterr().out == ""
    Recipe().load_data(preset, dataset=str(tmp_path / "stripes"))
    assert "decoding" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["convnet_cifar10", "sc_cifar10_4k"])  # the shared loader, SC's own
def test_recipe_load_data_refuses_a_limit_train_above_the_training_set(tmp_path, name):
    _write_folder_dataset(str(tmp_path / "stripes"))
    preset = registry.info(name)
    recipe = registry.recipe(preset)
    with pytest.raises(ValueError, match=re.escape("`--limit-train` must be an int in [1, 36], got 37")):
        recipe.load_data(preset, dataset=str(tmp_path / "stripes"), options=recipe.options(limit_train=37), verbose=0)
    if name != "convnet_cifar10":  # SC's 400 labels per class need more than 36 images
        return
    recipe = Recipe()
    data = recipe.load_data(preset, dataset=str(tmp_path / "stripes"), options=recipe.options(limit_train=36),
                            verbose=0)
    assert len(data.train[0]) == 36


def test_train_steps_over_the_last_partial_batch(tmp_path):
    """5 examples in batches of 4: 2 steps an epoch (the last batch of 1 is trained too), and 3 examples in batches
    of 4: one step, never none."""
    for size, steps in ((5, 2), (3, 1)):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        x, y = np.ones((size, 3), np.float32), np.zeros(size, np.int64)
        result = training.train(model, (x, y), out_dir=str(tmp_path / str(size)), epochs=2, batch_size=4, verbose=0,
                                tensorboard=False)
        assert int(model.optimizer.iterations) == 2 * steps, size
        assert [int(row["epoch"]) for row in result["history"]] == [0, 1]


def test_max_steps_per_epoch_caps_the_steps_of_every_epoch(tmp_path):
    """8 examples in batches of 2 capped at 3 steps: each epoch ends after 3 steps (not 4), through to the last."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    ends = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: ends.append(int(model.optimizer.iterations)))
    training.train(model, (np.ones((8, 3), np.float32), np.zeros(8, np.int64)), out_dir=str(tmp_path), epochs=2,
                   batch_size=2, max_steps_per_epoch=3, verbose=0, tensorboard=False, callbacks=[record])
    assert ends == [3, 6]


def test_evaluate_averages_over_every_example_and_counts_them():
    """5 examples in batches of 2 (the last one partial): the loss is the mean over all 5, and "examples" is 5."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer="sgd", loss="mse")
    scores = training.evaluate(model, (np.ones((5, 1), np.float32), np.arange(1.0, 6.0)), batch_size=2)
    assert scores == {"loss": pytest.approx((1 + 4 + 9 + 16 + 25) / 5), "examples": 5}


def test_a_new_run_drops_the_log_rows_a_run_killed_in_its_first_epoch_left(tmp_path):
    """No checkpoint yet (killed before the end of its first epoch, after `append_log` wrote a row, as the
    non-Keras loops do): `start_run` starts again from a log with no rows, so the next append is the only row."""
    out = str(tmp_path)
    training.append_log(out, {"epoch": 0, "loss": 1.0})
    assert training.start_run(out, True, {"seed": 0}) == 0
    assert training.read_log(os.path.join(out, training.LOG_FILE)) == []
    training.append_log(out, {"epoch": 0, "loss": 0.5})
    assert training.read_log(os.path.join(out, training.LOG_FILE)) == [{"epoch": 0, "loss": 0.5}]


def test_a_state_with_another_count_of_random_states_is_refused_on_resume(tmp_path):
    """One Dropout generator, state.json with two or no random states: load_last names the mismatch (zip would
    silently restore part of them)."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    training.save_checkpoint(model, str(tmp_path), 1)
    path = str(tmp_path / "checkpoints" / "state.json")
    with open(path, encoding="utf-8") as handle:
        state = json.load(handle)
    assert len(state["random_states"]) == 1
    for saved in (state["random_states"] * 2, []):
        training.write_json(path, dict(state, random_states=saved))
        with pytest.raises(ValueError, match=f"holds {len(saved)} random states.*has 1 random generators"):
            training.load_last(str(tmp_path))


def test_the_loss_takes_probabilities_from_every_final_softmax_export_knows():
    """A softmax as Dense's activation, as tf.nn.softmax or at the end of a nested head: the loss reads
    probabilities (from_logits=False); a linear Dense: logits."""
    import tensorflow as tf

    def model(*head):
        return keras.Sequential([keras.Input((4,)), *head])
    nested = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    for ends_in_softmax, head in ((True, [keras.layers.Dense(3, activation="softmax")]),
                                  (True, [keras.layers.Dense(3, activation=tf.nn.softmax)]),
                                  (True, [keras.layers.Dense(3), nested]), (False, [keras.layers.Dense(3)])):
        assert classification_loss(model(*head)).get_config()["from_logits"] is not ends_in_softmax, head
