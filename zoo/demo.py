"""`kernelzoo demo`: an offline tour on embedded data, no downloads.

Shows which implementation of the ops runs (and the op library's kernels),
checks the SimNets paper's special cases numerically, compares the custom op
with the composite reference on random inputs, and loads every pretrained zoo
model (SHA-256 checked). Then, on the 20 MNIST test digits bundled with the package
(zoo/samples/, CC BY-SA 3.0, see ATTRIBUTION.md there): classifies them with each pretrained
MNIST classifier, exports each to ONNX and a SavedModel in a temporary folder, runs them in
onnxruntime and TensorFlow, and prints predictions, parity (max |logit difference| and top-1
agreement with Keras) and batch-1 latency. Exits non-zero when a check or the parity fails.
"""
import os
import tempfile
import time

import numpy as np

SEED = 0
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "mnist_t10k_digits.npz")


def add_arguments(parser, command):
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the random demo inputs")


def run(args, command):
    import tensorflow as tf

    from kernelzoo import ops
    from kernelzoo.ops import checks

    rng = np.random.default_rng(checks.nonnegative_int(args.seed, "--seed"))
    chosen = ops.selected_implementation()
    print(ops.describe_implementation())

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
    failures += _mnist_samples()
    return 1 if failures else 0


def _pretrained_models():
    """Load every shipped checkpoint (SHA-256 checked) and run it on a zero input; count failures."""
    import keras

    from kernelzoo import zoo

    print("\nPretrained zoo models (weights verified by SHA-256):")
    failures = 0
    for name in zoo.list_models(pretrained=True):
        start = time.perf_counter()
        try:
            model = zoo.load(name, compile=False)
            spec = zoo.info(name).inputs
            output = keras.ops.convert_to_numpy(model(np.zeros((1,) + spec.shape, "float32"), training=False))
            trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
            status = f"{trainable:>9,} trainable / {model.count_params():,} params, output {output.shape[1:]}"
            ok = bool(np.all(np.isfinite(output)))
        except Exception as error:  # noqa: BLE001 - reported, and the demo fails
            status, ok = f"{type(error).__name__}: {error}", False
        failures += not ok
        print(f"  {'ok ' if ok else 'BAD'}  {name:<28} {status}  ({time.perf_counter() - start:.2f}s)")
    print("  (`kernelzoo info NAME` shows a model's card with its measured accuracy and the paper's)")
    return failures


def load_samples(path=SAMPLES):
    """(images uint8 (20, 28, 28), labels (20,), t10k indices) of the bundled MNIST test digits."""
    with np.load(path) as npz:
        return npz["images"], npz["labels"].astype(np.int64), npz["indices"]


def _mnist_samples(latency_time=0.3):
    """Classify the bundled digits, export, check parity and time batch-1 latency; count failures."""
    import keras

    from kernelzoo import zoo
    from kernelzoo.export import median_seconds, serving_spec, to_onnx, to_saved_model, verify_artifact
    from kernelzoo.export.bench import runtime_calls
    from kernelzoo.export.verify import MAX_ABS_GOAL

    images, labels, indices = load_samples()
    names = [n for n in zoo.list_models(pretrained=True)
             if zoo.info(n).dataset.name == "mnist" and zoo.info(n).task == "classification"]
    print(f"\nPretrained MNIST classifiers on the {len(images)} bundled MNIST test digits "
          f"(t10k indices {indices[0]}..{indices[-1]}; MNIST by Yann LeCun and Corinna Cortes, CC BY-SA 3.0):")
    print(f"  labels      {' '.join(str(v) for v in labels)}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kernelzoo-demo-") as tmp:
        for name in names:
            start = time.perf_counter()
            try:
                model = zoo.load(name, compile=False)
                spec = serving_spec(model)
                x = images.reshape((len(images),) + tuple(spec.input_shape[1:])).astype(spec.input_dtype)
                predictions = keras.ops.convert_to_numpy(model(x.astype("float32"), training=False)).argmax(1)
                correct = int(np.sum(predictions == labels))
                print(f"  {name:<28} predictions {' '.join(str(v) for v in predictions)}  "
                      f"{correct}/{len(labels)} correct")
                saved_path = to_saved_model(model, os.path.join(tmp, name + "_saved_model"))
                onnx_path = to_onnx(model, os.path.join(tmp, name + ".onnx"))
                for runtime, path in (("SavedModel", saved_path), ("onnxruntime", onnx_path)):
                    report = verify_artifact(model, path, images=x)
                    failures += not report["ok"]
                    print(f"    {'ok ' if report['ok'] else 'BAD'}  parity {runtime:<11} vs Keras: max |logit diff| "
                          f"{report['max_abs']:.2e} (goal <= {MAX_ABS_GOAL:g}), top-1 agreement "
                          f"{100 * report['top1_agreement']:.0f} %")
                seconds = median_seconds(runtime_calls(model, spec, saved_path, onnx_path), x[:1], latency_time, 200)
                latency = {runtime: 1000 * value for runtime, value in seconds.items()}
                print("    latency (batch 1, median): " + ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items())
                      + f"  ({time.perf_counter() - start:.1f}s)")
            except Exception as error:  # noqa: BLE001 - reported, and the demo fails
                failures += 1
                print(f"    BAD  {name}: {type(error).__name__}: {error}")
    return failures


def _composite(function, *args, **kwargs):
    from kernelzoo.ops import implementation
    with implementation("composite"):
        return function(*args, **kwargs)
