"""Adam training on MNIST for `train.py`: the Fig. 4 classifier and the Sec. 3.3 embedding net."""
import json
import os
import sys

import keras
import numpy as np


def add_arguments(parser, common):
    common(parser)
    parser.add_argument("--prior", action="store_true",
                        help="fixed pixel/grid locations (Table 1 'yes'); default learned")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--grids", type=int, nargs="+", default=[16, 16],
                        help="parallel grids per hidden layer")
    parser.add_argument("--grid-sides", type=int, nargs="+", default=[14, 7],
                        help="side of each layer's square grids")
    parser.add_argument("--gammas", type=float, nargs="+", default=[100.0, 25.0],
                        help="RBF gamma per layer")
    parser.add_argument("--train-limit", type=int, default=0,
                        help="use only the first N training images (0: all)")


def add_embedding_arguments(parser, common):
    common(parser)
    parser.add_argument("--objective", default="classifier",
                        choices=("classifier", "autoencoder"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)


class _Checkpoint(keras.callbacks.Callback):
    """Saves OUT/model.keras and logs test accuracy after every epoch."""

    def __init__(self, path, x_test, y_test, log):
        super().__init__()
        self.path, self.x_test, self.y_test, self.log = path, x_test, y_test, log

    def on_epoch_end(self, epoch, logs=None):
        self.model.save(self.path)
        scores = self.model.evaluate(self.x_test, self.y_test, batch_size=1000, verbose=0,
                                     return_dict=True)
        self.log(epoch=epoch + 1, **{k: float(v) for k, v in logs.items()},
                 **{f"test_{k}": float(v) for k, v in scores.items()})


def train(args, log, hardware):
    from kernelzoo.zoo.data import load_mnist
    from kernelzoo.zoo.kernelnet.mnist import kernelnet_mnist, preprocess

    (x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir)
    if args.train_limit:
        x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]
    x_train, x_test = preprocess(x_train), preprocess(x_test)
    model = kernelnet_mnist(prior=args.prior, grids=args.grids, grid_sides=args.grid_sides,
                            gammas=args.gammas, seed=args.seed)
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    path = os.path.join(args.out, "model.keras")
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2,
              callbacks=[_Checkpoint(path, x_test, y_test, log)])
    _, acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    final = log(final=True, test_accuracy=float(acc))
    result = {"model": model.name, "prior": args.prior, "epochs": args.epochs,
              "grids": args.grids, "grid_sides": args.grid_sides, "gammas": args.gammas,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "train_images": len(x_train), "test_acc": float(acc),
              "seconds": final["seconds"], "hardware": hardware,
              "command": "python -m kernelzoo.zoo.kernelnet.train " + " ".join(sys.argv[1:])}
    with open(os.path.join(args.out, "result.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    return result


def train_embedding(args, log, hardware):
    from kernelzoo.zoo.data import load_mnist
    from kernelzoo.zoo.kernelnet.embedding import fit_embedding, kernelnet_embedding
    from kernelzoo.zoo.kernelnet.mnist import preprocess

    (x_train, y_train), (x_test, y_test) = load_mnist(args.data_dir)
    x_train, x_test = preprocess(x_train), preprocess(x_test)
    model = kernelnet_embedding(args.objective, seed=args.seed)
    target = x_test if args.objective == "autoencoder" else y_test
    path = os.path.join(args.out, "model.keras")
    fit_embedding(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                  learning_rate=args.learning_rate,
                  callbacks=[_Checkpoint(path, x_test, target, log)])
    scores = model.evaluate(x_test, target, batch_size=1000, verbose=0, return_dict=True)
    final = log(final=True, **{f"test_{k}": float(v) for k, v in scores.items()})
    result = {"model": model.name, "objective": args.objective, "epochs": args.epochs,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              **{f"test_{k}": float(v) for k, v in scores.items()},
              "seconds": final["seconds"], "hardware": hardware,
              "command": "python -m kernelzoo.zoo.kernelnet.train " + " ".join(sys.argv[1:])}
    with open(os.path.join(args.out, "result.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    return result
