"""`kernelzoo bench simnet`: the training step of the SimNets against their ConvNet baseline, side by side.

    kernelzoo bench simnet [--models simnet_wl1,simnet_wl2,convnet] [--n 400] [--convnet-n 400]
        [--precisions float32,mixed_bfloat16] [--implementation auto|custom|composite]
        [--pooling auto,slices] [--batch-size 64] [--steps 5] [--warmup 2] [--threads 0] [--profile 0]
    (python -m kernelzoo.zoo.simnet.bench_train takes the same options)

In one process, for each model and precision: the median wall time of `train_on_batch` of the recipe's
compiled model (SGD with momentum, cross-entropy) on random raw-pixel 32x32x3 images (throughput does not
depend on the pixels), after `--warmup` untimed steps (the first traces the step). "vs convnet" is the
ConvNet's float32 step time (its first --pooling) over the row's (above 1: faster than the ConvNet; paper
000 issue target: the SimNets at n=400 at least as fast as the ConvNet at n=400). The SimNets run in
float32 only: their similarity and MEX ops are float32 kernels (mixed_bfloat16 rows are skipped for them);
the ConvNet and Coates baselines run at every precision listed, and with each `--pooling` implementation
of their quadrant pooling (`QuadrantPooling`: "auto", one pooling op; "slices", one reduction per
quadrant). Peak RSS is the process's high-water mark so far. `--profile N` then lists, under each row, the N
ops that took longest in --steps more steps (TF profiler, ms per step) and all ops' total.
"""
import itertools
import os
import resource

import numpy as np

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.zoo.simnet import models
from kernelzoo.zoo.step_bench import (add_step_options, environment, listed, print_profile, reference_first,
                                      standalone, time_step)

FLOAT32_ONLY = ("simnet_wl1", "simnet_wl2")
EPOCH_IMAGES = 50_000


def size(kind, n, convnet_n):
    """The model's n: the templates of a SimNet, `convnet_n` filters / centroids for a baseline."""
    return n if kind in FLOAT32_ONLY else convnet_n


def measure(kind, n=400, convnet_n=400, precision="float32", batch_size=64, steps=5, warmup=2, seed=0,
            pooling="auto", profile=False):
    """{"ms" (median ms per step), "images_per_s", "steps"} of one model's training step at one precision,
    its quadrant pooling (if any) by the implementation `pooling`; with `profile`, also "profile": [(op, ms per
    step)] of `steps` more steps, longest first (`step_bench.profile_step`)."""
    import keras

    from kernelzoo.zoo.precision import precision_policy
    from kernelzoo.zoo.recipe import DEFAULTS
    from kernelzoo.zoo.simnet.recipe import SimNetRecipe

    batch_size = positive_int(batch_size, "batch_size")
    pooling = check_choice("pooling", pooling, models.POOL_IMPLEMENTATIONS)  # set below, past the layer's check
    keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        model = models.build_kind(kind, size(kind, n, convnet_n))
        for layer in model.layers:
            if isinstance(layer, models.QuadrantPooling):
                layer.implementation = pooling
        model = SimNetRecipe().compile(model, DEFAULTS)
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (batch_size, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, batch_size)
        return time_step(lambda: model.train_on_batch(x, y), batch_size, steps, warmup, profile, model.name)


def add_arguments(parser, command=None):
    parser.description = "Training-step time of the SimNets and their ConvNet / Coates baselines."
    parser.add_argument("what", choices=["simnet"], help="what to benchmark")
    parser.add_argument("--models", default="simnet_wl1,simnet_wl2,convnet",
                        help="comma-separated: " + ",".join(models.KINDS))
    parser.add_argument("--n", type=int, default=400, help="SimNet templates")
    parser.add_argument("--convnet-n", type=int, default=400, help="ConvNet filters / Coates centroids")
    parser.add_argument("--implementation", default="auto", choices=("auto", "custom", "composite"),
                        help="the similarity / MEX op implementation (kernelzoo.ops)")
    parser.add_argument("--pooling", default="auto",
                        help="comma-separated QuadrantPooling implementations: auto,slices (ConvNet, Coates)")
    add_step_options(parser)
    parser.set_defaults(batch_size=64)  # the paper's SimNet batch


def run(args, command=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kernelzoo import ops
    from kernelzoo.zoo.precision import PRECISIONS

    kinds = reference_first(listed(args.models, models.KINDS, "--models"), "convnet")
    precisions = reference_first(listed(args.precisions, PRECISIONS, "--precisions"), "float32")
    poolings = listed(args.pooling, models.POOL_IMPLEMENTATIONS, "--pooling")
    top = nonnegative_int(args.profile, "--profile")  # before the first row
    with ops.implementation(args.implementation):
        print(environment("kernelzoo bench simnet", args.threads, args.batch_size, args.steps)
              + f", ops {ops.selected_implementation()}", flush=True)
        print(f"{'model':10s} {'n':>5s} {'precision':15s} {'pooling':7s} {'ms/step':>9s} {'images/s':>9s} "
              f"{'vs convnet':>10s} {'min/epoch':>9s} {'peak RSS MiB':>12s}", flush=True)
        convnet_ms = None
        for kind in kinds:
            for precision, pooling in itertools.product(precisions, poolings):
                if kind in FLOAT32_ONLY and (precision != "float32" or pooling != poolings[0]):
                    continue
                result = measure(kind, args.n, args.convnet_n, precision, args.batch_size, args.steps, args.warmup,
                                 pooling=pooling, profile=top > 0)
                if convnet_ms is None and kind == "convnet" and precision == "float32":
                    convnet_ms = result["ms"]
                ratio = f"{convnet_ms / result['ms']:.2f}x" if convnet_ms else "-"
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{kind:10s} {size(kind, args.n, args.convnet_n):5d} {precision:15s} "
                      f"{'-' if kind in FLOAT32_ONLY else pooling:7s} "
                      f"{result['ms']:9.1f} {result['images_per_s']:9.1f} {ratio:>10s} "
                      f"{EPOCH_IMAGES / result['images_per_s'] / 60:9.1f} {peak:12.0f}", flush=True)
                print_profile(result, top)
    return 0


def main(argv=None):
    return standalone("simnet", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
