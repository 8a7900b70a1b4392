"""`kernelzoo bench deploy NAME`: batch-1 latency and batch-64 throughput of Keras (TF), the
SavedModel and onnxruntime CPU for one model, in one run, with ratios against Keras.

Keras runs the model in a `tf.function` with the implementation the user gets (custom ops when
built, see `kernelzoo.ops.selected_implementation`); the SavedModel and the ONNX file hold the
composite one. Each figure is the median of repeated calls after two warm-up calls.
"""
import os
import statistics
import sys
import tempfile
import time

from kernelzoo.export._common import INPUT_DTYPES
from kernelzoo.export.onnx_export import DEFAULT_OPSET

RUNTIMES = ("Keras (TF)", "SavedModel (TF)", "onnxruntime CPU")


def bench_deploy(model, *, batch_sizes=(1, 64), min_time=1.0, max_calls=200, input_dtype="auto", opset=DEFAULT_OPSET,
                 stream=None, title=None):
    """Time the three runtimes on `model`; prints a table headed `title` (default: the model's name) to `stream`
    (stdout) and returns the rows.

    Returns {runtime: {"latency_ms": batch-1 median ms, "throughput": images/s at the last batch size,
    "latency_ratio": Keras latency / this latency, "throughput_ratio": this / Keras throughput}}.
    """
    from kernelzoo.export._common import checked, serving_spec
    from kernelzoo.export.onnx_export import check_opset, to_onnx
    from kernelzoo.export.saved_model import to_saved_model
    from kernelzoo.export.verify import make_inputs
    from kernelzoo.ops.checks import positive_float, positive_int, positive_ints

    batch_sizes = checked(positive_ints, batch_sizes, "batch_sizes")  # before the exports, which take a while
    min_time = checked(positive_float, min_time, "min_time")
    max_calls = checked(positive_int, max_calls, "max_calls")
    opset = check_opset(opset)
    stream = stream or sys.stdout
    spec = serving_spec(model, input_dtype=input_dtype)
    small, large = batch_sizes[0], batch_sizes[-1]
    images, _ = make_inputs(model, num=large, input_dtype=input_dtype)
    with tempfile.TemporaryDirectory(prefix="kernelzoo-bench-") as tmp:
        saved_path = to_saved_model(model, os.path.join(tmp, "saved_model"), input_dtype=input_dtype)
        onnx_path = to_onnx(model, os.path.join(tmp, "model.onnx"), opset=opset, input_dtype=input_dtype)
        calls = runtime_calls(model, spec, saved_path, onnx_path)
        latency = median_seconds(calls, images[:small], min_time, max_calls)
        per_call = median_seconds(calls, images[:large], min_time, max_calls)
        rows = {name: {"latency_ms": 1000 * latency[name], "throughput": large / per_call[name]} for name in calls}
    base = rows[RUNTIMES[0]]
    for row in rows.values():
        row["latency_ratio"] = base["latency_ms"] / row["latency_ms"]
        row["throughput_ratio"] = row["throughput"] / base["throughput"]
    _print_table(title or model.name, spec, rows, small, large, stream)
    return rows


def runtime_calls(model, spec, saved_path, onnx_path):
    """{runtime (RUNTIMES): fn(images) -> outputs}: the Keras `model` in a tf.function, its SavedModel at
    `saved_path` and its ONNX file at `onnx_path` on onnxruntime CPU, all exported with `spec`."""
    import tensorflow as tf

    from kernelzoo.export.predictor import CPU_PROVIDER, OnnxPredictor
    from kernelzoo.export.saved_model import load_signature

    keras_call = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), reduce_retracing=True)
    saved = load_signature(saved_path)
    ort = OnnxPredictor(onnx_path, providers=[CPU_PROVIDER])
    return {
        RUNTIMES[0]: lambda x: keras_call(x).numpy(),
        RUNTIMES[1]: lambda x: {k: v.numpy() for k, v in saved(**{spec.input_name: tf.constant(x)}).items()},
        RUNTIMES[2]: lambda x: ort.session.run(None, {ort.input_name: x}),
    }


def median_seconds(calls, x, min_time, max_calls):
    """{name: median seconds of fn(x)} for `calls` {name: fn}, timed in rounds, one call of each in turn (after 2
    warm-up rounds), so that a busier stretch of the machine falls on every runtime alike and their ratios hold:
    at least 3 rounds, more up to `max_calls` while the rounds take under `min_time` seconds per function."""
    for _ in range(2):
        for fn in calls.values():
            fn(x)
    times, start = {name: [] for name in calls}, time.perf_counter()
    rounds = 0
    while rounds < 3 or (rounds < max_calls and time.perf_counter() - start < min_time * len(calls)):
        for name, fn in calls.items():
            tick = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - tick)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}


def _implementation():
    try:
        from kernelzoo.ops import selected_implementation
        return selected_implementation()
    except Exception as error:  # the op library may fail to build; Keras then errors or falls back
        return f"unknown ({type(error).__name__}: {error})"


def _print_table(title, spec, rows, small, large, stream):
    shape = ", ".join(str(d) for d in spec.input_shape[1:])
    print(f"bench deploy {title}: input {spec.input_dtype} (N, {shape}); Keras uses the "
          f"{_implementation()} ops, the exports the composite ones; "
          f"{os.cpu_count()} CPU cores, median of repeated calls, the runtimes in turn", file=stream)
    header = (f"{'runtime':<18} {f'batch-{small} latency':>17} {'vs Keras':>9} "
              f"{f'batch-{large} throughput':>21} {'vs Keras':>9}")
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for name, row in rows.items():
        print(f"{name:<18} {row['latency_ms']:>14.2f} ms {row['latency_ratio']:>8.2f}x "
              f"{row['throughput']:>15.1f} img/s {row['throughput_ratio']:>8.2f}x", file=stream)
    print("(vs Keras: > 1 is faster than Keras; latency ratio = Keras ms / runtime ms)", file=stream)


# --- command line: `kernelzoo bench deploy NAME|FILE.keras` -----------------------------------------

def add_deploy_arguments(parser):
    parser.add_argument("model", metavar="NAME|FILE.keras", help="zoo model name or a saved .keras file")
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size (default 64)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1.0)")
    parser.add_argument("--input-dtype", choices=INPUT_DTYPES, default="auto",
                        help="exported input dtype (default: uint8 when the model starts with preprocessing)")


def run_deploy(args):
    from kernelzoo.export._common import checked
    from kernelzoo.export.cli import load_model
    from kernelzoo.ops.checks import positive_float, positive_int

    checked(positive_int, args.batch, "--batch")
    checked(positive_float, args.seconds, "--seconds")
    model = load_model(args.model, pretrained_optional=True)
    bench_deploy(model, batch_sizes=(1, args.batch), min_time=args.seconds, input_dtype=args.input_dtype,
                 title=args.model)
    return 0


def add_arguments(parser, command="bench"):
    """`kernelzoo bench deploy ...` (the dispatcher in kernelzoo/cli.py routes `bench deploy` here)."""
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    add_deploy_arguments(sub.add_parser("deploy", help="Keras vs SavedModel vs onnxruntime timing"))


def run(args, command="bench"):
    return run_deploy(args)
