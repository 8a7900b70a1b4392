"""Shared fixtures: run op/layer tests under each available implementation; results several modules use."""
import os
import subprocess
import threading

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


# --- checks in fresh processes, run beside the in-process tests ------------------------------------

class BackgroundJob:
    """Steps in fresh processes (each subprocess.run's keyword arguments: args, env, cwd, timeout, input;
    or a function returning them, called when the step starts) that need nothing from the test process.

    The session starts the jobs as soon as its tests begin, one at a time in the order of the tests that
    use them (marked with `job.mark`), so on 2 cores they run beside the in-process tests instead of
    after them. A test calls `job.results()` (waiting if need be, or running the job itself when its
    turn has not come) and asserts on the CompletedProcess list as it would on subprocess.run's;
    exceptions (a timeout) are raised in the test."""

    def __init__(self, name, *steps):
        self.name, self.steps = name, steps
        self._claimed = threading.Lock()
        self._done = threading.Event()
        self._results, self._error, self._process = [], None, None

    @property
    def mark(self):
        return pytest.mark.background(self.name)

    def run_if_unclaimed(self):
        """Run the steps in this thread unless another thread has (or is); True when this call ran them."""
        if not self._claimed.acquire(blocking=False):
            return False
        try:
            for step in self.steps:
                if _SESSION_OVER.is_set():
                    raise RuntimeError("the test session ended before this background job ran")
                step = dict(step() if callable(step) else step)  # a callable: made when the step starts
                timeout = step.pop("timeout", None)
                stdin = step.pop("input", None)
                self._process = subprocess.Popen(stdin=subprocess.PIPE if stdin is not None else None,
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **step)
                try:
                    out, err = self._process.communicate(stdin, timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.communicate()
                    raise
                self._results.append(subprocess.CompletedProcess(step["args"], self._process.returncode, out, err))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self._error = error
        finally:
            self._done.set()
        return True

    def results(self):
        self.run_if_unclaimed()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return list(self._results)

    def kill(self):
        if self._process is not None and self._process.poll() is None:
            self._process.kill()


BACKGROUND_JOBS = {}
_SESSION_OVER = threading.Event()
_JOB_FOLDERS = []


def job_folder():
    """A fresh temporary folder for a job's files (made at a module's import), removed at the session's end."""
    import pathlib
    import tempfile

    _JOB_FOLDERS.append(tempfile.mkdtemp(prefix="kernelzoo-test-job-"))
    return pathlib.Path(_JOB_FOLDERS[-1])


def background_job(name, *steps):
    """Register (at a test module's import) and return the BackgroundJob `name`."""
    assert name not in BACKGROUND_JOBS, name
    BACKGROUND_JOBS[name] = BackgroundJob(name, *steps)
    return BACKGROUND_JOBS[name]


def started_job(name, *steps):
    """Register the BackgroundJob `name` and start it now in a thread of its own: for fresh-process checks
    of what a fixture just made, run while the module's other tests go on."""
    job = background_job(name, *steps)
    threading.Thread(target=job.run_if_unclaimed, name=name, daemon=True).start()
    return job


def pytest_configure(config):
    config.addinivalue_line("markers", "background(name): the test checks the outcome of a BackgroundJob")


def pytest_collection_finish(session):
    """Queue the jobs of the selected tests, in test order, and start one runner thread for them (not for
    --collect-only, nor in a pytest-xdist worker: each would start every job; there a test runs its own)."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    queue = []
    for item in session.items:
        for mark in item.iter_markers("background"):
            if mark.args[0] not in queue:
                queue.append(mark.args[0])
    if not queue:
        return

    def runner():
        for name in queue:
            if name in BACKGROUND_JOBS:  # not registered: a skipped test's (say, for a CPU feature)
                BACKGROUND_JOBS[name].run_if_unclaimed()

    threading.Thread(target=runner, name="kernelzoo-background-jobs", daemon=True).start()


def pytest_sessionfinish(session, exitstatus):
    _SESSION_OVER.set()  # nothing starts after this; what still runs is killed
    for job in BACKGROUND_JOBS.values():
        job.kill()
    import shutil
    for folder in _JOB_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def reference_once(monkeypatch):
    """verify_artifact runs the Keras model on its inputs for every artifact it checks; in a test using
    this, the two artifacts (ONNX, SavedModel) of one model checked on the very same input array share
    one run: the reference is the same computation (same model, inputs, signature and implementation
    within the test). Everything else in verify_artifact runs as is."""
    from kernelzoo.export import verify

    real, cache = verify.reference_outputs, {}

    def reference_outputs(model, images, spec, **kwargs):
        key = (id(model), id(images), spec, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = (model, images, real(model, images, spec, **kwargs))  # kept alive: ids stay theirs
        return cache[key][2]

    monkeypatch.setattr(verify, "reference_outputs", reference_outputs)
