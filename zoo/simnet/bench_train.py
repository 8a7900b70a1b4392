"""Training throughput (images/s of a full SGD step) of the SimNet and its ConvNet baseline on this machine.

    python -m kernelzoo.zoo.simnet.bench_train [--n 400] [--batch-size 64] [--steps 10]
        [--models simnet_l1,simnet_l2,convnet] [--convnet-n 400] [--implementation auto|custom|composite]

Random 32x32x3 images (throughput does not depend on the pixels); warm-up steps are
excluded; prints one line per model with the op implementation used and the peak
resident memory, and an epoch-time estimate for 50,000 CIFAR-10 images.
"""
import argparse
import os
import resource
import time

import numpy as np

from kernelzoo.ops.checks import check_choice

MODELS = ("simnet_l1", "simnet_l2", "convnet", "coates")


def build(kind, n, convnet_n):
    from kernelzoo.zoo.simnet import models
    kind = check_choice("models", kind, MODELS)
    if kind == "simnet_l1":
        return models.simnet_patch_labeling(n=n, p=1, weighted=True)
    if kind == "simnet_l2":
        return models.simnet_patch_labeling(n=n, p=2, weighted=True)
    if kind == "convnet":
        return models.convnet_baseline(n=convnet_n)
    return models.coates_baseline(n=convnet_n)


def measure(kind, n=400, convnet_n=400, batch_size=64, steps=10, warmup=2, seed=0):
    """(images per second, seconds per step) of model.train_on_batch for one model."""
    from kernelzoo.zoo.recipe import DEFAULTS
    from kernelzoo.zoo.simnet.recipe import SimNetRecipe
    model = SimNetRecipe().compile(build(kind, n, convnet_n), DEFAULTS)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch_size)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    per_step = (time.perf_counter() - started) / steps
    return batch_size / per_step, per_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="SimNet templates")
    parser.add_argument("--convnet-n", type=int, default=400, help="ConvNet filters / Coates centroids")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default="simnet_l1,simnet_l2,convnet")
    parser.add_argument("--implementation", default="auto", choices=("auto", "custom", "composite"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kernelzoo import ops
    kinds = [check_choice("--models", k.strip(), MODELS) for k in args.models.split(",") if k.strip()]
    with ops.implementation(args.implementation):
        implementation = ops.selected_implementation()
        print(f"op implementation: {implementation}; batch {args.batch_size}; {os.cpu_count()} CPUs", flush=True)
        for kind in kinds:
            rate, per_step = measure(kind, args.n, args.convnet_n, args.batch_size, args.steps, args.warmup)
            size = args.convnet_n if kind in ("convnet", "coates") else args.n
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{kind:10s} n={size:5d}: {rate:8.1f} images/s ({per_step * 1000:7.1f} ms/step), "
                  f"epoch of 50k ~ {50000 / rate / 60:6.1f} min, peak RSS so far {peak:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
