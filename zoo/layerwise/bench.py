"""How long each stage of a layerwise preset takes at its full size, on this machine.

    kernelzoo bench layerwise layerwise_cifar10_fc [--images 256] [--batch-size 128]

Times every stage on random 0-255 images (the cost does not depend on the pixels) and extrapolates to
the preset's run: the training set of `--train` images (50,000; 40,000 with the paper's 10,000
held out), `--test` test images, the preset's k-means patches N, block and classifier epochs.
- k-means of block i: the patch sampling (the blocks before it, forward on every training image: with
  N <= the training images a run takes about one patch per image, the gather is negligible), the
  greedy k-means++ seeding (timed on 100 seeds of the full N rows: every seed costs the same) and
  one Lloyd step with all k_i centroids (times the preset's `kmeans_iterations`, an upper bound);
- block i's epoch: a training step of its two-layer subnet (the frozen blocks before it run forward);
- the features: the whole network forward on the training (and held-out) images, once;
- the classifier's epoch: a training step of the head alone on cached features;
- the test: the whole network forward on the test images.
"""
import time

import keras
import numpy as np

from kernelzoo.ops.checks import positive_int
from kernelzoo.zoo import registry
from kernelzoo.zoo.frozen_features import feature_extractor
from kernelzoo.zoo.ckn.kmeans import _assign, _one_hot, _seeds, _unit_rows
from kernelzoo.zoo.layerwise import algorithm


def _timed(function, repeat):
    """Seconds per call of `function` (after one warm-up call)."""
    function()
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - started) / repeat


def bench(name, images=256, batch_size=128, train=50_000, test=10_000, steps=3, seed=0, verbose=True):
    """{stage: seconds} extrapolated to the full run of preset `name` (module docstring)."""
    preset = registry.info(name)
    recipe = registry.recipe(preset)
    if not hasattr(recipe, "stages"):
        raise ValueError(f"name: {name!r} trains with {type(recipe).__name__} (the Keras loop, no stages); time it "
                         "with `kernelzoo train NAME --limit-train N --epochs 3` (its card)")
    hp = recipe.hyperparameters(preset)
    images, batch_size = positive_int(images, "images"), positive_int(batch_size, "batch_size")
    keras.utils.set_random_seed(seed)
    model = recipe.build(preset, None)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(max(images, batch_size),) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], size=len(x))
    stages = recipe.stages(model, hp)
    block_epochs = {stage.block: stage.end - stage.start for stage in stages if stage.block is not None}
    classifier_epochs = stages[-1].end - stages[-1].start
    steps_per_epoch = -(-train // batch_size)
    out, notes = {}, {}
    for index in range(1, algorithm.block_count(model) + 1):
        layer = algorithm.block_layer(model, index, "cluster")
        feed = keras.Model(model.input, layer.input)
        sampling = _timed(lambda: feed.predict_on_batch(x[:batch_size]), steps) / batch_size * train
        rows = algorithm.sample_patches(model, index, x[:images], hp["kmeans_patches"], seed=seed)
        unit = _unit_rows(rows)
        if len(unit) < hp["kmeans_patches"]:   # fewer positions than patches wanted: repeat (same cost per row)
            unit = np.resize(unit, (hp["kmeans_patches"], unit.shape[1]))
        candidates = 2 + int(np.log(layer.filters))
        started = time.perf_counter()
        _seeds(unit, 101, "k-means++", np.random.default_rng(seed), False, candidates)
        seeding = (time.perf_counter() - started) / 100 * (layer.filters - 1)
        centroids = unit[rng.choice(len(unit), layer.filters, replace=False)]

        def lloyd():
            _, labels = _assign(unit, centroids)
            return np.asarray(_one_hot(labels, layer.filters) @ unit)

        lloyd_step = _timed(lloyd, 1)
        layer.set_centroids(centroids)
        out[f"block {index}: patch sampling ({train:,} images)"] = sampling
        out[f"block {index}: k-means++ seeding ({layer.filters:,} seeds, {candidates} candidates)"] = seeding
        out[f"block {index}: Lloyd, {hp['kmeans_iterations']} steps at most"] = lloyd_step * hp["kmeans_iterations"]
        notes[f"block {index}"] = {"rows": len(unit), "dims": int(unit.shape[1]), "lloyd_step_s": lloyd_step}
        if index in block_epochs:
            trainer = algorithm.block_trainer(model, index, model.output_shape[-1], seed=seed)
            recipe.compile(trainer, recipe.stage_hyperparameters(hp, stages[[s.block for s in stages].index(index)]))
            step = _timed(lambda: trainer.train_on_batch(x[:batch_size], y[:batch_size]), steps)
            out[f"block {index}: {block_epochs[index]} epochs of {steps_per_epoch} steps"] = (
                step * steps_per_epoch * block_epochs[index])
            notes[f"block {index}"]["train_step_s"] = step
    extractor = feature_extractor(model)
    forward = _timed(lambda: extractor.predict_on_batch(x[:batch_size]), steps) / batch_size
    out[f"features: the network forward on {train:,} images"] = forward * train
    algorithm.release(model)
    classifier = algorithm.classifier_trainer(model)
    recipe.compile(classifier, recipe.stage_hyperparameters(hp, stages[-1]))
    features = rng.normal(size=(batch_size,) + tuple(classifier.input_shape[1:])).astype("float32")
    step = _timed(lambda: classifier.train_on_batch(features, y[:batch_size]), max(steps, 20))
    out[f"classifier: {classifier_epochs} epochs of {steps_per_epoch} steps"] = (step * steps_per_epoch
                                                                                 * classifier_epochs)
    out[f"test: the network forward on {test:,} images"] = forward * test
    notes.update(forward_per_image_s=forward, classifier_step_s=step, params=int(model.count_params()))
    if verbose:
        print(f"{name}: {notes['params']:,} parameters; batch {batch_size}; timed on {images} images")
        for stage, seconds in out.items():
            print(f"  {stage:70s} {_duration(seconds):>10s}")
        print(f"  {'total':70s} {_duration(sum(out.values())):>10s}")
    return out, notes


def _duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def add_arguments(parser, command=None):
    parser.description = "Each stage's time of a layerwise preset, extrapolated to its full run."
    parser.add_argument("what", choices=["layerwise"], help="what to benchmark")
    parser.add_argument("name", help="a layerwise preset, e.g. layerwise_cifar10_fc")
    parser.add_argument("--images", type=int, default=256, help="images the per-image costs are timed on")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--train", type=int, default=50_000, help="training images of the run (40,000 with "
                                                                   "--holdout 10000)")
    parser.add_argument("--test", type=int, default=10_000, help="test images")


def run(args, command=None):
    batch = args.batch_size or registry.recipe(args.name).hyperparameters(registry.info(args.name))["batch_size"]
    bench(args.name, images=args.images, batch_size=batch, train=args.train, test=args.test)
    return 0
