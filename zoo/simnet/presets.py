"""Registry entries of the SimNets zoo folder (plain data; read by kernelzoo.zoo.registry).

Keys the registry needs: description, builder, config, inputs; optional weights
(file in this folder), sha256, card (markdown in this folder), compile. The
extra keys (dataset, class_names, preprocessing, recipe, paper) drive
`kernelzoo train` / `kernelzoo eval`. Weights are None until a training session
fills them in (see each card).
"""
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_COMPILE = {"loss": "kernelzoo.zoo.simnet.models.LOSS", "metrics": ["accuracy"]}
_INPUTS = "float32 (N, 32, 32, 3) RGB pixels in 0-255 (uint8 values; preprocessing is inside the model)"
# Paper 000 Sec. 6: SGD, batch 64, momentum 0.9, lr 0.01 / 10 after 50 of 100 epochs; weight decay 0 on
# templates, one value on similarity weights and offsets chosen on 5k held-out training images.
_SIMNET_RECIPE = {"epochs": 100, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "lr_drop_every": 50,
                  "weight_decay": 0.0, "weight_decay_grid": [0.0, 1e-5, 1e-4, 1e-3], "holdout": 5000,
                  "unsupervised_init": True}
# Paper 000 Sec. 6.1 (Caffe): batch 100, momentum 0.95, lr 1e-4 / 10 every 45 epochs, 150 epochs;
# global weight decay and dropout chosen by cross-validation.
_CONVNET_RECIPE = {"epochs": 150, "batch_size": 100, "lr": 1e-4, "momentum": 0.95, "lr_drop_every": 45,
                   "weight_decay": 0.0, "weight_decay_grid": [0.0, 1e-4, 1e-3], "holdout": 5000,
                   "unsupervised_init": False}
# Coates et al.: fixed k-means templates; the linear classifier trained with the SimNet's SGD recipe.
_COATES_RECIPE = dict(_SIMNET_RECIPE, weight_decay_grid=[0.0, 1e-4, 1e-3, 1e-2])
_PATCH_PREPROCESSING = ("inside the model: 6x6x3 patches, each brightness/contrast-normalised "
                        "((p - mean) / sqrt(var + 10)) and ZCA-whitened (eps 0.1, fitted on training patches)")


# What the shipped weights ran on 2 CPU cores (one session): the paper's optimiser and lr schedule
# shortened to 10 epochs (lr / 10 after 5), weight decay 0 (no grid search: no compute for it).
_SHIPPED_RECIPE = dict(_SIMNET_RECIPE, epochs=10, lr_drop_every=5, weight_decay_grid=[0.0])


def _simnet(n, p, weighted, paper):
    kind = ("weighted " if weighted else "") + f"l{p}"
    return {
        "description": f"SimNet patch labeling, {kind} similarity, {n} templates, CIFAR-10 (paper 000 Fig. 3a)",
        "builder": "kernelzoo.zoo.simnet.models.simnet_patch_labeling",
        "config": {"n": n, "p": p, "weighted": weighted, "xi1": 1.0, "xi2": 0.0},
        "inputs": _INPUTS,
        "preprocessing": _PATCH_PREPROCESSING,
        "dataset": "cifar10",
        "class_names": CIFAR10_CLASSES,
        "recipe": dict(_SIMNET_RECIPE),
        "paper": paper,
        "compile": _COMPILE,
        "weights": None,
        "sha256": None,
        "card": "simnet_patch_labeling.md",
    }


def _shipped_simnet(n, p, paper, weights, sha256, accuracy):
    """A trained patch-labeling SimNet: the paper's net with the sum over positions (see its card)."""
    entry = _simnet(n, p, True, paper)
    entry["description"] = (f"SimNet patch labeling, weighted l{p}, {n} templates, pretrained on CIFAR-10 "
                            "(JPEG q75 copy) (paper 000 Fig. 3a)")
    entry["config"] = dict(entry["config"], position_pooling="sum")
    entry.update(recipe=dict(_SHIPPED_RECIPE), weights=weights, sha256=sha256, card="simnet_cifar10.md",
                 metrics={"key": "test_accuracy", "value": accuracy})
    return entry


PRESETS = {
    "simnet_cifar10_l1": _shipped_simnet(100, 1, {"accuracy": 0.768, "where": "Sec. 6.1, Fig. 4 (n = 400)"},
                                         "simnet_cifar10_l1.keras",
                                         "d94d1fcec64dd1b2232f835a4bc8b7ab97a8d996493c44f48a2d6dfae49b31e9", 0.5971),
    "simnet_cifar10_l2": _shipped_simnet(100, 2, {"accuracy": 0.771, "where": "Sec. 6.1, Fig. 4 (n = 400)"},
                                         "simnet_cifar10_l2.keras",
                                         "7ba055b6908b0383fe1555a26b4a739d36d6b6108712c92d6226234d07555d4c", 0.5968),
    "simnet_cifar10_wl1_n400": _simnet(400, 1, True, {"accuracy": 0.768, "where": "Sec. 6.1, Fig. 4"}),
    "simnet_cifar10_wl2_n400": _simnet(400, 2, True, {"accuracy": 0.771, "where": "Sec. 6.1, Fig. 4"}),
    "simnet_cifar10_wl1_n200": _simnet(200, 1, True, {"accuracy": 0.760, "where": "Sec. 6.3"}),
    "convnet_cifar10": {
        "description": "ConvNet baseline (conv 6x6 + ReLU, quadrant max pool, dense), 400 filters, pretrained on "
                       "CIFAR-10 (JPEG q75 copy) (paper 000 Fig. 3b)",
        "builder": "kernelzoo.zoo.simnet.models.convnet_baseline",
        "config": {"n": 400, "dropout": 0.5},
        "inputs": _INPUTS,
        "preprocessing": "inside the model: per-image brightness/contrast normalisation",
        "dataset": "cifar10",
        "class_names": CIFAR10_CLASSES,
        # The SimNets' shipped recipe (same optimiser and budget, for a like-for-like comparison); the
        # paper's Caffe recipe (lr 1e-4, 150 epochs) is the convnet_cifar10_n6400 entry's.
        "recipe": dict(_SHIPPED_RECIPE, unsupervised_init=False),
        "paper": {"accuracy": 0.762, "where": "Sec. 6.1 (best ConvNet, 6400 templates)"},
        "compile": _COMPILE,
        "weights": "convnet_cifar10.keras",
        "sha256": "f2945c009d7173937896fcda690e619c9ec8ac1a353726503c11997648e8c3fc",
        "card": "convnet_cifar10.md",
        "metrics": {"key": "test_accuracy", "value": 0.6210},
    },
    "convnet_cifar10_n6400": {
        "description": "ConvNet baseline (conv 6x6 + ReLU, quadrant max pool, dense), 6400 filters, CIFAR-10 "
                       "(paper 000 Fig. 3b)",
        "builder": "kernelzoo.zoo.simnet.models.convnet_baseline",
        "config": {"n": 6400, "dropout": 0.5},
        "inputs": _INPUTS,
        "preprocessing": "inside the model: per-image brightness/contrast normalisation",
        "dataset": "cifar10",
        "class_names": CIFAR10_CLASSES,
        "recipe": dict(_CONVNET_RECIPE),
        "paper": {"accuracy": 0.762, "where": "Sec. 6.1 (best ConvNet, 6400 templates)"},
        "compile": _COMPILE,
        "weights": None,
        "sha256": None,
        "card": "convnet_baseline.md",
    },
    "coates_cifar10_n1600": {
        "description": "Coates et al. single-layer network (k-means triangle coding, quadrant sum pool, linear), "
                       "1600 centroids, CIFAR-10 (paper 000 Fig. 3c)",
        "builder": "kernelzoo.zoo.simnet.models.coates_baseline",
        "config": {"n": 1600},
        "inputs": _INPUTS,
        "preprocessing": _PATCH_PREPROCESSING,
        "dataset": "cifar10",
        "class_names": CIFAR10_CLASSES,
        "recipe": dict(_COATES_RECIPE),
        "paper": {"accuracy": 0.773, "where": "Sec. 6.2 (reproduction of Coates et al., 1600 templates)"},
        "compile": _COMPILE,
        "weights": None,
        "sha256": None,
        "card": "coates_baseline.md",
    },
}
