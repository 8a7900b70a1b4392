"""The MovieLens recipe's run folders: a kill at any point loses nothing and changes no result; a finished run is
not reopened, nor reused with other settings (planted 40 x 30 ratings, a few L-BFGS-B or Adam epochs)."""
import shutil

import keras
import numpy as np
import pytest

from kernelzoo.zoo import registry, training
from kernelzoo.zoo.data import random_split
from kernelzoo.zoo.data.synthetic import planted_ratings
from kernelzoo.zoo.kernelnet import recipe as kernelnet_recipe
from kernelzoo.zoo.recipe import Data

PRESET = registry.info("kernelnet_movielens_100k")
RECIPE = kernelnet_recipe.RatingsRecipe()
OVERRIDES = {"hidden": (4,), "lambda_2": 0.05}  # stops early on patience 1 (after 6 epochs, best 5)
EARLY_STOPPING = {"epochs": 30, "iterations_per_epoch": 2, "patience": 1, "val_fraction": 0.2, "lbfgs_restart": True}
ENSEMBLE = dict(EARLY_STOPPING, members=2, refit=True)


def _data():
    train, test = random_split(planted_ratings(n_items=40, n_users=30), 0.2, seed=0)
    return Data(train=train, test=test, source="planted")


def _train(out, hp, overrides=OVERRIDES, **kwargs):
    return RECIPE.train(PRESET, _data(), out, overrides=overrides, hp=RECIPE.hyperparameters(PRESET, **hp),
                        verbose=0, **kwargs)


def _weights(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


def _killed_at(monkeypatch, kills):
    """save_checkpoint raises KeyboardInterrupt at the first of `kills` ((folder suffix, epoch) pairs, consumed in
    order) that a checkpoint reaches: a kill just before that epoch's checkpoint."""
    save = kernelnet_recipe.training.save_checkpoint

    def killed(model, out_dir, epoch, *args, **kwargs):
        if kills and str(out_dir).endswith(kills[0][0]) and epoch == kills[0][1]:
            raise KeyboardInterrupt(kills.pop(0))
        return save(model, out_dir, epoch, *args, **kwargs)

    monkeypatch.setattr(kernelnet_recipe.training, "save_checkpoint", killed)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """An uninterrupted two-member ensemble with refits: (its folder, its result)."""
    out = tmp_path_factory.mktemp("ensemble") / "run"
    return out, _train(out, ENSEMBLE)


def test_an_ensemble_killed_anywhere_resumes_to_the_uninterrupted_one(ensemble, tmp_path, monkeypatch):
    """Killed in member 0's selection (it resumed from fresh weights), half-way through its refit (it restarted from
    the initial weights) and in the first epoch of member 1's refit (its stopped selection was reopened)."""
    straight, result = ensemble
    kills = [("member-0", 3), ("member-0/refit", 3), ("member-1/refit", 1)]
    _killed_at(monkeypatch, kills)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _train(out, ENSEMBLE)
    while kills:
        with pytest.raises(KeyboardInterrupt):
            _train(out, ENSEMBLE, resume=True)
    resumed = _train(out, ENSEMBLE, resume=True)
    for member in ("member-0", "member-0/refit", "member-1", "member-1/refit"):
        assert (training.read_log(str(out / member / training.LOG_FILE))
                == training.read_log(str(straight / member / training.LOG_FILE))), member
    np.testing.assert_array_equal(_weights(resumed["model"]), _weights(result["model"]))


def test_an_ensemble_folder_is_not_reused_unasked_or_with_other_settings(ensemble, tmp_path):
    """Nor resumed at another length (a single run may be: an ensemble's finished members would keep theirs)."""
    out, _ = ensemble
    with pytest.raises(ValueError, match="already holds a run"):
        _train(out, ENSEMBLE)  # no --resume
    with pytest.raises(ValueError, match="lambda_2"):
        _train(out, ENSEMBLE, overrides=dict(OVERRIDES, lambda_2=50.0), resume=True)
    with pytest.raises(ValueError, match=r"ensemble .*hyperparameters.epochs 30 -> 40.*share one recipe"):
        _train(out, dict(ENSEMBLE, epochs=40), resume=True)  # its finished members would keep 30
    older = tmp_path / "run"  # an ensemble folder of before its own checkpoint: each member checks its settings
    shutil.copytree(out, older, ignore=lambda folder, names: ["checkpoints"] if folder == str(out) else [])
    with pytest.raises(ValueError, match=r"member-0.*other settings.*lambda_2"):
        _train(older, ENSEMBLE, overrides=dict(OVERRIDES, lambda_2=50.0), resume=True)


def test_ensemble_members_stop_patience_epochs_after_their_best_and_refit_for_that_many(ensemble):
    """Each member's selection stops `patience` checks after its best epoch (not one later), and its refit trains
    the selected number of epochs on every training rating, no more."""
    out, _ = ensemble
    for member in ("member-0", "member-1"):
        state = training.read_state(str(out / member))
        rows = training.read_log(str(out / member / training.LOG_FILE))
        assert state["stopped"] and len(rows) == state["best"]["epoch"] + ENSEMBLE["patience"], member
        assert len(training.read_log(str(out / member / "refit" / training.LOG_FILE))) == state["best"]["epoch"]


def test_ensemble_members_start_from_different_weights(ensemble):
    """Member m is initialised with seed + 10000 m: members of one seed would be one model trained twice."""
    out, _ = ensemble
    first, second = (keras.models.load_model(out / member / training.CHECKPOINTS / kernelnet_recipe.INITIAL_CHECKPOINT,
                                             compile=False) for member in ("member-0", "member-1"))
    assert not np.allclose(_weights(first), _weights(second))


def test_a_run_stopped_by_patience_is_not_reopened_by_resume(tmp_path):
    out = tmp_path / "run"
    first = _train(out, EARLY_STOPPING)
    log = (out / training.LOG_FILE).read_text()
    assert training.read_state(str(out))["stopped"] and first["selected_epoch"] < EARLY_STOPPING["epochs"] - 1
    again = _train(out, EARLY_STOPPING, resume=True)
    assert (out / training.LOG_FILE).read_text() == log and again["selected_epoch"] == first["selected_epoch"]


@pytest.mark.parametrize("restart", [True, False], ids=["rounds", "one-call"])
def test_converged_lbfgs_ends_the_run(tmp_path, restart):
    """lambda_2 = 5000 pins the weights near 0: L-BFGS-B converges in the second epoch. The run ends there (the
    rounds went on far past the epochs), logs the iterations it ran, and a resume does not reopen it."""
    every, epochs = 50, 5
    hp = {"epochs": epochs, "iterations_per_epoch": every, "patience": 100, "val_fraction": 0.2,
          "lbfgs_restart": restart}
    overrides = {"hidden": (2,), "lambda_2": 5000.0, "lambda_0": 0.0}
    out = tmp_path / "run"
    _train(out, hp, overrides)
    rows = training.read_log(str(out / training.LOG_FILE))
    assert 1 < len(rows) < epochs and training.read_state(str(out))["stopped"]
    assert [row["iterations"] for row in rows[:-1]] == [every * (e + 1) for e in range(len(rows) - 1)]
    assert every * (len(rows) - 1) < rows[-1]["iterations"] < every * len(rows)
    _train(out, hp, overrides, resume=True)
    assert training.read_log(str(out / training.LOG_FILE)) == rows


def test_a_resumed_adam_run_keeps_its_moments(tmp_path, monkeypatch):
    hp = {"epochs": 3, "iterations_per_epoch": 4, "patience": 10, "val_fraction": 0.2, "optimizer": "adam",
          "lr": 0.01}
    straight = _train(tmp_path / "straight", hp)
    _killed_at(monkeypatch, [("resumed", 2)])
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", hp)
    resumed = _train(tmp_path / "resumed", hp, resume=True)
    np.testing.assert_array_equal(_weights(resumed["model"]), _weights(straight["model"]))


def test_a_diverged_run_fails_at_once_naming_the_epoch(tmp_path):
    """Non-finite predictions (an absurd Adam step) end the run at that epoch with a clear error; they used to
    write no best model and fail at the end with a KeyError."""
    hp = {"epochs": 3, "iterations_per_epoch": 4, "patience": 10, "val_fraction": 0.2, "optimizer": "adam",
          "lr": 1e30}
    with pytest.raises(FloatingPointError, match="epoch 1: loss nan, rmse nan, val_rmse nan: the training diverged"):
        _train(tmp_path / "run", hp)
    assert not (tmp_path / "run" / training.CHECKPOINTS / training.LAST_CHECKPOINT).exists()


@pytest.mark.parametrize("change, argument", [({"val_fraction": 1.5}, "val_fraction"),
                                              ({"val_fraction": -0.1}, "val_fraction"),
                                              ({"val_fraction": 1e-4}, "val_fraction"),  # holds out none
                                              ({"val_fraction": 1.0}, "val_fraction"),  # leaves none to fit
                                              ({"patience": -3}, "patience"), ({"patience": 0}, "patience")])
def test_bad_hyperparameters_are_refused_by_name_before_the_run_folder(tmp_path, change, argument):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=f"`{argument}`"):
        _train(out, dict(EARLY_STOPPING, **change))
    assert not out.exists()

