"""The family contract (docs/adding-a-family.md), run over every registered family.

Each family's presets validate and point at existing builders, cards and weights; each of its
tiny runs (`tiny_runs()` in its recipe module) trains end to end through the family recipe into
a complete run folder with a dropping loss, resumes to the weights of an uninterrupted run,
saves a model that loads in a fresh process, and exports with parity; every shipped weight
file reproduces its card figure on ../shared/data.
"""
import dataclasses
import importlib
import inspect
import json
import os
import shutil
import sys

import numpy as np
import pytest

import kernelzoo  # noqa: F401  (registers the layers)
from kernelzoo import zoo
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.inputs import as_model_input
from kernelzoo.zoo.recipe import Recipe

from conftest import SHARED_DATA, TinyRuns, background_job, measure_card, started_job

TINY = [(family, run) for family in registry.FAMILIES
        for run in importlib.import_module(f"kernelzoo.zoo.{family}.recipe").tiny_runs()]
TINY_IDS = [f"{family}-{run.preset}" for family, run in TINY]
RUN_FILES = (training.CONFIG_FILE, training.LOG_FILE, training.MODEL_FILE, training.METRICS_FILE,
             training.CURVES_FILE, f"{training.CHECKPOINTS}/{training.LAST_CHECKPOINT}",
             f"{training.CHECKPOINTS}/{training.STATE_FILE}")
_train = TinyRuns.train


@pytest.fixture(scope="module")
def trained(tiny_runs, tmp_path_factory):
    """Every tiny run trained once (per session: conftest.TinyRuns): {test id: (run, result, run folder)}.

    Then the fresh-process load of their saved models starts (test_saved_models_load_in_a_fresh_process)."""
    assert [key for key, _ in tiny_runs.runs()] == TINY_IDS
    out = {key: tiny_runs.trained(key) for key in TINY_IDS}
    _start_fresh_load(out, tmp_path_factory.mktemp("fresh-load"))
    return out


@pytest.mark.parametrize("family", registry.FAMILIES)
def test_family_presets_validate_and_point_at_real_files(family):
    presets = registry.family_presets(family)
    assert presets, f"family {family!r} has no presets"
    recipe_module = importlib.import_module(f"kernelzoo.zoo.{family}.recipe")
    assert callable(recipe_module.recipe_for) and recipe_module.tiny_runs()
    for preset in presets:
        accepted = inspect.signature(registry.resolve(preset.builder)).parameters
        assert set(preset.config) <= set(accepted), (preset.name, set(preset.config) - set(accepted))
        assert os.path.isfile(os.path.join(registry.folder(preset), preset.card)), preset.name
        if preset.pretrained:
            assert registry.sha256(registry.weights_path(preset.name)) == preset.sha256, preset.name
            assert preset.measured.format(preset.metric).split()[0] in registry.card(preset.name), preset.name
        assert isinstance(registry.recipe(preset), Recipe)


@pytest.mark.parametrize("key", TINY_IDS)
def test_tiny_run_trains_end_to_end_into_a_run_folder(trained, key):
    run, result, folder = trained[key]
    for name in RUN_FILES:
        assert (folder / name).is_file(), name
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < losses[0], losses
    assert result["metrics"] and all(k.startswith("test_") for k in result["metrics"])
    assert registry.info(run.preset).metric in [k[len("test_"):] for k in result["metrics"]]


@pytest.mark.parametrize("key", [k for k, (_, run) in zip(TINY_IDS, TINY) if run.exact_resume])
def test_resumed_run_equals_the_uninterrupted_one(trained, tiny_runs, key):
    run, straight, _ = trained[key]
    resumed, _, killed_at = tiny_runs.resumed(key)  # interrupted at the start of epoch 2, then resumed
    assert killed_at == 2
    for a, b in zip(straight["model"].weights, resumed["model"].weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert [int(row["epoch"]) for row in resumed["history"]] == list(range(run.hp["epochs"]))


@pytest.mark.parametrize("key", TINY_IDS)
def test_training_into_a_folder_holding_a_run_is_refused_before_any_work(trained, key, monkeypatch):
    """Without --resume a run folder is never overwritten, and the refusal comes before the model is built or
    initialised (k-means, L-BFGS or a pre-training stage can take an hour)."""
    run, _, folder = trained[key]
    recipe = type(registry.recipe(registry.info(run.preset)))
    for method in ("build", "initialise"):
        monkeypatch.setattr(recipe, method, lambda *args, **kwargs: pytest.fail("work before the refusal"))
    with pytest.raises(ValueError, match="already holds a run"):
        _train(run, folder)


def _checkpoints_initialisation(run):
    return registry.recipe(registry.info(run.preset)).checkpoints_initialisation


@pytest.mark.parametrize("key", [k for k, (_, run) in zip(TINY_IDS, TINY) if _checkpoints_initialisation(run)])
def test_run_killed_in_its_first_epoch_resumes_from_the_initialised_checkpoint(trained, key, monkeypatch, recwarn,
                                                                                tmp_path):
    """A long initialisation (CKN-5's k-means and L-BFGS: an hour; the SimNet's ZCA and mixture fit) is saved as
    the epoch-0 checkpoint: a resumed run does not repeat it, loads the checkpoint's optimizer without Keras's
    "Skipping variable loading" warning, and ends with the unbroken run's weights."""
    import keras

    class KillAtFirstStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise KeyboardInterrupt("killed")

    run, straight, _ = trained[key]
    with pytest.raises(KeyboardInterrupt):
        _train(run, tmp_path / "resumed", callbacks=[KillAtFirstStep()])
    assert training.read_state(tmp_path / "resumed")["epoch"] == 0
    with pytest.raises(ValueError, match="already holds a run"):
        _train(run, tmp_path / "resumed")
    recipe = type(registry.recipe(registry.info(run.preset)))
    monkeypatch.setattr(recipe, "initialise", lambda *args, **kwargs: pytest.fail("initialised again"))
    recwarn.clear()
    resumed = _train(run, tmp_path / "resumed", resume=True)
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]
    assert [int(row["epoch"]) for row in resumed["history"]] == list(range(run.hp["epochs"]))
    for a, b in zip(straight["model"].weights, resumed["model"].weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


@pytest.mark.parametrize("key", [k for k, (_, run) in zip(TINY_IDS, TINY) if not run.exact_resume])
def test_inexact_resume_continues_from_the_last_checkpoint(trained, key, tmp_path):
    """A loop that cannot promise equal weights (L-BFGS-B) still resumes: the tiny run's epochs (a copy of
    its finished run folder), then 2 more."""
    run, _, folder = trained[key]
    epochs = run.hp["epochs"]
    assert training.read_state(str(folder))["epoch"] == epochs
    shutil.copytree(folder, tmp_path / "run")
    result = _train(dataclasses.replace(run, hp=dict(run.hp, epochs=epochs + 2, patience=100)), tmp_path / "run",
                    resume=True)
    assert [int(row["epoch"]) for row in result["history"]] == list(range(epochs + 2))
    assert training.read_state(str(tmp_path / "run"))["epoch"] == epochs + 2


def _inputs(run, model):
    if isinstance(run.data.train, dict):  # ratings: rows of the item x user training matrix
        from kernelzoo.zoo.data import rating_matrix
        return rating_matrix(run.data.train)[0][:8]
    return as_model_input(run.data.test[0][:8], model).astype("float32")


_FRESH_LOAD = {}


def _start_fresh_load(trained, folder):
    """Inputs and each trained model's predictions saved; a fresh process then loads every model.keras and
    compares, beside the module's other tests (conftest.started_job)."""
    script = ["import sys, numpy as np, keras, kernelzoo",
              "for path, x, y in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):",
              "    out = keras.models.load_model(path).predict(np.load(x), verbose=0)",
              "    np.testing.assert_allclose(out, np.load(y), rtol=1e-5, atol=1e-5, err_msg=path)",
              "print('loaded', len(sys.argv) // 3)"]
    argv = []
    for key, (run, result, run_folder) in trained.items():
        x = _inputs(run, result["model"])
        np.save(folder / f"{key}-x.npy", x)
        np.save(folder / f"{key}-y.npy", result["model"].predict(x, verbose=0))
        argv += [str(run_folder / training.MODEL_FILE), str(folder / f"{key}-x.npy"), str(folder / f"{key}-y.npy")]
    _FRESH_LOAD["job"] = started_job("families fresh-process load", dict(
        args=[sys.executable, "-c", "\n".join(script), *argv], timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")))


def test_saved_models_load_in_a_fresh_process(trained):
    (done,) = _FRESH_LOAD["job"].results()
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"loaded {len(trained)}" in done.stdout


@pytest.mark.parametrize("key", TINY_IDS)
def test_tiny_model_exports_with_parity(trained, key, tmp_path):
    from kernelzoo.export import to_onnx, verify_artifact
    from kernelzoo.export.verify import make_inputs

    model = trained[key][1]["model"]
    path = to_onnx(model, str(tmp_path / "model.onnx"))
    report = verify_artifact(model, path, images=make_inputs(model, num=16)[0])
    assert report["ok_float32"], report


# The card measurements (each shipped model on its 10k test images) run in one fresh process beside the
# in-process tests (conftest.BackgroundJob); kernelnet_mnist_prior's runs in this process, once:
# test_registry's `kernelzoo eval` test prints that very measurement (conftest.card_measurements).
_MEASURE_SCRIPT = """
import json, sys, traceback
from kernelzoo import zoo
for name in sys.argv[2:]:
    try:
        print(json.dumps({"name": name, "value": float(zoo.measure(name, sys.argv[1])["value"])}), flush=True)
    except Exception:
        print(json.dumps({"name": name, "error": traceback.format_exc()}), flush=True)
"""
SHIPPED = zoo.list_models(pretrained=True)
MEASURED_HERE = {"kernelnet_mnist_prior"}
# Shipped models computed by the same builder and layer types as a sibling whose card is re-measured (only sizes or
# weights differ): the sibling guards that code, the SHA-256 test the file. Re-measuring them too (CKN-256/1024's
# second layer and Coates n = 1600's coding, 140 s and 82 s of the card job, are the suite's largest computations)
# took the suite to its 15 minutes on 2 cores: they are re-measured with KERNELZOO_ALL_CARDS=1 (and by `kernelzoo
# eval NAME` when their card is written).
SIBLINGS = {"ckn_cifar10_unsup_256_1024": "ckn_cifar10_unsup_64_256", "sc_cifar10_4k_noinit": "sc_cifar10_4k",
            "cnn_cifar10_tf_fc_random": "cnn_cifar10_tf_fc", "cnn_cifar10_tf_linear_random": "cnn_cifar10_tf_linear",
            "coates_cifar10_n1600": "coates_cifar10_n400"}
ALL_CARDS_ENV = "KERNELZOO_ALL_CARDS"
LEFT_TO_SIBLINGS = set() if os.environ.get(ALL_CARDS_ENV) == "1" else set(SIBLINGS)
MEASURED_IN_BACKGROUND = [n for n in SHIPPED if n not in MEASURED_HERE | LEFT_TO_SIBLINGS]
CARDS = background_job("card measurements", dict(
    args=[sys.executable, "-c", _MEASURE_SCRIPT, SHARED_DATA, *MEASURED_IN_BACKGROUND],
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=3600)) if os.path.isdir(SHARED_DATA) else None


@pytest.mark.parametrize("name", sorted(SIBLINGS))
def test_card_siblings_run_the_same_code(name):
    """A card left to its sibling's re-measurement: both shipped, one builder, the same layer types in order, and
    the sibling's card is measured by this suite."""
    import keras

    sibling = SIBLINGS[name]
    assert name in SHIPPED and sibling in SHIPPED and sibling not in SIBLINGS
    assert registry.info(name).builder == registry.info(sibling).builder
    kinds = [[type(layer).__name__ for layer in keras.models.load_model(registry.weights_path(n), compile=False).layers]
             for n in (name, sibling)]
    assert kinds[0] == kinds[1]


def _measured_in_the_background(name):
    (done,) = CARDS.results()
    rows = {row["name"]: row for row in (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))}
    assert name in rows, f"{name}: no measurement; exit status {done.returncode}: {done.stderr[-3000:]}"
    assert "error" not in rows[name], rows[name]["error"]
    return rows[name]["value"]


@pytest.mark.data
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n not in MEASURED_IN_BACKGROUND or CARDS is None
                                               else CARDS.mark) for n in SHIPPED])
def test_shipped_weights_reproduce_their_card(card_measurements, name):
    """Re-measured with the card's protocol (kernelzoo eval), within 0.1 points of the card.

    The card gives the default build's figure. The op library's instruction set (native,
    x86-64-v3, v2) changes float rounding; the SimNets' logits are sums over 729 positions
    (tens of thousands, float32 steps of ~0.01), so near-ties flip and builds differ by up to
    0.06 points (the SimNet card lists the figure per build).
    """
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data absent")
    if name in LEFT_TO_SIBLINGS:
        pytest.skip(f"the code of {SIBLINGS[name]}, whose card is re-measured (test_card_siblings_run_the_same_code); "
                    f"{ALL_CARDS_ENV}=1 re-measures this card too")
    if name in MEASURED_HERE:
        value = measure_card(card_measurements, name)["value"]
    else:
        value = _measured_in_the_background(name)
    assert value == pytest.approx(registry.info(name).measured.value, abs=1e-3)
