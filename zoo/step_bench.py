"""What the training-step benchmarks share (`kernelzoo bench sc`, `kernelzoo bench ckn`, `kernelzoo bench simnet`):
the environment line they print first, their options, the median time of a step and where a step's time goes."""
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

from kernelzoo.ops.bench import add_threads_option, set_threads
from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.ops.library import cpu_flags


def add_step_options(parser):
    """The options every step benchmark takes: --precisions, --batch-size, --steps, --warmup, --threads, --profile."""
    parser.add_argument("--precisions", default="float32,mixed_bfloat16", help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1: the first traces)")
    add_threads_option(parser)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="under each row, the N longest ops of --steps more steps (TF profiler; 0: none)")


def listed(text, choices, name):
    """The items of a comma-separated option, each one of `choices` (else ValueError naming the option)."""
    return [check_choice(name, item.strip(), choices) for item in text.split(",") if item.strip()]


def reference_first(items, reference):
    """`items` with `reference` first where listed, the others in their order: measured first, the reference gives
    every row its ratio."""
    return sorted(items, key=lambda item: item != reference)


def standalone(what, add_arguments, run, argv=None):
    """`python -m` of a step benchmark: `kernelzoo bench WHAT` with the command line's options (or `argv`)."""
    import argparse
    parser = argparse.ArgumentParser(prog="kernelzoo bench")
    add_arguments(parser)
    return run(parser.parse_args([what, *(sys.argv[1:] if argv is None else argv)]))


def environment(command, threads, batch_size, steps):
    """The benchmark's first line: TensorFlow, the CPUs and whether they have AMX / AVX512-BF16, oneDNN, threads;
    sets TensorFlow's intra-op threads (`set_threads`)."""
    import tensorflow as tf

    threads = set_threads(threads)
    flags = cpu_flags()
    amx = "amx_bf16" if "amx_bf16" in flags else "no amx_bf16"
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86)")
    return (f"{command}: TensorFlow {tf.__version__}, {os.cpu_count()} CPUs ({amx}, avx512_bf16: "
            f"{'avx512_bf16' in flags}), TF_ENABLE_ONEDNN_OPTS={onednn}, intra-op threads {threads}, "
            f"batch {batch_size}, median of {steps} steps")


def time_step(step, batch_size, steps=5, warmup=2, profile=False, drop_scope=None):
    """{"ms" (median ms per call of `step`), "images_per_s", "steps"} after max(1, `warmup`) untimed calls (the
    first traces the step); with `profile`, also "profile" of `steps` more calls (`profile_step`)."""
    for _ in range(max(1, nonnegative_int(warmup, "warmup"))):
        step()
    times = []
    for _ in range(positive_int(steps, "steps")):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    ms = 1000 * statistics.median(times)
    result = {"ms": ms, "images_per_s": batch_size / ms * 1000, "steps": len(times)}
    if profile:
        result["profile"] = profile_step(step, steps, drop_scope)
    return result


def print_profile(result, top):
    """The `top` longest ops of a profiled step and all ops' total, indented under the step's row (nothing if
    `top` is 0)."""
    if not top:
        return
    profile = result["profile"]
    for name, ms in profile[:top]:
        print(f"    {ms:9.1f} ms  {name}")
    print(f"    {sum(ms for _, ms in profile):9.1f} ms  all {len(profile)} ops", flush=True)


# An op's event in a TF profiler trace is "scope/name:OpType"; executor bookkeeping ("ExecutorState::Process")
# and Python frames are not ops.
_OP_EVENT = re.compile(r"^[^:]+:[A-Za-z0-9_]+$")


def profile_step(step, steps=3, drop_scope=None):
    """[(op, ms per call)] of the TensorFlow ops run by `steps` calls of `step`, longest first (TF profiler).

    An op's time is its wall time on the executor thread that ran it, its own intra-op threads included;
    ops that ran side by side both count. `drop_scope` (e.g. the model's name) is removed from the op names,
    with the "_1" Keras appends to a reused scope. Call `step` at least once before (tracing is not profiled).
    """
    import tensorflow as tf

    steps = positive_int(steps, "steps")
    totals = collections.Counter()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                step()
        finally:
            tf.profiler.experimental.stop()
        for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
            totals.update(_host_op_times(path))
    if drop_scope:
        scope = re.compile(r"(^|/)" + re.escape(drop_scope) + r"(_\d+)?/")
        merged = collections.Counter()
        for name, ps in totals.items():
            merged[scope.sub(r"\1", name)] += ps
        totals = merged
    return [(name, ps / 1e9 / steps) for name, ps in totals.most_common()]


def _host_op_times(path):
    """Counter of op name ("scope/name") -> picoseconds over the host CPU's events of one profiler trace file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if _OP_EVENT.match(name):
                    times[name.rsplit(":", 1)[0]] += event.duration_ps
    return times
