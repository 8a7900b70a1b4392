"""Training CLI for the kernelNet models.

    python -m kernelzoo.zoo.kernelnet.train movielens --split u1 --out runs/ml100k_u1
    python -m kernelzoo.zoo.kernelnet.train movielens --split random --seed 0 --out ...
    python -m kernelzoo.zoo.kernelnet.train mnist --prior --epochs 10 --out runs/mnist
    python -m kernelzoo.zoo.kernelnet.train embedding --objective classifier --out ...

Each run writes OUT/model.keras (checkpointed during training), OUT/log.jsonl
and OUT/result.json with the measured figures, time and settings.
"""
import argparse
import json
import os
import platform
import sys
import time


def _common(parser):
    parser.add_argument("--data-dir", default=None,
                        help="local data folder (default: $KERNELZOO_DATA_DIR)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: all)")
    parser.add_argument("--seed", type=int, default=0)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m kernelzoo.zoo.kernelnet.train",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="model", required=True)
    ml = sub.add_parser("movielens", help="ML-100K item autoencoder (Sec. 3.5)")
    _common(ml)
    ml.add_argument("--dataset", default="ml-100k",
                    help="ml-100k (local copy) or a tfds name such as movielens/1m-ratings "
                         "(random split only)")
    ml.add_argument("--split", default="u1",
                    help="u1..u5 (canonical 80/20) or random (--test-fraction, --seed)")
    ml.add_argument("--test-fraction", type=float, default=0.1)
    ml.add_argument("--variant", default="sparse_fc", choices=("sparse_fc", "kernel"))
    ml.add_argument("--lambda-2", type=float, default=20.0)
    ml.add_argument("--lambda-0", type=float, default=0.006)
    ml.add_argument("--location-stddev", type=float, default=1e-3,
                    help="std of the initial sparse_fc locations")
    ml.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"))
    ml.add_argument("--maxiter", type=int, default=500,
                    help="L-BFGS-B iterations (or Adam steps)")
    ml.add_argument("--every", type=int, default=25, help="log/checkpoint period")
    ml.add_argument("--val-fraction", type=float, default=0.05,
                    help="training ratings held out to pick the best checkpoint "
                         "(early stopping; 0: keep the last iterate)")
    ml.add_argument("--patience", type=int, default=4,
                    help="stop after this many checks without a better validation RMSE")
    ml.add_argument("--learning-rate", type=float, default=1e-3, help="Adam only")
    from kernelzoo.zoo.kernelnet import mnist_train
    mnist_train.add_arguments(sub.add_parser("mnist", help="MNIST 2D-grid kernelNet (Fig. 4)"),
                              _common)
    mnist_train.add_embedding_arguments(
        sub.add_parser("embedding", help="MNIST 2D embedding network (Sec. 3.3)"), _common)
    return parser


def _setup(args):
    os.makedirs(args.out, exist_ok=True)
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def hardware():
    """A short description of the machine (for the cards)."""
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


class RunLog:
    """Appends JSON lines to OUT/log.jsonl and echoes them."""

    def __init__(self, out):
        self.path = os.path.join(out, "log.jsonl")
        self.start = time.time()

    def __call__(self, **record):
        record["seconds"] = round(time.time() - self.start, 1)
        line = json.dumps(record)
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
        return record


def train_movielens(args):
    import keras
    import numpy as np

    from kernelzoo.zoo.data import (load_ml100k, load_ml100k_fold, load_tfds_ratings,
                                    random_split, rating_matrix)
    from kernelzoo.zoo.kernelnet import movielens as ml
    from kernelzoo.zoo.kernelnet.optimize import fit_adam, fit_lbfgs

    if args.dataset != "ml-100k":
        if args.split != "random":
            raise ValueError(f"--dataset {args.dataset} supports only --split random")
        data = load_tfds_ratings(args.dataset, data_dir=args.data_dir)
        train, test = random_split(data, args.test_fraction, args.seed)
    elif args.split == "random":
        train, test = random_split(load_ml100k(args.data_dir), args.test_fraction, args.seed)
    elif args.split in ("u1", "u2", "u3", "u4", "u5"):
        train, test = load_ml100k_fold(int(args.split[1]), args.data_dir)
    else:
        raise ValueError(f"--split must be u1..u5 or random, got {args.split!r}")
    fit = val = None
    if args.val_fraction:
        fit, val = random_split(train, args.val_fraction, seed=args.seed + 1000)
    matrix, mask = rating_matrix(fit or train)
    model = ml.kernelnet_movielens(train["n_users"], args.variant, lambda_2=args.lambda_2,
                                   lambda_0=args.lambda_0,
                                   location_stddev=args.location_stddev, seed=args.seed)
    x, m = np.asarray(matrix), np.asarray(mask)
    log = RunLog(args.out)
    path = os.path.join(args.out, "model.keras")
    best = {"val_rmse": float("inf"), "step": 0}

    def loss_fn(model):
        return ml.masked_squared_error(x, m, model(x, training=True))

    def checkpoint(step, loss):
        pred = ml.predict_ratings(model, matrix)
        record = {"step": step, "loss": loss, "train_rmse": ml.rmse(pred, fit or train)}
        if val is not None:
            record["val_rmse"] = ml.rmse(pred, val)
        if val is None or record["val_rmse"] < best["val_rmse"]:
            best.update(record)
            model.save(path)
        log(**record, test_rmse=ml.rmse(pred, test))
        if val is not None and step - best["step"] >= args.patience * args.every:
            raise StopIteration  # scipy ends L-BFGS-B cleanly

    if args.optimizer == "lbfgs":
        result = fit_lbfgs(model, loss_fn, maxiter=args.maxiter, every=args.every,
                           callback=checkpoint)
        steps = int(result.nit)
        if steps % args.every:
            try:
                checkpoint(steps, float(result.fun))
            except StopIteration:
                pass
    else:
        steps = 0
        while steps < args.maxiter:
            chunk = min(args.every, args.maxiter - steps)
            loss = fit_adam(model, loss_fn, steps=chunk, learning_rate=args.learning_rate)
            steps += chunk
            try:
                checkpoint(steps, loss)
            except StopIteration:
                break
    model = keras.models.load_model(path)
    pred = ml.predict_ratings(model, rating_matrix(train)[0])  # all training ratings in
    final = log(selected_step=best["step"], train_rmse=ml.rmse(pred, train),
                test_rmse=ml.rmse(pred, test))
    result = {"model": "kernelnet_movielens", "dataset": args.dataset,
              "variant": args.variant, "split": args.split,
              "seed": args.seed, "test_fraction": args.test_fraction if args.split == "random"
              else 0.2, "optimizer": args.optimizer, "iterations": steps,
              "selected_iteration": best["step"], "val_fraction": args.val_fraction,
              "val_rmse": best.get("val_rmse"),
              "lambda_2": args.lambda_2, "lambda_0": args.lambda_0,
              "location_stddev": args.location_stddev,
              "test_rmse": final["test_rmse"], "train_rmse": final["train_rmse"],
              "seconds": final["seconds"], "hardware": hardware(),
              "command": "python -m kernelzoo.zoo.kernelnet.train " + " ".join(sys.argv[1:])}
    with open(os.path.join(args.out, "result.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    return result


def main(argv=None):
    args = build_parser().parse_args(argv)
    _setup(args)
    if args.model == "movielens":
        train_movielens(args)
    else:
        from kernelzoo.zoo.kernelnet import mnist_train
        fit = mnist_train.train if args.model == "mnist" else mnist_train.train_embedding
        fit(args, RunLog(args.out), hardware())
    return 0


if __name__ == "__main__":
    sys.exit(main())
