"""`kernelzoo train --strategy mirrored`: one epoch on two logical CPU devices equals the single-device epoch.

The logical devices must be configured before TensorFlow initialises, so the check runs in a
fresh process: a tiny SimNet trained through the family recipe (unsupervised init included) for
one epoch with and without tf.distribute.MirroredStrategy (global batch 16 = 2 replicas x 8),
with the custom ops and with the composite.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import _custom_available

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from kernelzoo import ops
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.simnet.recipe import tiny_runs

    run = tiny_runs()[0]
    preset = registry.info(run.preset)
    recipe = registry.recipe(preset)
    hp = recipe.hyperparameters(preset, **dict(run.hp, epochs=1))
    keras.utils.set_random_seed(0)
    start = recipe.build(preset, run.data, run.overrides, hp)
    recipe.initialise(start, run.data, hp, recipe.options(), seed=0)
    start = [w.numpy() for w in start.weights]
    for implementation in sys.argv[1:]:
        weights, report = {}, {"implementation": implementation}
        with ops.implementation(implementation):
            for strategy in ("none", "mirrored"):
                with tempfile.TemporaryDirectory() as out:
                    result = recipe.train(preset, run.data, out, overrides=run.overrides, hp=hp, verbose=0,
                                          tensorboard=False, strategy=strategy)
                    with open(out + "/config.json") as handle:
                        report[strategy] = {"replicas": json.load(handle)["replicas"],
                                            "loss": result["history"][0]["loss"]}
                    weights[strategy] = [np.asarray(w.numpy()) for w in result["model"].weights]
        report["moved"] = max(float(np.max(np.abs(a - b))) for a, b in zip(start, weights["none"]))
        report["max_abs"] = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["none"], weights["mirrored"]))
        print(json.dumps(report), flush=True)
""")


def test_mirrored_epoch_equals_single_device_epoch():
    implementations = ["composite"] + (["custom"] if _custom_available() else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", SCRIPT, *implementations], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["implementation"] for r in reports] == implementations
    for report in reports:
        assert (report["none"]["replicas"], report["mirrored"]["replicas"]) == (1, 2), report
        assert report["mirrored"]["loss"] == pytest.approx(report["none"]["loss"], rel=1e-5), report
        assert report["moved"] > 1e-3, report  # the epoch changed the weights ...
        assert report["max_abs"] <= 1e-5, report  # ... identically on one device and on two
