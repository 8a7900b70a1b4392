"""`python -m kernelzoo.zoo.layerwise samples --out digits.png`: synthetic digits of paper 003 Sec. 3.2
(our reconstruction, kernelzoo.zoo.layerwise.generative.synthetic_digits) drawn to a PNG;
`python -m kernelzoo.zoo.layerwise bench NAME`: each stage's time at the preset's full size
(kernelzoo.zoo.layerwise.bench)."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernelzoo.zoo.layerwise", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    samples = sub.add_parser("samples", help="draw synthetic digits to a PNG")
    samples.add_argument("--out", default="synthetic_digits.png", help="output PNG")
    samples.add_argument("--count", type=int, default=24, help="examples in the grid")
    samples.add_argument("--seed", type=int, default=0)
    timing = sub.add_parser("bench", help="time each stage of a preset and extrapolate to its full run")
    timing.add_argument("name", help="a layerwise preset, e.g. layerwise_cifar10_fc")
    timing.add_argument("--images", type=int, default=256, help="images the per-image costs are timed on")
    timing.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    timing.add_argument("--train", type=int, default=50_000, help="training images of the run (40,000 with "
                                                                 "--holdout 10000)")
    timing.add_argument("--test", type=int, default=10_000, help="test images")
    args = parser.parse_args(argv)
    from kernelzoo.cli import quiet_tensorflow
    quiet_tensorflow()
    try:
        if args.what == "samples":
            from kernelzoo.zoo.layerwise.generative import synthetic_digits
            from kernelzoo.zoo.layerwise.viz import plot_samples
            print(f"wrote {plot_samples(synthetic_digits(), args.out, count=args.count, seed=args.seed)}")
        else:
            from kernelzoo.zoo import registry
            from kernelzoo.zoo.layerwise.bench import bench
            batch = args.batch_size or registry.recipe(args.name).hyperparameters(
                registry.info(args.name))["batch_size"]
            bench(args.name, images=args.images, batch_size=batch, train=args.train, test=args.test)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
