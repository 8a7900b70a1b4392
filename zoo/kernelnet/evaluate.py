"""Re-measure a shipped kernelNet model's card figure on the local data.

    python -m kernelzoo.zoo.kernelnet.evaluate kernelnet_movielens_100k --data-dir DIR
    python -m kernelzoo.zoo.kernelnet.evaluate kernelnet_mnist_prior --data-dir DIR

MovieLens: RMSE on the held-out ratings of the split the weights were trained
on (predictions from all its training ratings, clipped to [1, 5]); MNIST:
accuracy on the 10,000 test digits.
"""
import argparse
import sys
from fractions import Fraction


def evaluate(name, data_dir=None, model=None):
    """{metric: value} for registry model `name` (loaded unless `model` is given)."""
    from kernelzoo.zoo import registry

    entry = registry.info(name)
    model = registry.load(name) if model is None else model
    evaluation = entry.get("evaluation")
    if evaluation is None:
        raise ValueError(f"name={name!r} has no evaluation protocol")
    if evaluation["data"] == "ml100k":
        from kernelzoo.zoo.data import load_ml100k_fold, rating_matrix
        from kernelzoo.zoo.kernelnet import movielens as ml

        train, test = load_ml100k_fold(evaluation["fold"], data_dir)
        pred = ml.predict_ratings(model, rating_matrix(train)[0])
        return {"test_rmse": ml.rmse(pred, test)}
    from kernelzoo.zoo.data import load_mnist
    from kernelzoo.zoo.kernelnet.mnist import preprocess

    _, (x_test, y_test) = load_mnist(data_dir)
    probs = model.predict(preprocess(x_test), batch_size=1000, verbose=0)
    return {"test_accuracy": float((probs.argmax(-1) == y_test).mean())}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernelzoo.zoo.kernelnet.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cost", type=lambda text: float(Fraction(text)), default=None,
                        metavar="DENSITY",
                        help="print parameters and expected MACs (Table 4) for this "
                             "input density instead (e.g. 10/943: ten rated users)")
    args = parser.parse_args(argv)
    if args.cost is not None:
        from kernelzoo.layers.cost import cost_report
        from kernelzoo.zoo import registry

        report = cost_report(registry.load(args.name), args.cost)
        print(f"{args.name} params {report['params']} macs {report['macs']:.0f}")
        return 0
    for key, value in evaluate(args.name, args.data_dir).items():
        print(f"{args.name} {key} {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
