"""`kernelzoo bench ckn`: training-step time of the supervised CKNs, float32 vs Keras mixed_bfloat16.

    kernelzoo bench ckn [--presets ckn_cifar10_sup5] [--precisions float32,mixed_bfloat16] [--batch-size 128]
        [--steps 5] [--warmup 2] [--threads 0]

For each preset and precision, side by side in one process: the median wall time of `train_on_batch` of the
preset's model as its recipe builds and compiles it (SGD, squared hinge, the anchors trainable: every step
recomputes the Nystrom factors), on random raw-pixel images (the time does not depend on the pixels nor on the
anchors' values), after `--warmup` untimed steps (the first traces the step). Under mixed_bfloat16 the CKN layers'
patch-anchor products run in bfloat16 (oneDNN uses AMX where the CPU has it: the first line says whether
/proc/cpuinfo lists amx_bf16); the rest stays float32. The last column estimates the seconds per epoch of the
50,000 CIFAR-10 training images.
"""
import os

import numpy as np

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.zoo.step_bench import (add_step_options, environment, listed, print_profile, reference_first,
                                      standalone, time_step)

PRESETS = ("ckn_cifar10_sup5",)
EPOCH_IMAGES = 50_000


def measure(preset_name="ckn_cifar10_sup5", precision="float32", batch_size=128, steps=5, warmup=2, seed=0,
            overrides=None, profile=False):
    """{"ms" (median ms per step), "images_per_s", "steps"} of one preset's training step at one precision
    (and "profile" with `profile`: `step_bench.time_step`); `overrides` (builder arguments, input_shape among
    them) shrink it (tests)."""
    import keras

    from kernelzoo.zoo import registry
    from kernelzoo.zoo.precision import precision_policy

    preset = registry.info(check_choice("preset", preset_name, PRESETS))
    recipe = registry.recipe(preset)
    hp = recipe.hyperparameters(preset, precision=precision)
    batch_size = positive_int(batch_size, "batch_size")
    keras.utils.set_random_seed(seed)
    with precision_policy(hp["precision"]):
        model = recipe.build(preset, None, overrides, hp)
        recipe.compile(model, hp)
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (batch_size,) + tuple(model.inputs[0].shape[1:])).astype("float32")
        y = rng.integers(0, len(preset.class_names), batch_size)
        return time_step(lambda: model.train_on_batch(x, y), batch_size, steps, warmup, profile, model.name)


def add_arguments(parser, command=None):
    parser.description = "Training-step time of the supervised CKNs: float32 vs mixed_bfloat16."
    parser.add_argument("what", choices=["ckn"], help="what to benchmark")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated: " + ",".join(PRESETS))
    add_step_options(parser)


def run(args, command=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kernelzoo.zoo.precision import PRECISIONS

    presets = listed(args.presets, PRESETS, "--presets")
    precisions = reference_first(listed(args.precisions, PRECISIONS, "--precisions"), "float32")
    top = nonnegative_int(args.profile, "--profile")
    print(environment("kernelzoo bench ckn", args.threads, args.batch_size, args.steps), flush=True)
    print(f"{'preset':18s} {'precision':15s} {'ms/step':>9s} {'images/s':>9s} {'vs float32':>10s} {'s/epoch':>9s}  "
          f"({EPOCH_IMAGES:,} images)", flush=True)
    for preset in presets:
        base = None
        for precision in precisions:
            result = measure(preset, precision, args.batch_size, args.steps, args.warmup, profile=top > 0)
            base = result["ms"] if precision == "float32" else base
            ratio = f"{base / result['ms']:.2f}x" if base else "-"
            print(f"{preset:18s} {precision:15s} {result['ms']:9.1f} {result['images_per_s']:9.1f} {ratio:>10s} "
                  f"{EPOCH_IMAGES / result['images_per_s']:9.0f}", flush=True)
            print_profile(result, top)
    return 0


def main(argv=None):
    return standalone("ckn", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
