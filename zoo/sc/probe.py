"""`kernelzoo probe NAME [MODEL.keras ...]`: what a spatial contrasting network holds at its SC layer, measured on
held-out training images: a linear probe of the labels, and how well the SC task itself is solved, beside what the
raw pixels' colour statistics give.

SC pre-training can only help the fine-tuning if the criterion teaches features that carry the labels; a task that
colour statistics already solve may teach little. For each model (`--untrained`: the preset's freshly initialised
network; then each .keras file given, a run's model or an SC-stage checkpoint) at `--layer` (default the recipe's
SC layer), on the preset's data protocol with `--holdout` images carved exactly as `kernelzoo train --holdout`
carves them (same seed: same images, none of them labelled or SC-trained on):

- linear probe: the layer's map average-pooled over a g x g grid of regions (`--grids`), an L2-regularised
  multinomial logistic regression (kernelzoo.zoo.linear_classifier) fitted on the labelled images, its L2 chosen
  from L2_GRID on a fifth of them held out, then refitted on all; its accuracy on the held-out images.
- SC task: `--batches` batches of the recipe's SC batch size from the held-out images, patches of the recipe's
  size in cells (with image-crop sampling, the cells one crop covers; `--patch-size`), two patches per image drawn
  with the criterion's own map sampling (kernelzoo.zoo.sc.loss);
  the fraction of first patches whose nearest second patch (the recipe's distance) comes from the same image.
  Chance: 1 / batch size.
- the row "colour statistics" plays the same SC task on the raw pixels, a patch's feature being its pixels'
  per-channel mean and standard deviation, the patch covering the pixels under the SC patch's cells.
The networks run in inference mode (batch normalisation with its moving statistics).
"""
import os

import numpy as np
import tensorflow as tf

from kernelzoo.ops.checks import int_in_range, nonnegative_int, positive_int, positive_ints
from kernelzoo.progress import progress
from kernelzoo.zoo.data import holdout_split
from kernelzoo.zoo.frozen_features import best_l2
from kernelzoo.zoo.linear_classifier import accuracy, fit_logistic
from kernelzoo.zoo.sc.loss import pairwise_distances, patch_features, positions_grid, sample_patch_positions

L2_GRID = (1e-1, 1e-2, 1e-3, 1e-4)
COLOUR = "colour statistics"


def region_features(maps_of, images, grids=(1,), batch_size=250):
    """[(N, g * g * C) float32 for g in `grids`]: the (N, H, W, C) maps `maps_of(images)` averaged over a g x g
    partition of the map (regions as equal as the map allows; g 1: global average pooling). The maps are computed
    once, `batch_size` images at a time, for all the grids."""
    grids = positive_ints(grids, "grids")
    out = [[] for _ in grids]
    for start in range(0, len(images), positive_int(batch_size, "batch_size")):
        maps = np.asarray(maps_of(np.asarray(images[start:start + batch_size])), "float32")
        for pooled, grid in zip(out, grids):
            if grid > min(maps.shape[1:3]):
                raise ValueError(f"`grids`: {grid} exceeds the {maps.shape[1]}x{maps.shape[2]} feature map")
            rows = np.array_split(np.arange(maps.shape[1]), grid)
            cols = np.array_split(np.arange(maps.shape[2]), grid)
            pooled.append(np.stack([maps[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1].mean(axis=(1, 2))
                                    for r in rows for c in cols], axis=1).reshape(len(maps), -1))
    return [np.concatenate(pooled) for pooled in out]


def probe_accuracy(train, held, num_classes, l2_grid=L2_GRID, seed=0):
    """(held-out accuracy, chosen L2) of a logistic regression on features: `train` and `held` are (features,
    labels), the features standardised with `train`'s column moments (so an L2 means the same whatever their
    scale); the L2 is chosen on a fifth of `train` held out (ties: the smaller L2), then refitted on all of it."""
    (x, y), (xh, yh) = train, held
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6  # the L2 then weighs standardised features' coefficients
    x, xh = (x - mean) / std, (xh - mean) / std
    grid = sorted({float(value) for value in l2_grid}, reverse=True)
    if not grid:
        raise ValueError("`l2_grid` must hold at least one value")
    (rest, _), (inner, _) = holdout_split(np.arange(len(y)), y, max(1, len(y) // 5), seed=seed)
    scores, start = {}, None
    for l2 in grid:
        kernel, bias, _ = fit_logistic(x, y, num_classes, l2, rows=rest, start=start)
        start = (kernel, bias)
        scores[l2] = accuracy(x, y, kernel, bias, rows=inner)
    chosen = best_l2(scores)
    kernel, bias, _ = fit_logistic(x, y, num_classes, chosen, start=start)
    return accuracy(xh, yh, kernel, bias), chosen


def colour_statistics(patches_mean):
    """A patch's per-channel (mean, standard deviation) from the mean of its cells' (x, x^2) channels."""
    mean, square = tf.split(patches_mean, 2, axis=-1)
    return tf.concat([mean, tf.sqrt(tf.maximum(square - tf.square(mean), 0.0))], axis=-1)


def colour_maps(images):
    """(N, H, W, 2C) float32 maps (x, x^2) of 0-255 images scaled to [0, 1], for `colour_statistics`."""
    x = tf.cast(images, tf.float32) / 255.0
    return tf.concat([x, tf.square(x)], axis=-1)


def contrast_accuracy(maps_of, images, patch_size, batch_size=128, batches=20, distance="squared", describe=None,
                      seed=0, verbose=False):
    """The SC task's top-1 accuracy (module docstring): the mean over `batches` batches of `batch_size` images
    (drawn without replacement within a batch, seeded) of the fraction of images i whose first patch's nearest
    second patch is image i's. `maps_of(images)` gives (N, H, W, C) maps; `describe` maps a (N, C) tensor of
    patch means to the patch's feature (default: the means themselves)."""
    images = np.asarray(images)
    batch_size = int_in_range(batch_size, "batch_size", 2, len(images))
    rng = np.random.default_rng(nonnegative_int(seed, "seed"))
    right = []
    for index in progress(range(positive_int(batches, "batches")), label="SC task", verbose=verbose, unit="batch"):
        maps = tf.convert_to_tensor(maps_of(images[np.sort(rng.choice(len(images), batch_size, replace=False))]))
        grid = positions_grid(maps.shape[1:3], patch_size)
        first, second = sample_patch_positions(batch_size, grid, (seed, index))
        features = [patch_features(maps, positions, patch_size) for positions in (first, second)]
        if describe is not None:
            features = [describe(f) for f in features]
        nearest = tf.argmin(pairwise_distances(*features, distance), axis=1, output_type=tf.int32)
        right.append(float(tf.reduce_mean(tf.cast(nearest == tf.range(batch_size), tf.float32))))
    return float(np.mean(right))


def recipe_patch_cells(hp, map_side, image_side):
    """The recipe's SC patch side in cells of the map: `sc_patch_size`, or with sampling="image" (crops of
    `sc_patch_size` pixels) the cells under one crop, at least 1."""
    if hp["sc_sampling"] != "image":
        return hp["sc_patch_size"]
    return max(1, hp["sc_patch_size"] * int(map_side) // int(image_side))


def add_arguments(parser, command=None):
    parser.description = __doc__.split("\n\n")[0].replace("`", "").replace("\n", " ")
    parser.add_argument("name", help="an SC preset (its network, data protocol and SC settings), e.g. sc_cifar10_4k")
    parser.add_argument("models", nargs="*", help=".keras files to probe (run models or SC-stage checkpoints)")
    parser.add_argument("--untrained", action="store_true", help="also probe the preset's freshly initialised network")
    parser.add_argument("--layer", default=None, help="the layer to probe (default the recipe's SC layer)")
    parser.add_argument("--grids", default="1,2", help="comma-separated region grids of the linear probe")
    parser.add_argument("--holdout", type=int, default=5000, help="held-out training images (as train --holdout)")
    parser.add_argument("--batches", type=int, default=20, help="batches of the SC task")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="SC-task patch side in cells (default the recipe's; with image crops the cells of one)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per SC-task batch (default the recipe's "
                                                                      "SC batch size)")
    parser.add_argument("--seed", type=int, default=0, help="the run seed the holdout was carved with")
    parser.add_argument("--data-dir", default=None, help="local dataset root (default $KERNELZOO_DATA_DIR)")
    parser.add_argument("--dataset", default=None, help="dataset name or path (default the preset's)")


def run(args, command=None):
    import keras

    from kernelzoo.zoo import registry
    from kernelzoo.zoo.sc.data import carve_validation
    from kernelzoo.zoo.sc.pretraining import feature_layer
    from kernelzoo.zoo.sc.recipe import SCRecipe

    preset = registry.info(args.name)
    recipe = registry.recipe(preset)
    if not isinstance(recipe, SCRecipe):
        raise ValueError(f"`name`={args.name!r} is not a spatial contrasting preset (family {preset.family!r})")
    missing = [path for path in args.models if not os.path.isfile(path)]
    if missing or not (args.models or args.untrained):
        raise ValueError(f"`models`: no such file {missing}" if missing else "give .keras files or --untrained")
    try:
        grids = positive_ints(tuple(int(g) for g in str(args.grids).split(",") if g.strip()), "--grids")
    except ValueError:
        raise ValueError(f"`--grids` must be comma-separated positive ints, got {args.grids!r}") from None
    hp = recipe.hyperparameters(preset)
    layer = args.layer or hp["sc_layer"]
    batch = args.batch_size or hp["sc_batch_size"]
    patch = None if args.patch_size is None else positive_int(args.patch_size, "--patch-size")
    models = ([("untrained", registry.create(preset.name))] if args.untrained else []) + \
        [(path, keras.models.load_model(path, compile=False)) for path in args.models]
    map_size = feature_layer(models[0][1], layer).output.shape[1:3]  # the models probed share the preset's layers
    patch = patch or recipe_patch_cells(hp, map_size[0], models[0][1].inputs[0].shape[1])
    data = carve_validation(recipe.load_data(preset, args.data_dir, args.dataset, seed=args.seed), args.holdout,
                            args.seed)
    (x, y), (xh, yh) = data.train, data.val
    num_classes = int(max(y.max(), yh.max())) + 1
    print(f"{preset.name}: layer {layer!r}, {len(x):,} labelled images, {len(xh):,} held out; SC task: "
          f"{args.batches} batches of {batch}, {patch}x{patch}-cell patches, {hp['sc_distance']} distance, "
          f"chance {1 / batch:.4f}", flush=True)
    header = "".join(f"{f'probe {g}x{g}':>12s}" for g in grids)
    print(f"{'model':60s}{header}{'SC task':>10s}", flush=True)
    for label, model in models:
        extractor = feature_layer(model, layer)
        maps_of = lambda images: extractor([images], training=False)  # noqa: E731  (inference mode)
        probes = [probe_accuracy((train, y), (held, yh), num_classes, seed=args.seed)[0]
                  for train, held in zip(region_features(maps_of, x, grids), region_features(maps_of, xh, grids))]
        task = contrast_accuracy(maps_of, xh, patch, batch, args.batches,
                                 hp["sc_distance"], seed=args.seed)
        print(f"{label:60s}" + "".join(f"{p:12.4f}" for p in probes) + f"{task:10.4f}", flush=True)
    pixels = tuple(patch * int(i) // int(m) for i, m in zip(xh.shape[1:3], map_size))
    task = contrast_accuracy(colour_maps, xh, pixels, batch, args.batches, hp["sc_distance"],
                             describe=colour_statistics, seed=args.seed)
    print(f"{f'{COLOUR} ({pixels[0]}x{pixels[1]} pixels)':60s}" + " " * 12 * len(grids) + f"{task:10.4f}", flush=True)
    return 0
