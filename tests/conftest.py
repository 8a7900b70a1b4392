"""Shared fixtures: run op/layer tests under each available implementation; results several modules use."""
import os

import numpy as np
import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _custom_available():
    try:
        from kernelzoo.ops import library
    except ImportError:
        return False
    return library.available()


@pytest.fixture(params=["composite", "custom"])
def impl(request):
    """Runs the test body with kernelzoo.ops forced to one implementation.

    The custom case skips only on a machine without a C++ compiler: where one
    exists, a library that fails to build fails the test (CI must not pass silently).
    """
    if request.param == "custom" and not _custom_available():
        from kernelzoo.ops import library
        if library._compiler() is not None:
            pytest.fail(f"a C++ compiler exists but the custom op library is unavailable: {library.failure_reason()}")
        pytest.skip("no C++ compiler: the custom op library cannot be built")
    from kernelzoo.ops import implementation
    with implementation(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- shared across test modules: each expensive result is computed once per session ------------------

class _Kill:
    """A Keras callback (built lazily: conftest imports no TensorFlow) that interrupts a run at epoch 2."""

    def __new__(cls):
        import keras

        class Kill(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2:
                    raise KeyboardInterrupt("killed")
        return Kill()


class TinyRuns:
    """The families' tiny runs (`tiny_runs()` of each family's recipe module, keyed "family-preset"),
    each trained once on first use through its family recipe; and once more killed at the start of
    epoch 2 and resumed. test_families checks every family contract on these, test_ckn the CKN's own
    figures on the same runs (it trained the very same run twice before)."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._trained, self._resumed = {}, {}

    @staticmethod
    def runs():
        """[(key, run)] in FAMILIES order."""
        import importlib

        from kernelzoo.zoo import registry
        return [(f"{family}-{run.preset}", run) for family in registry.FAMILIES
                for run in importlib.import_module(f"kernelzoo.zoo.{family}.recipe").tiny_runs()]

    @staticmethod
    def train(run, out_dir, **kwargs):
        from kernelzoo.zoo import registry
        preset = registry.info(run.preset)
        recipe = registry.recipe(preset)
        return recipe.train(preset, run.data, str(out_dir), overrides=run.overrides,
                            hp=recipe.hyperparameters(preset, **run.hp), verbose=0, tensorboard=False, **kwargs)

    def trained(self, key):
        """(run, result, run folder) of the uninterrupted run."""
        if key not in self._trained:
            run = dict(self.runs())[key]
            folder = self._tmp.mktemp(key) / "run"
            self._trained[key] = (run, self.train(run, folder), folder)
        return self._trained[key]

    def resumed(self, key):
        """(result, run folder, completed epochs the killed run's state recorded) of the run killed at the
        start of epoch 2, then resumed. AssertionError when the kill did not interrupt the run."""
        if key not in self._resumed:
            from kernelzoo.zoo import training
            run = dict(self.runs())[key]
            folder = self._tmp.mktemp(f"{key}-resumed") / "run"
            try:
                self.train(run, folder, callbacks=[_Kill()])
            except KeyboardInterrupt:
                pass
            else:
                raise AssertionError(f"{key}: the run was not interrupted at epoch 2")
            killed_at = training.read_state(str(folder))["epoch"]
            self._resumed[key] = (self.train(run, folder, resume=True), folder, killed_at)
        return self._resumed[key]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    return TinyRuns(tmp_path_factory)


@pytest.fixture(scope="session")
def card_measurements():
    """{zoo name: zoo.measure(name, SHARED_DATA)}, filled by `measure_card`: each shipped model is
    evaluated on its 10k test images once per session (test_families checks the figure against the
    card, test_registry the `kernelzoo eval` line printed for it)."""
    return {}


def measure_card(measurements, name):
    if name not in measurements:
        from kernelzoo import zoo
        measurements[name] = zoo.measure(name, SHARED_DATA)
    return measurements[name]
