"""`kernelzoo bench sc`: training-step time of the spatial contrasting networks, float32 vs Keras mixed_bfloat16,
and their fused batch normalization vs Keras's.

    kernelzoo bench sc [--networks cifar10,mnist] [--precisions float32,mixed_bfloat16]
        [--stages supervised,sc] [--batch-norm fused] [--batch-size 128] [--steps 5] [--warmup 2] [--threads 0]

For each network, stage, batch normalization and precision, side by side in one process: the median
wall time of a full training step on random raw-pixel images (throughput does not depend on the pixels), after
`--warmup` untimed steps (the first traces the step). "supervised" is `train_on_batch` of the
compiled classifier (the fine-tuning step, SGD + cross-entropy); "sc" is a step of
SpatialContrastingTrainer at the network's "sc_features" layer with the recipe's patch size (the
pre-training step: the layers up to it only). Under mixed_bfloat16 the convolutions and matmuls run
in bfloat16 (oneDNN uses AMX where the CPU has it: the header says whether /proc/cpuinfo lists
amx_bf16), the variables stay float32. `--batch-norm keras` rebuilds the network with Keras's own
BatchNormalization in place of FusedBatchNormalization (same architecture and maths). The last
columns estimate the seconds per epoch of the presets' data (SC: the SC images; supervised: the
labelled images) from the step time.
"""
import os

import numpy as np

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int
from kernelzoo.zoo.step_bench import (add_step_options, environment, listed, print_profile, reference_first,
                                      standalone, time_step)

NETWORKS = {"cifar10": ("sc_cifar10", "sc_cifar10_4k"), "mnist": ("sc_mnist", "sc_mnist"),
            "stl10": ("sc_stl10", "sc_stl10")}
# images per epoch of each stage (SC: every pool image; supervised: the labelled ones), full datasets
EPOCH_IMAGES = {"cifar10": {"sc": 50_000, "supervised": 4_000}, "mnist": {"sc": 60_000, "supervised": 60_000},
                "stl10": {"sc": 105_000, "supervised": 5_000}}
STAGES = ("supervised", "sc")
BATCH_NORMS = ("fused", "keras")


def measure(network="cifar10", precision="float32", stage="supervised", batch_size=128, steps=5, warmup=2, seed=0,
            overrides=None, profile=False, batch_norm="fused"):
    """{"ms" (median ms per step), "images_per_s", "steps"} of one network, precision, stage and batch
    normalization (and "profile" with `profile`: `step_bench.time_step`)."""
    import keras

    from kernelzoo.zoo import registry
    from kernelzoo.zoo.precision import precision_policy
    from kernelzoo.zoo.sc.pretraining import SpatialContrastingTrainer, feature_layer
    from kernelzoo.zoo.sc.recipe import SCRecipe, sc_criterion

    network = check_choice("network", network, NETWORKS)
    stage = check_choice("stage", stage, STAGES)
    batch_norm = check_choice("batch_norm", batch_norm, BATCH_NORMS)
    builder, preset_name = NETWORKS[network]
    preset = registry.info(preset_name)
    recipe = SCRecipe()
    hp = recipe.hyperparameters(preset)
    keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        model = registry.resolve(f"kernelzoo.zoo.sc.models.{builder}")(**(overrides or {}))
        if batch_norm == "keras":
            model = with_keras_batch_norm(model)
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (positive_int(batch_size, "batch_size"),) + tuple(model.inputs[0].shape[1:]))
        x = x.astype("float32")
        if stage == "supervised":
            recipe.compile(model, hp)
            y = rng.integers(0, 10, batch_size)
            step, scope = (lambda: model.train_on_batch(x, y)), model.name
        else:
            trainer = SpatialContrastingTrainer(feature_layer(model, hp["sc_layer"]), **sc_criterion(hp))
            trainer.compile(optimizer=keras.optimizers.SGD(hp["sc_lr"], momentum=hp["momentum"]))
            trainer.optimizer.build(trainer.backbone.trainable_variables)
            step, scope = (lambda: trainer.train_on_batch(x)), trainer.backbone.name
        return time_step(step, batch_size, steps, warmup, profile, scope)


def with_keras_batch_norm(model):
    """A copy of `model` (fresh weights) with Keras's BatchNormalization in place of FusedBatchNormalization."""
    import keras

    from kernelzoo.layers import FusedBatchNormalization

    def clone(layer):
        kind = keras.layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return kind.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def add_arguments(parser, command=None):
    parser.description = "Training-step time of the spatial contrasting networks: float32 vs mixed_bfloat16."
    parser.add_argument("what", choices=["sc"], help="what to benchmark")
    parser.add_argument("--networks", default="cifar10", help="comma-separated: " + ",".join(NETWORKS))
    parser.add_argument("--stages", default="supervised,sc", help="comma-separated: " + ",".join(STAGES))
    parser.add_argument("--batch-norm", default="fused", help="comma-separated: " + ",".join(BATCH_NORMS))
    add_step_options(parser)


def run(args, command=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kernelzoo.zoo.precision import PRECISIONS

    networks = listed(args.networks, NETWORKS, "--networks")
    precisions = reference_first(listed(args.precisions, PRECISIONS, "--precisions"), "float32")
    stages = listed(args.stages, STAGES, "--stages")
    batch_norms = reference_first(listed(args.batch_norm, BATCH_NORMS, "--batch-norm"), "keras")
    top = nonnegative_int(args.profile, "--profile")
    print(environment("kernelzoo bench sc", args.threads, args.batch_size, args.steps), flush=True)
    print(f"{'network':8s} {'stage':10s} {'batch norm':10s} {'precision':15s} {'ms/step':>9s} {'images/s':>9s} "
          f"{'vs float32':>10s} {'vs keras':>8s} {'s/epoch':>9s}  (epoch images)", flush=True)
    for network in networks:
        for stage in stages:
            keras_ms = {}
            for batch_norm in batch_norms:
                base = None
                for precision in precisions:
                    result = measure(network, precision, stage, args.batch_size, args.steps, args.warmup,
                                     profile=top > 0, batch_norm=batch_norm)
                    base = result["ms"] if precision == "float32" else base
                    if batch_norm == "keras":
                        keras_ms[precision] = result["ms"]
                    ratio = f"{base / result['ms']:.2f}x" if base else "-"
                    vs_keras = (f"{keras_ms[precision] / result['ms']:.2f}x"
                                if batch_norm != "keras" and precision in keras_ms else "-")
                    images = EPOCH_IMAGES[network][stage]
                    print(f"{network:8s} {stage:10s} {batch_norm:10s} {precision:15s} {result['ms']:9.1f} "
                          f"{result['images_per_s']:9.1f} {ratio:>10s} {vs_keras:>8s} "
                          f"{images / result['images_per_s']:9.0f}  ({images:,})", flush=True)
                    print_profile(result, top)
    return 0


def main(argv=None):
    return standalone("sc", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
