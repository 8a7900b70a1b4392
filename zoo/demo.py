"""`kernelzoo demo`: an offline tour on embedded data, no downloads.

Shows which implementation of the ops runs (and the op library's kernels),
checks the SimNets paper's special cases numerically, compares the custom op
with the composite reference on random inputs, and loads every pretrained zoo
model (SHA-256 checked).
"""
import time

import numpy as np

SEED = 0


def add_arguments(parser, command):
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the random demo inputs")


def run(args, command):
    import keras
    import tensorflow as tf

    from kernelzoo import ops

    rng = np.random.default_rng(args.seed)
    chosen = ops.selected_implementation()
    print(f"kernelzoo ops implementation: {chosen} (Keras backend: {keras.backend.backend()})")
    if chosen == "custom":
        from kernelzoo.ops import library
        print(f"  op library: {library.build()}")
        print("  kernels: " + ", ".join(f"{name} ({device})" for name, device in library.kernels()))

    x = rng.normal(size=(4, 16, 16, 8)).astype("float32")
    kernel = rng.normal(size=(3, 3, 8, 16)).astype("float32")
    checks = [
        ("linear unweighted similarity == Conv2D",
         lambda: ops.similarity(x, kernel, similarity="linear", padding="same"),
         lambda: tf.nn.conv2d(x, kernel, 1, "SAME")),
        ("MEX xi=+inf, 2x2 blocks == MaxPool2D",
         lambda: ops.mex(x, np.inf, pool_size=2, channel_block=1), lambda: tf.nn.max_pool2d(x, 2, 2, "VALID")),
        ("MEX xi=1e6, 2x2 blocks ~= MaxPool2D",
         lambda: ops.mex(x, 1e6, pool_size=2, channel_block=1), lambda: tf.nn.max_pool2d(x, 2, 2, "VALID")),
        ("MEX xi=0, 2x2 blocks == AveragePooling2D",
         lambda: ops.mex(x, 0.0, pool_size=2, channel_block=1), lambda: tf.nn.avg_pool2d(x, 2, 2, "VALID")),
        ("MEX xi=1e6, 1x1 blocks, c=0 ~= ReLU",
         lambda: ops.mex(x, 1e6, channel_block=1, c=0.0), lambda: tf.nn.relu(x)),
    ]
    weights = rng.uniform(0.5, 2.0, size=kernel.shape).astype("float32")
    if chosen == "custom":
        for kind in ("l1", "l2"):
            checks.append((f"weighted {kind} similarity: custom op == composite",
                           lambda kind=kind: ops.similarity(x, kernel, weights, similarity=kind),
                           lambda kind=kind: _composite(ops.similarity, x, kernel, weights, similarity=kind)))
        offsets = rng.normal(size=(2, 2, 3, 2, 2, 8)).astype("float32")
        checks.append(("MEX with offsets: custom op == composite",
                       lambda: ops.mex(x, 0.7, num_instances=3, pool_size=2, offsets=offsets),
                       lambda: _composite(ops.mex, x, 0.7, num_instances=3, pool_size=2, offsets=offsets)))
    print("\nThe paper's special cases (max |difference| / max(1, max |reference|), random inputs):")
    failures = 0
    for name, ours, reference in checks:
        start = time.perf_counter()
        expected = np.asarray(reference())
        difference = float(np.max(np.abs(np.asarray(ours()) - expected)) / max(1.0, np.max(np.abs(expected))))
        ok = difference < 1e-5
        failures += not ok
        print(f"  {'ok ' if ok else 'BAD'}  {name:<48} {difference:.2e}  ({time.perf_counter() - start:.2f}s)")
    failures += _pretrained_models()
    return 1 if failures else 0


def _pretrained_models():
    """Load every shipped checkpoint (SHA-256 checked) and run it on a zero input; count failures."""
    from kernelzoo import zoo
    from kernelzoo.zoo import registry

    print("\nPretrained zoo models (weights verified by SHA-256):")
    failures = 0
    for name in zoo.list_models():
        if not registry.info(name).get("weights"):
            continue
        start = time.perf_counter()
        try:
            model = zoo.load(name)
            shape = (1,) + tuple(model.inputs[0].shape[1:])
            output = np.asarray(model.predict(np.zeros(shape, "float32"), verbose=0))
            trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
            status = f"{trainable:>9,} trainable / {model.count_params():,} params, output {output.shape[1:]}"
            ok = bool(np.all(np.isfinite(output)))
        except Exception as error:  # noqa: BLE001 - reported, and the demo fails
            status, ok = f"{type(error).__name__}: {error}", False
        failures += not ok
        print(f"  {'ok ' if ok else 'BAD'}  {name:<28} {status}  ({time.perf_counter() - start:.2f}s)")
    print("  (`kernelzoo info NAME` shows a model's card with its measured accuracy and the paper's)")
    return failures


def _composite(function, *args, **kwargs):
    from kernelzoo.ops import implementation
    with implementation("composite"):
        return function(*args, **kwargs)
