"""`kernelzoo viz embedding NAME` and `kernelzoo viz dimensionality`: the kernelNet figures.

embedding: loads the pretrained network NAME from the registry (or trains it with --train, through
the family recipe, into --run-dir), embeds test digits with the center of mass of Eq. 10 and writes
a scatter plot coloured by class; --walk also writes the latent-space walk of Fig. 6 (decoded
Gaussian bumps; autoencoder networks only).
dimensionality: the resumable sweep of Fig. 3 (kernelzoo.zoo.kernelnet.dimensionality) into --out:
its JSON results and PNG.
"""
import os

import numpy as np

from kernelzoo.ops.checks import check_choice, float_in_range, int_in_range, positive_int
from kernelzoo.zoo.plotting import figure_path, pyplot, save_figure


def add_arguments(parser, command):
    check_choice("command", command, ("viz",))
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT", help="embedding or dimensionality")
    _embedding_arguments(what.add_parser("embedding", help="the 2D embedding of MNIST test digits (Fig. 5/6)"))
    _dimensionality_arguments(what.add_parser(
        "dimensionality", help="accuracy of dot / polynomial / RBF kernelNets against d (Fig. 3)"))


def _embedding_arguments(parser):
    parser.add_argument("name", help="registry name, e.g. kernelnet_embedding_mnist")
    parser.add_argument("--out", default="embedding.png", help="output PNG")
    parser.add_argument("--data-dir", default=None,
                        help="local MNIST folder (default: $KERNELZOO_DATA_DIR, else tfds)")
    parser.add_argument("--samples", type=int, default=5000, help="test digits to plot")
    parser.add_argument("--train", action="store_true",
                        help="train a fresh network instead of loading the weights")
    parser.add_argument("--epochs", type=int, default=None, help="with --train (default: the recipe's)")
    parser.add_argument("--run-dir", default=None, help="with --train: keep the run folder here")
    parser.add_argument("--walk", default=None, metavar="PNG",
                        help="also write the latent walk (autoencoders)")
    parser.add_argument("--window", type=float, nargs=4, default=(0.25, 0.75, 0.25, 0.75),
                        metavar=("X0", "X1", "Y0", "Y1"), help="walk window in [0, 1]^2")
    parser.add_argument("--steps", type=int, default=12, help="walk grid steps per side")


def _dimensionality_arguments(parser):
    from kernelzoo.zoo.kernelnet.dimensionality import DEFAULTS, KERNELS

    parser.add_argument("--out", default="dimensionality", help="folder of the results JSON and the PNG")
    parser.add_argument("--data-dir", default=None, help="local MNIST folder (default: $KERNELZOO_DATA_DIR, else tfds)")
    parser.add_argument("--kernels", nargs="+", default=DEFAULTS["kernels"], metavar="KERNEL",
                        help=f"any of {', '.join(KERNELS)}")
    parser.add_argument("--dims", nargs="+", type=int, default=DEFAULTS["dims"], metavar="D",
                        help="dimensionalities d of the locations")
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="seeds per setting")
    parser.add_argument("--lrs", nargs="+", type=float, default=DEFAULTS["lrs"], metavar="LR",
                        help="Adam learning rates to choose from")
    parser.add_argument("--l2s", nargs="+", type=float, default=DEFAULTS["l2s"], metavar="L2",
                        help="L2 penalties to choose from")
    parser.add_argument("--train-size", type=int, default=DEFAULTS["train_size"], help="training images")
    parser.add_argument("--holdout", type=int, default=DEFAULTS["holdout"],
                        help="other training images, held out to choose lr and l2")
    parser.add_argument("--hidden", type=int, default=DEFAULTS["hidden"], help="units of the kernel layer")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def plot_embedding(points, labels, path, title, window=None):
    """Scatter of (N, 2) points coloured by digit class; `window` (x0, x1, y0, y1): the walk's, dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    scatter = ax.scatter(points[:, 1], points[:, 0], c=labels, cmap="tab10", s=3,
                         vmin=-0.5, vmax=9.5)
    fig.colorbar(scatter, ax=ax, ticks=range(10), fraction=0.046, label="digit")
    if window is not None:
        x0, x1, y0, y1 = window
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linestyle="--", color="black"))
    ax.set(xlim=(0, 1), ylim=(1, 0), aspect="equal", title=title,
           xlabel="grid column (center of mass)", ylabel="grid row (center of mass)")
    save_figure(fig, path)


def plot_walk(images, steps, path):
    """steps x steps mosaic of decoded images."""
    plt = pyplot()
    side = images.shape[-1]
    mosaic = images.reshape(steps, steps, side, side).transpose(0, 2, 1, 3)
    plt.imsave(path, mosaic.reshape(steps * side, steps * side), cmap="gray_r")


def run(args, command):
    check_choice("command", command, ("viz",))
    return {"embedding": _embedding, "dimensionality": _dimensionality}[args.what](args)


def _dimensionality(args):
    from kernelzoo.zoo.kernelnet import dimensionality

    data = dimensionality.mnist_data(args.data_dir, args.train_size, args.holdout)
    results = dimensionality.sweep(data, args.out, args.kernels, args.dims, args.repeats, args.lrs, args.l2s,
                                   args.hidden, args.epochs, args.batch_size, verbose=not args.quiet)
    for row in results["summary"]:
        print(f"{row['kernel']:4s} d={row['dim']:<3d} test {100 * row['test_accuracy']:.2f} +- "
              f"{100 * row['test_stderr']:.2f} % (held-out {100 * row['val_accuracy']:.2f} %; lr {row['lr']:g}, "
              f"l2 {row['l2']:g})")
    print(f"wrote {dimensionality.plot(results, os.path.join(args.out, dimensionality.FIGURE_FILE))}")
    return 0


def _embedding(args):
    from kernelzoo.zoo import registry
    from kernelzoo.zoo.data import load_mnist
    from kernelzoo.zoo.kernelnet import embedding

    positive_int(args.samples, "--samples")
    int_in_range(args.steps, "--steps", 2)
    figure_path(args.out, "--out")
    if args.walk:
        figure_path(args.walk, "--walk")
    window = _window(args.window)
    _training_flags(args)
    preset = registry.info(args.name)
    if not preset.builder.endswith("kernelnet_embedding"):
        raise ValueError(f"name must be an embedding network, got {args.name!r}")
    model = _train(preset, args) if args.train else registry.load(args.name)
    if args.walk and not model.name.endswith("autoencoder"):
        raise ValueError(f"--walk needs an autoencoder network (e.g. kernelnet_embedding_mnist_ae), got {args.name!r}")
    _, (x_test, y_test) = load_mnist(args.data_dir)
    x_test, y_test = x_test[:args.samples], y_test[:args.samples]
    points = embedding.embed(model, x_test)
    plot_embedding(points, y_test, args.out, f"{args.name}: {len(points)} MNIST test digits (Eq. 10)",
                   window=window if args.walk else None)
    print(f"wrote {args.out}; " + ", ".join(f"{key} {value:.4f}" for key, value in
                                             embedding.spread(points, y_test).items()))
    if args.walk:
        x0, x1, y0, y1 = window
        rows, cols = np.meshgrid(np.linspace(y0, y1, args.steps),
                                 np.linspace(x0, x1, args.steps), indexing="ij")
        centers = np.stack([rows.ravel(), cols.ravel()], axis=1)
        plot_walk(embedding.latent_walk(model, centers), args.steps, args.walk)
        print(f"wrote {args.walk}")
    return 0


def _window(window):
    """--window's (x0, x1, y0, y1): a box of the embedding's [0, 1]^2 with x0 < x1 and y0 < y1 (the walk's grid)."""
    x0, x1, y0, y1 = (float_in_range(value, "--window", 0.0, 1.0) for value in window)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"`--window` must be X0 X1 Y0 Y1 with X0 < X1 and Y0 < Y1, got {' '.join(map(str, window))}")
    return x0, x1, y0, y1


def _training_flags(args):
    """Refuses --epochs and --run-dir without --train: they set how a fresh network trains, and nothing else."""
    given = [flag for flag, value in (("--epochs", args.epochs), ("--run-dir", args.run_dir)) if value is not None]
    if given and not args.train:
        raise ValueError(f"{' and '.join(given)} only apply with --train (the pretrained weights are loaded "
                         "otherwise)")


def _train(preset, args):
    """A freshly trained network (the preset's recipe, --epochs) from a run folder (--run-dir or a temporary one)."""
    import tempfile

    from kernelzoo.zoo import registry

    recipe = registry.recipe(preset)
    data = recipe.load_data(preset, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="kernelzoo-viz-") as scratch:
        result = recipe.train(preset, data, args.run_dir or scratch,
                              hp=recipe.hyperparameters(preset, epochs=args.epochs), verbose=2, tensorboard=False)
    return result["model"]
