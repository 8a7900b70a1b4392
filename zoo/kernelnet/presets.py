"""Registry entries of the kernelNet models (Muller 2018), as data.

`sha256` pins each shipped weight file; `metrics` are the figures measured by
the command in the card next to the weights (never typed in by hand: the
tests recompute them from the data).
"""
PRESETS = {
    "kernelnet_movielens_100k": {
        "description": "item-based sparse-FC kernelNet autoencoder, ML-100K (Sec. 3.5)",
        "builder": "kernelzoo.zoo.kernelnet.movielens.kernelnet_movielens",
        "config": {"n_users": 943, "variant": "sparse_fc"},
        "inputs": "one item's ratings by the 943 ML-100K users, float32 (943,), 0 = unrated; "
                  "outputs raw ratings: clip to [1, 5] (movielens.predict_ratings)",
        "weights": "kernelnet_movielens_100k.keras",
        "sha256": "23cc3150e5aee9aa548673d26ed0036870aa6edc0a6cd277efe935a42bf8a6c2",
        "evaluation": {"data": "ml100k", "fold": 1},
        "metrics": {"key": "test_rmse", "value": 0.9071},
        "card": "kernelnet_movielens_100k.md",
        "compile": {"optimizer": "adam", "loss": "kernelzoo.zoo.kernelnet.movielens.masked_rating_loss"},
    },
    "kernelnet_mnist_prior": {
        "description": "MNIST 2D-RBF grid kernelNet, fixed pixel/grid locations (Fig. 4, Table 1)",
        "builder": "kernelzoo.zoo.kernelnet.mnist.kernelnet_mnist",
        "config": {"prior": True},
        "inputs": "28x28 grayscale digits scaled to [0, 1], float32 (28, 28); 10-way softmax",
        "weights": "kernelnet_mnist_prior.keras",
        "sha256": "cabe80e7832aef2e8a0be49d0884d55c64b398c0f0d6e620af34f4a42bdda17a",
        "evaluation": {"data": "mnist"},
        "metrics": {"key": "test_accuracy", "value": 0.9823},
        "card": "kernelnet_mnist.md",
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                    "metrics": ["accuracy"]},
    },
    "kernelnet_mnist_learned": {
        "description": "MNIST 2D-RBF grid kernelNet, learned locations (Fig. 4, Table 1)",
        "builder": "kernelzoo.zoo.kernelnet.mnist.kernelnet_mnist",
        "config": {"prior": False},
        "inputs": "28x28 grayscale digits scaled to [0, 1], float32 (28, 28); 10-way softmax",
        "weights": "kernelnet_mnist_learned.keras",
        "sha256": "4a74b29a8c6ad211158d99b0a8a4b0aff68e236882fe84c75e3f958f6b9c36a4",
        "evaluation": {"data": "mnist"},
        "metrics": {"key": "test_accuracy", "value": 0.9826},
        "card": "kernelnet_mnist.md",
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                    "metrics": ["accuracy"]},
    },
    "kernelnet_embedding_mnist": {
        "description": "MNIST classifier with a 2D kernelNet embedding layer (Sec. 3.3, Fig. 5b)",
        "builder": "kernelzoo.zoo.kernelnet.embedding.kernelnet_embedding",
        "config": {"objective": "classifier"},
        "inputs": "28x28 grayscale digits scaled to [0, 1], float32 (28, 28); 10-way softmax",
        "weights": "kernelnet_embedding_mnist.keras",
        "sha256": "7fdf624aa1f5d24eb2834a017d1282a9a94c454361369bc8d152b42a9529c12d",
        "evaluation": {"data": "mnist"},
        "metrics": {"key": "test_accuracy", "value": 0.9703},
        "card": "kernelnet_embedding_mnist.md",
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                    "metrics": ["accuracy"]},
    },
    "kernelnet_embedding_mnist_ae": {
        "description": "MNIST autoencoder with a 2D kernelNet embedding layer (Sec. 3.3, "
                       "Fig. 5a/6); no shipped weights: `kernelzoo viz embedding ... --train`",
        "builder": "kernelzoo.zoo.kernelnet.embedding.kernelnet_embedding",
        "config": {"objective": "autoencoder"},
        "inputs": "28x28 grayscale digits scaled to [0, 1], float32 (28, 28); "
                  "reconstructs the image (per-pixel sigmoid)",
        "weights": None,
        "sha256": None,
        "card": "kernelnet_embedding_mnist.md",
    },
}
