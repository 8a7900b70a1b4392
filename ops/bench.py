"""`kernelzoo bench ops`: time and memory of the similarity and MEX operators.

For each shape (the CIFAR-10 patch-labelling SimNet of paper 000 and a small
one) it measures, in one process, forward and forward+backward wall time
(median of --reps runs after warm-up, each run inside a `tf.function`) of

* weighted l1 / l2 / lp (p = 1.5 for every template) / linear similarity:
  custom op, composite (keras.ops), and
  composite compiled with XLA (`tf.function(jit_compile=True)`), against
  `keras.layers.Conv2D` with the same shape (ratio column = time / Conv2D);
* weighted l1 / l2 custom op with the parameters' gradients only (a first
  layer, whose input needs none: the op's input_grad=False) against the input's
  and the parameters' (ratio = time / the latter);
* MEX (xi = 1, no offsets, 2x2 blocks, stride 2): custom vs composite, against
  `keras.layers.MaxPool2D` and `tf.reduce_logsumexp` over the same blocks
  (ratio = time / MaxPool2D);
* the SimNet's class-wise MEX (1x1 blocks over all channels, 10 instances, 2x2
  offset regions, one xi): custom vs composite (ratio = time / composite),
  the custom op's exp-domain GEMM form against its direct loop (the op's `gemm`
  attr off; ratio = time / direct), and with xi fixed (no xi gradient: the op's
  xi_grad=False) against xi learned;

and the peak memory of one forward+backward step. `--memory tf` (default)
reads the TF CPU allocator's peak (`tf.config.experimental.get_memory_info`,
reset before the step): it counts every tensor (outputs, gradients, the
composite's intermediates) but not the custom ops' per-thread scratch (patch
buffers of a few hundred rows plus (D, n) accumulators, malloc'ed: under ~3 MB
per thread at the CIFAR shape) nor XLA's internal buffers; `--memory rss` runs each case in a subprocess and
reports its RSS high-water growth (`resource.getrusage`) over the step
(includes tracing / XLA compilation); `--memory none` skips it.

With the cifar shape it then times whole training steps, each case in a fresh
process that reports its peak resident memory (`ru_maxrss`): the SimNet with
weighted l1 and with weighted l2 similarity (`model.train_on_batch`, batch 64)
and the class-wise MEX alone (gradients for input, xi and offsets), custom op
vs composite on TF, and composite on JAX when JAX is installed (`--no-steps`
skips them). The header states the op library's build flags and CPU features.
Progress goes to stderr, the table to stdout.
"""
import argparse
import functools
import os
import statistics
import subprocess
import sys
import time

from kernelzoo.ops.checks import nonnegative_int, positive_int

SHAPES = {
    # name: (batch, height, width, channels, patch, templates, mex pool)
    "cifar": dict(batch=64, size=32, channels=3, patch=6, templates=400, pool=2),
    "small": dict(batch=16, size=16, channels=8, patch=3, templates=32, pool=2),
    "tiny": dict(batch=2, size=8, channels=2, patch=3, templates=32, pool=2),  # a smoke test
}
SIMILARITIES = ("l2", "l1", "lp", "linear")


def add_arguments(parser, command=None):
    parser.description = "Benchmark the custom ops against the composite and Keras layers."
    parser.add_argument("what", choices=["ops"], help="what to benchmark")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["cifar", "small"],
                        help="shapes to run (default: cifar small)")
    parser.add_argument("--reps", type=int, default=7,
                        help="timed runs per case (median; at most 3 for cases over 2 s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per case (at least 1 runs: the first "
                        "traces)")
    parser.add_argument("--memory", choices=["tf", "rss", "none"], default="tf",
                        help="peak memory measurement (default: tf allocator peak)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA composite rows")
    add_threads_option(parser)
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only rows whose label contains one of these words")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--no-steps", action="store_true",
                       help="skip the training-step rows (time and peak RSS, a fresh process each)")
    steps.add_argument("--steps-only", action="store_true",
                       help="only the training-step rows (at the CIFAR shape, whatever --shapes says)")


def add_threads_option(parser):
    """--threads (`set_threads`), which every benchmark takes."""
    parser.add_argument("--threads", type=int, default=0,
                        help="TF intra-op threads (0: $TF_NUM_INTRAOP_THREADS, else all cores); 1 gives steadier "
                             "timings on a shared machine")


def set_threads(threads):
    """Sets TensorFlow's intra-op threads to --threads unless 0; returns those it runs with, for the header:
    `threads`, else $TF_NUM_INTRAOP_THREADS (TensorFlow reads it), else "default" (all cores). Not what TensorFlow
    reports: 0 unless set here."""
    import tensorflow as tf

    if nonnegative_int(threads, "--threads"):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    return threads or os.environ.get("TF_NUM_INTRAOP_THREADS", "default")


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cases --
_XLA_SLAB_LIMIT = 2 * 2**30


class _Skip(Exception):
    pass


def _skipped(reason):
    def build():
        raise _Skip(reason)
    return build


def _cases(shape_name, no_xla=False):
    """Yields (group, label, baseline?, builder); builder() -> (fwd, fwdbwd) tf.functions."""
    import numpy as np
    import tensorflow as tf
    import keras

    from kernelzoo.ops import composite

    s = SHAPES[shape_name]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(s["batch"], s["size"], s["size"], s["channels"])).astype("float32"))
    k, n = s["patch"], s["templates"]
    z = tf.Variable(rng.normal(size=(k, k, s["channels"], n)).astype("float32"))
    u = tf.Variable(rng.uniform(0.5, 1.5, size=(k, k, s["channels"], n)).astype("float32"))
    out_size = s["size"] - k + 1
    gy = tf.constant(rng.normal(size=(s["batch"], out_size, out_size, n)).astype("float32"))

    def make(forward, variables, grad, inputs=x, input_grad=True):
        """(forward, forward+backward) closures over `inputs`; the backward seeds `grad` and differentiates
        the variables, and the inputs unless input_grad=False. forward+backward returns the loss too: a
        gradient op that does not read the forward's output would otherwise leave the forward pruned away."""
        sources = ([inputs] if input_grad else []) + list(variables)

        def fwd():
            return forward(inputs)

        def fwdbwd():
            with tf.GradientTape() as tape:
                if input_grad:
                    tape.watch(inputs)
                loss = tf.reduce_sum(forward(inputs) * grad)
            return loss, tape.gradient(loss, sources)
        return fwd, fwdbwd

    def conv_case():
        conv = keras.layers.Conv2D(n, k, padding="valid")
        conv.build(x.shape)
        fwd, fwdbwd = make(conv, conv.trainable_variables, gy)
        return tf.function(fwd), tf.function(fwdbwd)

    def sim_case(kind, impl, xla=False, input_grad=True):
        def build():
            from kernelzoo.ops import custom
            mod = custom if impl == "custom" else composite
            p = tf.fill((n,), {"l1": 1.0, "l2": 2.0, "lp": 1.5}.get(kind, 1.0))

            def forward(inp):
                return mod.similarity(inp, z, u, p, similarity=kind, strides=(1, 1),
                                      padding="valid", ignore_nan=False)
            fwd, fwdbwd = make(forward, [z, u], gy, input_grad=input_grad)
            return tf.function(fwd, jit_compile=xla), tf.function(fwdbwd, jit_compile=xla)
        return build

    group = f"similarity {shape_name} ({s['batch']}x{s['size']}x{s['size']}x{s['channels']}, " \
            f"{k}x{k}, {n} templates)"
    yield group, "Conv2D", True, conv_case
    for kind in SIMILARITIES:
        w = "weighted " if kind != "linear" else ""
        yield group, f"{w}{kind} custom", False, sim_case(kind, "custom")
        yield group, f"{w}{kind} composite", False, sim_case(kind, "composite")
        if not no_xla:
            slab = s["batch"] * out_size ** 2 * k * k * s["channels"] * n * 4
            if kind in ("l1", "lp") and slab > _XLA_SLAB_LIMIT:
                # XLA fuses the composite's per-chunk slabs into one
                # positions x patch x templates tensor (15 GiB at the CIFAR shape)
                yield group, f"{w}{kind} composite XLA", False, _skipped(
                    f"skipped: XLA would materialise the {slab / 2**30:.0f} GiB "
                    "positions x patch x templates tensor")
            else:
                yield group, f"{w}{kind} composite XLA", False, sim_case(kind, "composite", True)

    for kind in ("l1", "l2"):
        group = (f"similarity {shape_name}, weighted {kind} custom op: the parameters' gradients only (a first "
                 "layer's: input_grad=False) against the input's and the parameters'")
        yield group, "input and parameters", True, sim_case(kind, "custom")
        yield group, "parameters only", False, sim_case(kind, "custom", input_grad=False)

    # MEX over the similarity output shape.
    pool = s["pool"]
    m_in = tf.constant(rng.normal(size=(s["batch"], out_size, out_size, n)).astype("float32"))
    m_out = out_size // pool
    gm = tf.constant(rng.normal(size=(s["batch"], m_out, m_out, n)).astype("float32"))
    xi = tf.Variable(tf.ones((1,)))

    def maxpool_case():
        layer = keras.layers.MaxPool2D(pool)
        fwd, fwdbwd = make(layer, [], gm, m_in)
        return tf.function(fwd), tf.function(fwdbwd)

    def lse_case():
        def forward(inp):
            b, h, w, c = inp.shape
            h2, w2 = h // pool * pool, w // pool * pool
            blocks = tf.reshape(inp[:, :h2, :w2], (b, h2 // pool, pool, w2 // pool, pool, c))
            return tf.reduce_logsumexp(blocks, axis=(2, 4))
        fwd, fwdbwd = make(forward, [], gm, m_in)
        return tf.function(fwd), tf.function(fwdbwd)

    def mex_case(impl, xla=False):
        def build():
            from kernelzoo.ops import custom
            mod = custom if impl == "custom" else composite

            def forward(inp):
                return mod.mex(inp, xi, None, None, num_instances=1, pool_size=(pool, pool),
                               channel_block=1, strides=(pool, pool), padding="valid",
                               softmax_mode=False)
            fwd, fwdbwd = make(forward, [xi], gm, m_in)
            return tf.function(fwd, jit_compile=xla), tf.function(fwdbwd, jit_compile=xla)
        return build

    group = f"mex {shape_name} ({s['batch']}x{out_size}x{out_size}x{n}, {pool}x{pool}/{pool}, xi=1)"
    yield group, "MaxPool2D", True, maxpool_case
    yield group, "reduce_logsumexp", False, lse_case
    yield group, "mex custom", False, mex_case("custom")
    yield group, "mex composite", False, mex_case("composite")
    if not no_xla:
        yield group, "mex composite XLA", False, mex_case("composite", True)

    # The SimNet's class-wise MEX: 1x1 blocks over all channels, 10 instances, offsets per quadrant.
    classes = 10
    offsets = tf.Variable(rng.normal(size=(2, 2, classes, 1, 1, n)).astype("float32"))
    gc = tf.constant(rng.normal(size=(s["batch"], out_size, out_size, classes)).astype("float32"))

    def classwise_case(impl, gemm=True, learn_xi=True):
        def build():
            from kernelzoo.ops import custom
            mex = functools.partial(custom.mex, gemm=gemm) if impl == "custom" else composite.mex
            xis = tf.Variable(tf.ones((classes,))) if learn_xi else tf.ones((classes,))

            def forward(inp):
                return mex(inp, xis, offsets, None, num_instances=classes, pool_size=(1, 1),
                           channel_block=n, strides=(1, 1), padding="valid", softmax_mode=False)
            fwd, fwdbwd = make(forward, [xis, offsets] if learn_xi else [offsets], gc, m_in)
            return tf.function(fwd), tf.function(fwdbwd)
        return build

    group = (f"mex {shape_name} class-wise ({s['batch']}x{out_size}x{out_size}x{n}, 1x1 blocks over all "
             f"{n} channels, {classes} instances, 2x2 offset regions)")
    yield group, "mex composite", True, classwise_case("composite")
    yield group, "mex custom", False, classwise_case("custom")
    group = f"mex {shape_name} class-wise, custom op: GEMM form against the direct loop (gemm=False), same shape"
    yield group, "mex custom direct", True, classwise_case("custom", gemm=False)
    yield group, "mex custom GEMM", False, classwise_case("custom")
    group = (f"mex {shape_name} class-wise, custom op: xi fixed (no xi gradient: xi_grad=False) against xi "
             "learned, same shape")
    yield group, "xi learned", True, classwise_case("custom")
    yield group, "xi fixed", False, classwise_case("custom", learn_xi=False)


def _materialise(result):
    import keras

    for t in keras.tree.flatten(result):
        if t is not None:
            keras.ops.convert_to_numpy(t)


def _time(fn, reps, warmup):
    for i in range(max(warmup, 1)):
        start = time.perf_counter()
        _materialise(fn())
        if i == 0 and time.perf_counter() - start > 2.0:
            # very slow case (the composite l1 on CIFAR takes tens of seconds)
            reps = min(reps, 3)
            break
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        _materialise(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tf_peak(fn):
    import tensorflow as tf

    _materialise(fn())  # traced / compiled already; make sure
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    _materialise(fn())
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base


def _rss_case(shape, label, no_xla, threads=0):
    """Runs in a subprocess: RSS high-water growth over one fwd+bwd step (bytes)."""
    import resource

    import tensorflow as tf

    set_threads(threads)
    tf.constant(1.0).numpy()
    for _, lab, _, builder in _cases(shape, no_xla):
        if lab == label:
            _, fwdbwd = builder()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            _materialise(fwdbwd())
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"RSS_KB {after - before}")
            return


def _rss_peak(shape, label, no_xla, threads=0):
    code = ("import sys; from kernelzoo.ops import bench; "
            f"bench._rss_case({shape!r}, {label!r}, {no_xla!r}, {threads!r})")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RSS_KB "):
            return int(line.split()[1]) * 1024
    return None


def _fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:9.1f}"


def _fmt_ratio(t, base):
    return "-" if t is None or not base else f"{t / base:6.2f}x"


def _fmt_mb(b):
    return "-" if b is None else f"{b / 2**20:8.1f}"


def run(args, command=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from kernelzoo.ops import library

    positive_int(args.reps, "--reps")
    nonnegative_int(args.warmup, "--warmup")
    threads = set_threads(args.threads)

    if not library.available():
        _log("kernelzoo bench: the custom op library is not available; building to show why:")
        try:
            library.load()
        except RuntimeError as e:
            _log(str(e))
        return 1
    memory = args.memory
    if memory == "tf":
        try:
            tf.config.experimental.get_memory_info("CPU:0")
        except Exception:  # noqa: BLE001
            _log("kernelzoo bench: tf.config.experimental.get_memory_info('CPU:0') does not "
                 "work here; falling back to --memory rss")
            memory = "rss"
    rows = []
    for shape in [] if args.steps_only else args.shapes:
        base = None
        for group, label, is_base, builder in _cases(shape, args.no_xla):
            if args.only and not is_base and not any(w in label for w in args.only):
                continue
            _log(f"[{shape}] {label} ...")
            try:
                fwd, fwdbwd = builder()
                t_f = _time(fwd, args.reps, args.warmup)
                t_b = _time(fwdbwd, args.reps, args.warmup)
                if memory == "tf":
                    peak = _tf_peak(fwdbwd)
                elif memory == "rss":
                    peak = _rss_peak(shape, label, args.no_xla, args.threads)
                else:
                    peak = None
                err = None
            except _Skip as e:
                t_f = t_b = peak = None
                err = str(e)
                _log(f"  {err}")
            except Exception as e:  # noqa: BLE001 - report and go on
                t_f = t_b = peak = None
                err = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
                _log(f"  failed: {err}")
            if is_base:
                base = (t_f, t_b)
            rows.append((group, label, t_f, t_b, peak, base, err))
    steps = _step_rows(args) if args.steps_only or (not args.no_steps and "cifar" in args.shapes) else []
    _print_table(rows, memory, args, threads)
    _print_step_table(steps, args)
    return 0


def _print_table(rows, memory, args, threads):
    """The header (`threads`: `set_threads`'s), the op library's build line and the op rows, group by group."""
    import platform

    import tensorflow as tf

    mem_head = {"tf": "peak MB (TF alloc)", "rss": "peak MB (RSS delta)", "none": ""}[memory]
    print(f"kernelzoo bench ops — TF {tf.__version__}, {os.cpu_count()} CPU cores, intra-op threads {threads}, "
          f"{platform.processor() or platform.machine()}; median of {args.reps} runs after "
          f"{args.warmup} warm-up; ratio = time / baseline (first row of each group)")
    print(_build_line())
    header = f"{'case':<30} {'fwd ms':>9} {'ratio':>7} {'fwd+bwd ms':>10} {'ratio':>7}  {mem_head}"
    group = None
    for g, label, t_f, t_b, peak, base, err in rows:
        if g != group:
            group = g
            _print_group_header(g, header)
        if err:
            _print_error_row(label, err)
            continue
        b_f, b_b = base or (None, None)
        print(f"{label:<30} {_fmt_ms(t_f)} {_fmt_ratio(t_f, b_f):>7} {_fmt_ms(t_b):>10} "
              f"{_fmt_ratio(t_b, b_b):>7}  {_fmt_mb(peak) if memory != 'none' else ''}")


def _build_line():
    """The op library's target, compile flags and the CPU features they use."""
    from kernelzoo.ops import library

    info = library.build_info()
    return (f"custom ops built for {info.variant} ({' '.join(info.arch_flags) or 'no -march'}); "
            f"flags: {' '.join(info.flags)}; CPU features used: {' '.join(info.cpu_features) or 'none reported'}")


# ------------------------------------------------------- training steps --
# Whole steps at the CIFAR shape, batch 64, each case in a fresh process: the peak resident set
# is a high-water mark, so one process per case. The composite rows run with the
# default memory budget (kernelzoo.ops.blockwise, $KERNELZOO_COMPOSITE_MEMORY_MB).
STEP_BATCH = 64
STEPS = {
    "simnet l1": "SimNet training step: weighted l1, 400 templates, 6x6x3 whitened patches, 32x32x3 images",
    "simnet l2": "SimNet training step: weighted l2, 400 templates, 6x6x3 whitened patches, 32x32x3 images",
    "mex": "class-wise MEX fwd+bwd alone (64x27x27x400, 1x1 blocks over all 400 channels, 10 instances, "
           "2x2 offset regions, xi learned)",
}
STEP_RUNS = (("custom", "tensorflow"), ("composite", "tensorflow"), ("composite", "jax"))


def _step_rows(args):
    """[(group, label, seconds per step, RSS before the first step, peak RSS, error)], custom first."""
    import importlib.util

    rows = []
    for what, group in STEPS.items():
        for impl, backend in STEP_RUNS:
            label = impl if backend == "tensorflow" else f"{impl} (JAX)"
            if args.only and not any(w in f"{what} {label}" for w in args.only):
                continue
            _log(f"[step] {what} {label} ...")
            if backend == "jax" and importlib.util.find_spec("jax") is None:
                rows.append((group, label, None, None, None, "skipped: JAX is not installed"))
                continue
            rows.append((group, label) + _step_subprocess(what, impl, backend, args))
    return rows


def _step_subprocess(what, impl, backend, args):
    """(seconds, RSS before, peak RSS, error) of `what` measured in a fresh process."""
    code = (f"from kernelzoo.ops import bench; bench._step_case({what!r}, {args.reps!r}, {args.warmup!r}, "
            f"{args.threads!r})")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend, KERNELZOO_OPS=impl)
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("STEP "):
            seconds, before, peak = line.split()[1:]
            return float(seconds), int(before), int(peak), None
    reason = "killed (out of memory?)" if proc.returncode < 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
    _log(f"  failed: {reason}")
    return None, None, None, f"exit {proc.returncode}: {reason[:80]}"


def _step_case(what, reps, warmup, threads=0):
    """Runs in a fresh process: prints STEP <median seconds> <RSS before the first step> <peak RSS> (bytes)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        set_threads(threads)
    step = _step_function(what)
    before = _peak_rss()
    seconds = _time(step, reps, warmup)
    peak = _peak_rss()
    print(f"STEP {seconds} {before} {peak}", flush=True)


def _print_group_header(group, header):
    """A blank line, the group's title, the column header and its rule."""
    print()
    print(group)
    print(header)
    print("-" * len(header))


def _print_error_row(label, err):
    """A row that did not run: "skipped: why" as it is, anything else as "failed: ..."."""
    print(f"{label:<30} {err if err.startswith('skipped') else 'failed: ' + err}")


def _peak_rss():
    """This process's peak resident set in bytes: VmHWM on Linux.

    Not ru_maxrss: Linux carries it over fork and exec, so a child started by a process that
    once held 1.8 GB reports at least 1.8 GB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _step_function(what):
    """A no-argument callable running one step of `what` on the current Keras backend."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    if what.startswith("simnet"):
        from kernelzoo.zoo.simnet import models

        model = models.simnet_patch_labeling(n=400, p=1 if what.endswith("l1") else 2, weighted=True)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = rng.integers(0, 256, (STEP_BATCH, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, STEP_BATCH)
        return lambda: model.train_on_batch(x, y)
    from kernelzoo import ops as kops

    classes, channels = 10, 400
    args = [rng.normal(size=(STEP_BATCH, 27, 27, channels)).astype("float32"), np.ones(classes, "float32"),
            rng.normal(size=(2, 2, classes, 1, 1, channels)).astype("float32")]
    weights = rng.normal(size=(STEP_BATCH, 27, 27, classes)).astype("float32")

    def loss(inputs, xi, offsets):
        out = kops.mex(inputs, xi, num_instances=classes, channel_block=channels, offsets=offsets)
        return keras.ops.sum(out * weights)
    return _gradient_step(loss, args)


def _gradient_step(loss, args):
    """A compiled callable returning loss(*args) and its gradients with respect to every argument (the value
    too: the custom ops' gradients do not read the forward's output, which TF would otherwise prune away)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax
        return functools.partial(jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))))), *args)
    import tensorflow as tf

    tensors = [tf.constant(a) for a in args]

    @tf.function(autograph=False)
    def gradients():
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = loss(*tensors)
        return value, tape.gradient(value, tensors)
    return gradients


def _print_step_table(rows, args):
    if not rows:
        return
    print()
    print(f"training steps, batch {STEP_BATCH}, each case in a fresh process: median of {args.reps} steps "
          f"(at most 3 over 2 s) after {args.warmup} warm-up; peak RSS = the process's resident high-water "
          "mark; ratio = time / custom (- where --only leaves the custom row out)")
    header = f"{'case':<30} {'step ms':>10} {'ratio':>7} {'RSS before MB':>14} {'peak RSS MB':>12}"
    group = None
    for g, label, seconds, before, peak, err in rows:
        if g != group:
            group = g
            base = next((row[2] for row in rows if row[:2] == (g, "custom")), None)
            _print_group_header(g, header)
        if err:
            _print_error_row(label, err)
            continue
        print(f"{label:<30} {_fmt_ms(seconds):>10} {_fmt_ratio(seconds, base):>7} {_fmt_mb(before):>14} "
              f"{_fmt_mb(peak):>12}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kernelzoo bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
