"""`kernelzoo bench sc`: training-step time of the spatial contrasting networks, float32 vs Keras mixed_bfloat16.

    kernelzoo bench sc [--networks cifar10,mnist] [--precisions float32,mixed_bfloat16]
        [--stages supervised,sc] [--batch-size 128] [--steps 5] [--warmup 2] [--threads 0]

For each network, stage and precision, side by side in one process: the median wall time of a full
training step on random raw-pixel images (throughput does not depend on the pixels), after
`--warmup` untimed steps (the first traces the step). "supervised" is `train_on_batch` of the
compiled classifier (the fine-tuning step, SGD + cross-entropy); "sc" is a step of
SpatialContrastingTrainer at the network's "sc_features" layer with the recipe's patch size (the
pre-training step: the layers up to it only). Under mixed_bfloat16 the convolutions and matmuls run
in bfloat16 (oneDNN uses AMX where the CPU has it: the header says whether /proc/cpuinfo lists
amx_bf16), the variables stay float32. The last columns estimate the seconds per epoch of the
presets' data (SC: the SC images; supervised: the labelled images) from the step time.
"""
import os
import sys

import numpy as np

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.zoo.step_bench import add_step_options, environment, listed, print_profile, time_step

NETWORKS = {"cifar10": ("sc_cifar10", "sc_cifar10_4k"), "mnist": ("sc_mnist", "sc_mnist"),
            "stl10": ("sc_stl10", "sc_stl10")}
# images per epoch of each stage (SC: every pool image; supervised: the labelled ones), full datasets
EPOCH_IMAGES = {"cifar10": {"sc": 50_000, "supervised": 4_000}, "mnist": {"sc": 60_000, "supervised": 60_000},
                "stl10": {"sc": 105_000, "supervised": 5_000}}
STAGES = ("supervised", "sc")


def measure(network="cifar10", precision="float32", stage="supervised", batch_size=128, steps=5, warmup=2, seed=0,
            overrides=None, profile=False):
    """{"ms" (median ms per step), "images_per_s", "steps"} of one network, precision and stage (and "profile"
    with `profile`: `step_bench.time_step`)."""
    import keras

    from kernelzoo.zoo import registry
    from kernelzoo.zoo.precision import precision_policy
    from kernelzoo.zoo.sc.pretraining import SpatialContrastingTrainer, feature_layer
    from kernelzoo.zoo.sc.recipe import SCRecipe

    network = check_choice("network", network, NETWORKS)
    stage = check_choice("stage", stage, STAGES)
    builder, preset_name = NETWORKS[network]
    preset = registry.info(preset_name)
    recipe = SCRecipe()
    hp = recipe.hyperparameters(preset)
    keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        model = registry.resolve(f"kernelzoo.zoo.sc.models.{builder}")(**(overrides or {}))
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (positive_int(batch_size, "batch_size"),) + tuple(model.inputs[0].shape[1:]))
        x = x.astype("float32")
        if stage == "supervised":
            recipe.compile(model, hp)
            y = rng.integers(0, 10, batch_size)
            step, scope = (lambda: model.train_on_batch(x, y)), model.name
        else:
            trainer = SpatialContrastingTrainer(feature_layer(model, hp["sc_layer"]), hp["sc_patch_size"],
                                                hp["sc_distance"], hp["sc_pooling"], hp["sc_symmetric"])
            trainer.compile(optimizer=keras.optimizers.SGD(hp["sc_lr"], momentum=hp["momentum"]))
            trainer.optimizer.build(trainer.backbone.trainable_variables)
            step, scope = (lambda: trainer.train_on_batch(x)), trainer.backbone.name
        return time_step(step, batch_size, steps, warmup, profile, scope)


def add_arguments(parser, command=None):
    parser.description = "Training-step time of the spatial contrasting networks: float32 vs mixed_bfloat16."
    parser.add_argument("what", choices=["sc"], help="what to benchmark")
    parser.add_argument("--networks", default="cifar10", help="comma-separated: " + ",".join(NETWORKS))
    parser.add_argument("--stages", default="supervised,sc", help="comma-separated: " + ",".join(STAGES))
    add_step_options(parser)


def run(args, command=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kernelzoo.zoo.precision import PRECISIONS

    networks = listed(args.networks, NETWORKS, "--networks")
    precisions = listed(args.precisions, PRECISIONS, "--precisions")
    stages = listed(args.stages, STAGES, "--stages")
    top = nonnegative_int(args.profile, "--profile")
    print(environment("kernelzoo bench sc", args.threads, args.batch_size, args.steps), flush=True)
    print(f"{'network':8s} {'stage':10s} {'precision':15s} {'ms/step':>9s} {'images/s':>9s} {'vs float32':>10s} "
          f"{'s/epoch':>9s}  (epoch images)", flush=True)
    for network in networks:
        for stage in stages:
            base = None
            for precision in precisions:
                result = measure(network, precision, stage, args.batch_size, args.steps, args.warmup,
                                 profile=top > 0)
                base = result["ms"] if precision == "float32" else base
                ratio = f"{base / result['ms']:.2f}x" if base else "-"
                images = EPOCH_IMAGES[network][stage]
                print(f"{network:8s} {stage:10s} {precision:15s} {result['ms']:9.1f} {result['images_per_s']:9.1f} "
                      f"{ratio:>10s} {images / result['images_per_s']:9.0f}  ({images:,})", flush=True)
                print_profile(result, top)
    return 0


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="kernelzoo bench")
    add_arguments(parser)
    return run(parser.parse_args(["sc", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    raise SystemExit(main())
