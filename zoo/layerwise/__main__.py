"""`python -m kernelzoo.zoo.layerwise samples --out digits.png`: synthetic digits of paper 003 Sec. 3.2
(our reconstruction, kernelzoo.zoo.layerwise.generative.synthetic_digits) drawn to a PNG."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernelzoo.zoo.layerwise", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("samples",), help="what to draw")
    parser.add_argument("--out", default="synthetic_digits.png", help="output PNG")
    parser.add_argument("--count", type=int, default=24, help="examples in the grid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from kernelzoo.zoo.layerwise.generative import synthetic_digits
    from kernelzoo.zoo.layerwise.viz import plot_samples

    try:
        print(f"wrote {plot_samples(synthetic_digits(), args.out, count=args.count, seed=args.seed)}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
