"""`kernelzoo train --strategy mirrored|multiworker`: one distributed epoch equals the single-device epoch.

- mirrored: two logical CPU devices. They must be configured before TensorFlow initialises, so the
  check runs in a fresh process: a tiny SimNet trained through the family recipe (unsupervised init
  included) for one epoch with and without tf.distribute.MirroredStrategy (global batch 16 =
  2 replicas x 8), with the custom ops and with the composite, without the preset's random flips;
  and, in the same process, that the replicas of a step draw their own flips.
- multiworker: a one-worker MultiWorkerMirroredStrategy cluster ($TF_CONFIG: one worker on a free
  localhost port), also in a fresh process: the strategy configures TensorFlow's collective ops,
  which is only possible before TensorFlow runs its first op, and starts a gRPC server that lives
  as long as the process.
"""
import json
import os
import socket
import sys

import pytest

from conftest import _custom_available, background_job

# One epoch of the SimNet family's first tiny run through its recipe, from the same start: epoch(strategy)
# gives what config.json records, the epoch's loss and the weights after it.
TINY_EPOCH = """
import json, sys, tempfile
import keras
import numpy as np
import tensorflow as tf
from kernelzoo import ops
from kernelzoo.zoo import registry, training
from kernelzoo.zoo.simnet.recipe import tiny_runs

run = tiny_runs()[0]
# Without the preset's random flips: each replica draws its own, so a flipped epoch is not the same epoch.
overrides = dict(run.overrides, augment_flip=False)
preset = registry.info(run.preset)
recipe = registry.recipe(preset)
# SGD, not the preset's Adam: Adam's normalised step turns the float rounding of near-zero gradients (which
# differs between one device and two replicas) into steps of the size of the lr, so only SGD epochs agree to 1e-5.
hp = recipe.hyperparameters(preset, **dict(run.hp, epochs=1, optimizer="sgd"))


def weights_of(model):
    return [np.asarray(w.numpy()) for w in model.weights]


def max_abs(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def epoch(strategy):
    with tempfile.TemporaryDirectory() as out:
        result = recipe.train(preset, run.data, out, overrides=overrides, hp=hp, verbose=0, tensorboard=False,
                              strategy=strategy)
        with open(out + "/config.json") as handle:
            config = json.load(handle)
    return ({"strategy": config["strategy"], "replicas": config["replicas"], "loss": result["history"][0]["loss"]},
            weights_of(result["model"]))


keras.utils.set_random_seed(0)
start = recipe.build(preset, run.data, overrides, hp)
recipe.initialise(start, run.data, hp, recipe.options(), seed=0)
start = weights_of(start)
"""

MIRRORED_SCRIPT = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + TINY_EPOCH + """
for implementation in sys.argv[1:]:
    with ops.implementation(implementation):
        (none, single), (mirrored, distributed) = epoch("none"), epoch("mirrored")
    print(json.dumps({"implementation": implementation, "none": none, "distributed": mirrored,
                      "moved": max_abs(start, single), "max_abs": max_abs(single, distributed)}), flush=True)

# The same 64 images on both replicas: which of them each replica flipped.
from kernelzoo.zoo.augment import RandomShiftFlip
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    flip = RandomShiftFlip(shift=0, flip=True)
    flip.build((None, 2, 2, 1))
images = tf.reshape(tf.range(64 * 4, dtype=tf.float32), (64, 2, 2, 1))
flipped = strategy.run(tf.function(lambda: tf.reduce_any(flip(images, training=True) != images, axis=[1, 2, 3])))
print(json.dumps({"flipped": [np.asarray(f).tolist() for f in strategy.experimental_local_results(flipped)]}))
"""

MULTIWORKER_SCRIPT = """
from kernelzoo.zoo import training
strategy = training.make_strategy("multiworker")  # first, as `kernelzoo train` does: before any op
""" + TINY_EPOCH + """
(none, single), (multiworker, distributed) = epoch(None), epoch(strategy)
print(json.dumps({"multiworker_strategy": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
                  "workers": strategy.extended._num_workers, "none": none, "distributed": multiworker,
                  "moved": max_abs(start, single), "max_abs": max_abs(single, distributed)}), flush=True)
"""


def _fresh_process(script, *args, **env):
    """A job step: a fresh Python process running `script`."""
    return dict(args=[sys.executable, "-c", script, *args], timeout=900,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env))


def _reports(job):
    """The JSON lines the job's fresh Python process printed."""
    (done,) = job.results()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _assert_same_epoch(report, replicas):
    assert (report["none"]["replicas"], report["distributed"]["replicas"]) == (1, replicas), report
    assert report["distributed"]["loss"] == pytest.approx(report["none"]["loss"], rel=1e-5), report
    assert report["moved"] > 1e-3, report  # the epoch changed the weights ...
    assert report["max_abs"] <= 1e-5, report  # ... identically on one device and distributed


# Both checks run in fresh processes beside the in-process tests (conftest.BackgroundJob).
IMPLEMENTATIONS = ["composite"] + (["custom"] if _custom_available() else [])
MIRRORED = background_job("distribute-mirrored", _fresh_process(MIRRORED_SCRIPT, *IMPLEMENTATIONS))


@MIRRORED.mark
def test_mirrored_epoch_equals_single_device_epoch():
    epochs = [r for r in _reports(MIRRORED) if "implementation" in r]
    assert [r["implementation"] for r in epochs] == IMPLEMENTATIONS
    for report in epochs:
        _assert_same_epoch(report, replicas=2)


@MIRRORED.mark
def test_replicas_draw_their_own_flips():
    """RandomShiftFlip folds the replica's index into its seed: replicas given the same 64 images flip
    different ones (the same masks on both would have probability 2^-64), each about half of them."""
    (report,) = [r for r in _reports(MIRRORED) if "flipped" in r]
    first, second = report["flipped"]
    assert first != second, report
    assert all(16 <= sum(mask) <= 48 for mask in (first, second)), report  # binomial(64, 1/2): 4 sd


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _one_worker_cluster():
    """The job step, made when it starts: a free port then, not at collection."""
    cluster = {"cluster": {"worker": [f"localhost:{_free_port()}"]}, "task": {"type": "worker", "index": 0}}
    return _fresh_process(MULTIWORKER_SCRIPT, TF_CONFIG=json.dumps(cluster))


MULTIWORKER = background_job("distribute-multiworker", _one_worker_cluster)


@MULTIWORKER.mark
def test_one_worker_multiworker_epoch_equals_single_device_epoch():
    (report,) = _reports(MULTIWORKER)
    assert report["multiworker_strategy"] and report["workers"] == 1, report
    assert report["distributed"]["strategy"] == "CollectiveAllReduceStrategy", report  # TF's name for it
    _assert_same_epoch(report, replicas=1)  # on CPU a worker is one replica
