"""Re-measure a shipped SimNet-zoo model's card figure: top-1 accuracy on the test split.

    python -m kernelzoo.zoo.simnet.evaluate simnet_cifar10_l2 --data-dir ../shared/data
"""
import argparse


def evaluate(name, data_dir=None, model=None, batch_size=256):
    """{"test_accuracy", "test_loss"} of registry model `name` (loaded unless `model` is given)."""
    from kernelzoo.zoo import registry, training
    from kernelzoo.zoo.data.images import load_images

    entry = registry.info(name)
    model = registry.load(name) if model is None else model
    metrics = training.evaluate(model, load_images(entry.get("dataset", "cifar10"), data_dir).test,
                                batch_size=batch_size)
    return {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"]}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernelzoo.zoo.simnet.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    for key, value in evaluate(args.name, args.data_dir).items():
        print(f"{args.name} {key} {value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
