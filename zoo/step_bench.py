"""What the training-step benchmarks share (`kernelzoo bench sc`, `kernelzoo bench ckn`): the environment line
they print first, their options and the median time of a step."""
import os
import statistics
import time

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.ops.library import cpu_flags


def add_step_options(parser):
    """The options every step benchmark takes: --precisions, --batch-size, --steps, --warmup, --threads."""
    parser.add_argument("--precisions", default="float32,mixed_bfloat16", help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1: the first traces)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TF intra-op threads (0: $TF_NUM_INTRAOP_THREADS, else all cores)")


def listed(text, choices, name):
    """The items of a comma-separated option, each one of `choices` (else ValueError naming the option)."""
    return [check_choice(name, item.strip(), choices) for item in text.split(",") if item.strip()]


def environment(command, threads, batch_size, steps):
    """The benchmark's first line: TensorFlow, the CPUs and whether they have AMX / AVX512-BF16, oneDNN, threads;
    sets TensorFlow's intra-op threads when `threads` (0: $TF_NUM_INTRAOP_THREADS, else TensorFlow's default)."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(positive_int(threads, "threads"))
    flags = cpu_flags()
    amx = "amx_bf16" if "amx_bf16" in flags else "no amx_bf16"
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86)")
    threads = threads or os.environ.get("TF_NUM_INTRAOP_THREADS", "default")
    return (f"{command}: TensorFlow {tf.__version__}, {os.cpu_count()} CPUs ({amx}, avx512_bf16: "
            f"{'avx512_bf16' in flags}), TF_ENABLE_ONEDNN_OPTS={onednn}, intra-op threads {threads}, "
            f"batch {batch_size}, median of {steps} steps")


def time_step(step, batch_size, steps=5, warmup=2):
    """{"ms" (median ms per call of `step`), "images_per_s", "steps"} after max(1, `warmup`) untimed calls (the
    first traces the step)."""
    for _ in range(max(1, nonnegative_int(warmup, "warmup"))):
        step()
    times = []
    for _ in range(positive_int(steps, "steps")):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    ms = 1000 * statistics.median(times)
    return {"ms": ms, "images_per_s": batch_size / ms * 1000, "steps": len(times)}
