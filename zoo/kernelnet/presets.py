"""The kernelNet family's presets (Muller 2018).

`measured` is the figure `kernelzoo eval NAME --data-dir DIR` re-measures from the shipped
weights (never typed in by hand: the tests recompute it from the data): test accuracy, RMSE, or
the autoencoder's mean squared error on pixels / 255. The image models
take raw 0-255 pixels (a saved Rescaling layer divides them by 255).
"""
from kernelzoo.zoo.preset import MNIST_CLASSES, DatasetSpec, Figure, InputSpec, Preset

_MNIST = DatasetSpec("mnist", "DATA/mnist: the four IDX .gz files or mnist.npz", "test")
_MNIST_TEST = "MNIST test, 10,000 images"
_PIXELS = InputSpec((28, 28), "uint8", "grey pixels 0-255 (the /255 scaling is inside the model)")
# The card's runs: Adam, lr 2e-3 with cosine decay to 0, batch 128, 20 epochs (MNIST grids: 32 + 32 grids and
# 20 epochs chosen on 5,000 held-out training images, 0.9868 against 0.9792 for 16 + 16 grids and 8 epochs);
# Adam, lr 1e-3, batch 128, 5 epochs (embedding network); 40 for its autoencoder (chosen on 5,000
# held-out training images: held-out MSE 0.0090 after 20 epochs, 0.0074 after 40, the same spread).
_GRID_RECIPE = {"epochs": 20, "batch_size": 128, "optimizer": "adam", "lr": 2e-3, "schedule": "cosine"}
_EMBEDDING_RECIPE = {"epochs": 5, "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "schedule": "constant"}
_EMBEDDING_AE_RECIPE = dict(_EMBEDDING_RECIPE, epochs=40)


def _grid(name, prior, what, sha256, measured, paper):
    return Preset(
        name=name, family="kernelnet", builder="kernelzoo.zoo.kernelnet.mnist.kernelnet_mnist",
        config={"prior": prior, "grids": (32, 32)},
        description=f"MNIST 2D-RBF grid kernelNet, 32 + 32 grids, {what} (Fig. 4, Table 1)",
        inputs=_PIXELS, task="classification", dataset=_MNIST, class_names=MNIST_CLASSES, recipe=_GRID_RECIPE,
        card="kernelnet_mnist.md", weights=f"{name}.keras", sha256=sha256, measured=Figure(measured, _MNIST_TEST),
        paper=Figure(paper, "Table 1"))


_ML100K = {"n_users": 943, "variant": "sparse_fc", "lambda_2": 40.0, "lambda_0": 0.006}
# lambda_2 = 40 chosen on held-out training ratings of a calibration split (the card's grid).
# Full-batch L-BFGS-B; an epoch is 25 iterations (one validation check); early stopping on 5 % of
# the training ratings, after 2 checks without improvement, at most 40 x 25 = 1000 iterations.
_ML100K_RECIPE = {"optimizer": "lbfgs", "epochs": 40, "iterations_per_epoch": 25, "patience": 2,
                  "val_fraction": 0.05, "lr": 1e-3, "lbfgs_restart": False, "members": 1, "refit": False}
_ML100K_INPUTS = InputSpec((943,), "float32", "one item's ratings by the 943 ML-100K users, 0 = unrated; outputs "
                                              "raw ratings: clip to [1, 5] (movielens.predict_ratings)")
_ML100K_DATA = DatasetSpec("ml-100k", "DATA/ml-100k: u.data and the canonical u1..u5 .base/.test files", "u1")
_ML100K_PAPER = Figure(0.890, "Table 3 (ML-100K, 80/20 random splits)", upper=0.895)

PRESETS = (
    Preset(
        name="kernelnet_movielens_100k", family="kernelnet",
        builder="kernelzoo.zoo.kernelnet.movielens.kernelnet_movielens",
        config=_ML100K, description="item-based sparse-FC kernelNet autoencoder, ML-100K (Sec. 3.5)",
        inputs=_ML100K_INPUTS, task="rating_prediction", dataset=_ML100K_DATA, recipe=_ML100K_RECIPE,
        card="kernelnet_movielens_100k.md", weights="kernelnet_movielens_100k.keras",
        sha256="ff7b0fb54eb700427137b03de05c0ccba20b6626d1c531652c286561366eb69e",
        measured=Figure(0.9071, "ML-100K u1.test (the shipped weights trained on u1.base)"),
        paper=_ML100K_PAPER),
    Preset(
        name="kernelnet_movielens_100k_ensemble3", family="kernelnet",
        builder="kernelzoo.zoo.kernelnet.movielens.kernelnet_movielens", config=_ML100K,
        description="ours, not the paper's: the mean of 3 kernelnet_movielens_100k models (seeds S, S + 10000, "
                    "S + 20000), ML-100K; no shipped weights: `kernelzoo train kernelnet_movielens_100k_ensemble3`",
        inputs=_ML100K_INPUTS, task="rating_prediction", dataset=_ML100K_DATA, recipe=dict(_ML100K_RECIPE, members=3),
        card="kernelnet_movielens_100k.md", paper=_ML100K_PAPER),
    _grid("kernelnet_mnist_prior", True, "fixed pixel/grid locations",
          "47c6835ad6e14fdbbcb2e96723e7fd97507777cab9001834a543286636a24495", 0.9866, 0.9903),
    _grid("kernelnet_mnist_learned", False, "learned locations",
          "16fdce555e261c56514b6e0a9cd9ed8e401de895533653ba0b7ce99f9f51ab4a", 0.9835, 0.9889),
    Preset(
        name="kernelnet_embedding_mnist", family="kernelnet",
        builder="kernelzoo.zoo.kernelnet.embedding.kernelnet_embedding", config={"objective": "classifier"},
        description="MNIST classifier with a 2D kernelNet embedding layer (Sec. 3.3, Fig. 5b)",
        inputs=_PIXELS, task="classification", dataset=_MNIST, class_names=MNIST_CLASSES,
        recipe=_EMBEDDING_RECIPE, card="kernelnet_embedding_mnist.md", weights="kernelnet_embedding_mnist.keras",
        sha256="c5d58e6d5321e413503d48f05637e1cbee482f2e027dd2ea829f3e1a2dd926bc",
        measured=Figure(0.9703, _MNIST_TEST)),
    Preset(
        name="kernelnet_embedding_mnist_ae", family="kernelnet",
        builder="kernelzoo.zoo.kernelnet.embedding.kernelnet_embedding", config={"objective": "autoencoder"},
        description="MNIST autoencoder with a 2D kernelNet embedding layer (Sec. 3.3, Fig. 5a/6), its kernel "
                    "layer's activations centred over the data (else the embedding collapses: card)",
        inputs=_PIXELS, task="reconstruction", dataset=_MNIST, recipe=_EMBEDDING_AE_RECIPE,
        card="kernelnet_embedding_mnist.md", weights="kernelnet_embedding_mnist_ae.keras",
        sha256="229cb54f94b6cc388b8ffe1e6bcc1c8d27c1738341704c1a7be779aaec870513",
        measured=Figure(0.0064, _MNIST_TEST)),
)
