"""The Fig. 3 sweep (kernelzoo.zoo.kernelnet.dimensionality) and `kernelzoo viz dimensionality`."""
import argparse
import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA
from kernelzoo.layers.kernels import kernel_matrix
from kernelzoo.zoo.data.synthetic import stripes
from kernelzoo.zoo.kernelnet import dimensionality as dm, viz
from kernelzoo.zoo.recipe import Data

TINY = {"kernels": ("dot", "rbf"), "dims": (1, 2), "repeats": 2, "lrs": (0.01,), "l2s": (0.0,), "hidden": 8,
        "epochs": 1, "batch_size": 16, "verbose": 0}


def _stripes():
    images = [stripes(count, size=8, channels=1, seed=seed) for count, seed in ((48, 0), (24, 1), (24, 2))]
    return Data(train=images[0], val=images[1], test=images[2], source="stripes 8x8")


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_embedding_dimension_is_the_rank_of_the_kernel_matrix(dim):
    rng = np.random.default_rng(dim)
    u, v = rng.normal(size=(40, dim)), rng.normal(size=(40, dim))
    for kernel in ("dot", "poly"):
        rank = np.linalg.matrix_rank(np.asarray(kernel_matrix(u, v, kernel)))
        assert dm.embedding_dimension(kernel, dim) == rank
    assert dm.embedding_dimension("poly", dim) == (dim + 1) * (dim + 2) // 2
    assert dm.embedding_dimension("rbf", dim) == float("inf")


def test_sweep_writes_json_and_png_and_resumes_only_missing_runs(tmp_path, monkeypatch):
    data = _stripes()
    results = dm.sweep(data, tmp_path, **TINY)
    saved = json.loads((tmp_path / dm.RESULTS_FILE).read_text())
    assert len(saved["runs"]) == 2 * 2 * 2 and saved["summary"] == results["summary"]
    assert saved["setup"]["train"] == 48 and saved["setup"]["holdout"] == 24 and saved["setup"]["hidden"] == 8
    rows = {(row["kernel"], row["dim"]): row for row in results["summary"]}
    assert set(rows) == {("dot", 1), ("dot", 2), ("rbf", 1), ("rbf", 2)}
    assert rows["dot", 2]["embedding_dim"] == 2 and rows["rbf", 1]["embedding_dim"] is None
    assert all(0 <= row["test_accuracy"] <= 1 and row["test_stderr"] >= 0 for row in rows.values())
    png = dm.plot(results, str(tmp_path / dm.FIGURE_FILE))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    trained = []

    def fake(data, kernel, dim, lr, l2, seed, *rest):
        trained.append((kernel, dim, l2, seed))
        return {"val_accuracy": 0.5, "test_accuracy": 0.5}

    monkeypatch.setattr(dm, "train_cell", fake)
    assert dm.sweep(data, tmp_path, **TINY)["summary"] == results["summary"] and trained == []
    dm.sweep(data, tmp_path, **dict(TINY, dims=(1, 2, 4), l2s=(0.0, 1e-3)))
    assert sorted(trained) == sorted([(k, d, l2, s) for k in ("dot", "rbf") for d in (1, 2, 4) for l2 in (0.0, 1e-3)
                                      for s in (0, 1) if d == 4 or l2 == 1e-3])
    with pytest.raises(ValueError, match="out_dir.*hidden"):
        dm.sweep(data, tmp_path, **dict(TINY, hidden=16))


def test_summary_picks_the_best_mean_held_out_accuracy_and_gives_its_standard_error():
    """lr 0.01 has the higher mean held-out accuracy (0.8 against 0.6) though lr 0.1 has the best single run: the
    row is lr 0.01's, test accuracies 0.7, 0.8, 0.9: mean 0.8, standard error s / sqrt(3) with s = 0.1 (ddof 1)."""
    scores = {0.1: ([0.5, 0.4, 0.9], [0.9, 0.9, 0.9]), 0.01: ([0.8, 0.8, 0.8], [0.7, 0.8, 0.9])}
    runs = {dm.run_key("dot", 2, lr, 0.0, seed): {"val_accuracy": val[seed], "test_accuracy": test[seed]}
            for lr, (val, test) in scores.items() for seed in range(3)}
    (row,) = dm.summarize(runs, ("dot",), (2,), (0.1, 0.01), (0.0,), 3)
    assert row["lr"] == 0.01 and row["embedding_dim"] == 2
    assert row["val_accuracy"] == pytest.approx(0.8) and row["test_accuracy"] == pytest.approx(0.8)
    assert row["test_stderr"] == pytest.approx(0.1 / np.sqrt(3)) and row["val_stderr"] == pytest.approx(0.0)


@pytest.mark.parametrize("change, name", [({"kernels": ("tanh",)}, "kernels"), ({"kernels": ()}, "kernels"),
                                          ({"dims": (2, 0)}, "dims"), ({"dims": ()}, "dims"),
                                          ({"repeats": 0}, "repeats"), ({"lrs": (0.0,)}, "lrs"),
                                          ({"l2s": (-1.0,)}, "l2s"), ({"hidden": 0}, "hidden"),
                                          ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size")])
def test_sweep_names_bad_arguments(tmp_path, change, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        dm.sweep(_stripes(), tmp_path, **dict(TINY, **change))
    assert not os.path.exists(tmp_path / dm.RESULTS_FILE)


def test_builder_and_data_name_bad_arguments():
    with pytest.raises(ValueError, match="`kernel`"):
        dm.kernelnet_fc("tanh", 2)
    with pytest.raises(ValueError, match="`dim`"):
        dm.embedding_dimension("dot", 0)
    with pytest.raises(ValueError, match="`l2`"):
        dm.kernelnet_fc("rbf", 2, l2=-1.0)
    with pytest.raises(ValueError, match="`train_size`"):
        dm.mnist_data("/nonexistent", train_size=0)


@pytest.mark.data
def test_viz_dimensionality_on_mnist(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("../shared/data absent")
    parser = argparse.ArgumentParser()
    viz.add_arguments(parser, "viz")
    args = parser.parse_args(["dimensionality", "--data-dir", SHARED_DATA, "--out", str(tmp_path), "--kernels", "poly",
                              "--dims", "2", "--repeats", "2", "--lrs", "0.01", "--l2s", "0", "--train-size", "300",
                              "--holdout", "100", "--hidden", "16", "--epochs", "1", "--quiet"])
    assert viz.run(args, "viz") == 0
    setup = json.loads((tmp_path / dm.RESULTS_FILE).read_text())["setup"]
    assert setup["data"] == "MNIST" and setup["train"] == 300 and setup["test"] == 10000
    assert (tmp_path / dm.FIGURE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="holdout"):
        viz.run(parser.parse_args(["dimensionality", "--data-dir", SHARED_DATA, "--holdout", "60000"]), "viz")
