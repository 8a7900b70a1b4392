"""Data loaders on small generated files in each format, and on ../shared/data."""
import gzip
import os

import numpy as np
import pytest

from kernelzoo.zoo.data import (load_ml100k, load_ml100k_fold, load_mnist, random_split,
                                rating_matrix)
from kernelzoo.zoo.data.ratings import triples_from_records

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
needs_shared = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "ml-100k")) or
                                  not os.path.isdir(os.path.join(SHARED, "mnist")),
                                  reason="../shared/data absent")


def _write_ratings(path, rows):
    with open(path, "w") as handle:
        for u, i, r in rows:
            handle.write(f"{u}\t{i}\t{r}\t881250949\n")


@pytest.fixture
def ml_dir(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = [(u, i, int(rng.integers(1, 6))) for u in range(1, 6) for i in range(1, 9)
            if (u + i) % 3]
    _write_ratings(folder / "u.data", rows)
    for fold in range(1, 6):
        test = rows[fold - 1::5]
        _write_ratings(folder / f"u{fold}.test", test)
        _write_ratings(folder / f"u{fold}.base", [r for r in rows if r not in test])
    return tmp_path, rows


def test_ml100k_local_format(ml_dir):
    root, rows = ml_dir
    data = load_ml100k(str(root))
    assert (data["n_users"], data["n_items"]) == (5, 8)
    assert len(data["ratings"]) == len(rows)
    assert data["users"].min() == 0 and data["items"].min() == 0
    train, test = load_ml100k_fold(2, str(root / "ml-100k"))   # the folder itself works too
    assert len(train["ratings"]) + len(test["ratings"]) == len(rows)
    matrix, mask = rating_matrix(train)
    assert matrix.shape == (8, 5) and mask.sum() == len(train["ratings"])
    assert np.all(matrix[mask == 0] == 0) and np.all(matrix[mask == 1] >= 1)


def test_data_dir_from_environment(ml_dir, monkeypatch):
    root, rows = ml_dir
    monkeypatch.setenv("KERNELZOO_DATA_DIR", str(root))
    assert len(load_ml100k()["ratings"]) == len(rows)


def test_random_split_is_disjoint_and_seeded(ml_dir):
    data = load_ml100k(str(ml_dir[0]))
    train, test = random_split(data, 0.25, seed=3)
    again, _ = random_split(data, 0.25, seed=3)
    assert len(test["ratings"]) == round(0.25 * len(data["ratings"]))
    pairs = lambda d: set(zip(d["users"].tolist(), d["items"].tolist()))
    assert not pairs(train) & pairs(test)
    assert pairs(train) | pairs(test) == pairs(data)
    assert pairs(again) == pairs(train)


def test_tfds_ratings_records_format():
    batches = [{"user_id": np.array([b"10", b"7", b"10"]), "movie_id": np.array([b"3", b"3", b"9"]),
                "user_rating": np.array([4.0, 2.0, 5.0], np.float32), "timestamp": np.zeros(3)},
               {"user_id": np.array([b"2"]), "movie_id": np.array([b"9"]),
                "user_rating": np.array([1.0], np.float32)}]
    data = triples_from_records(batches)
    assert (data["n_users"], data["n_items"]) == (3, 2)
    matrix, mask = rating_matrix(data)
    assert mask.sum() == 4 and matrix.sum() == 12.0
    with pytest.raises(ValueError, match="movie_id"):
        triples_from_records([{"user_id": [b"1"], "user_rating": [3.0]}])


def _idx(path, magic, arr):
    dims = np.array([magic, *arr.shape], ">i4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(dims + arr.astype(np.uint8).tobytes())


def test_mnist_idx_and_npz_formats(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (6, 28, 28)), "y_train": rng.integers(0, 10, 6),
              "x_test": rng.integers(0, 256, (3, 28, 28)), "y_test": rng.integers(0, 10, 3)}
    idx = tmp_path / "idx" / "mnist"
    idx.mkdir(parents=True)
    names = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
    for key, name in names.items():
        _idx(idx / name, 2051 if key[0] == "x" else 2049, arrays[key])
    (xt, yt), (xs, ys) = load_mnist(str(tmp_path / "idx"))
    np.testing.assert_array_equal(xt, arrays["x_train"])
    np.testing.assert_array_equal(ys, arrays["y_test"])
    np.savez(tmp_path / "mnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    (xt2, _), (_, ys2) = load_mnist(str(tmp_path))
    np.testing.assert_array_equal(xt2, arrays["x_train"])
    np.testing.assert_array_equal(ys2, arrays["y_test"])


def test_missing_or_malformed_data_names_the_path(tmp_path):
    with pytest.raises(ValueError, match="u.data"):
        load_ml100k(str(tmp_path))
    with pytest.raises(ValueError, match="t10k-images"):
        load_mnist(str(tmp_path))
    bad = tmp_path / "ml-100k"
    bad.mkdir()
    (bad / "u.data").write_text("1\t2\n")
    with pytest.raises(ValueError, match="u.data"):
        load_ml100k(str(tmp_path))
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        _idx(mnist / name, 1234, np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="magic"):
        load_mnist(str(tmp_path))


@pytest.mark.parametrize("call, argument", [
    (lambda: load_ml100k_fold(6, "."), "fold"),
    (lambda: random_split({"ratings": np.zeros(3)}, 1.5), "test_fraction"),
    (lambda: load_ml100k(data_dir=3), "data_dir"),
    (lambda: load_mnist(data_dir=3), "data_dir"),
])
def test_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_tfds_can_prepare_datasets_with_the_installed_dependencies():
    """tfds reaches its builders' code path (checksums) before any download: it imports importlib_resources,
    which tensorflow-datasets does not declare (setup.cfg)."""
    import tensorflow_datasets as tfds
    assert tfds.builder("mnist").url_infos


def test_tfds_name_is_checked():
    from kernelzoo.zoo.data import load_tfds_ratings
    with pytest.raises(ValueError, match="name"):
        load_tfds_ratings("mnist")


@needs_shared
@pytest.mark.data
def test_shared_data_matches_its_readme():
    data = load_ml100k(SHARED)
    assert (len(data["ratings"]), data["n_users"], data["n_items"]) == (100_000, 943, 1682)
    assert np.bincount(data["ratings"].astype(int))[1:].tolist() == [6110, 11370, 27145,
                                                                     34174, 21201]
    train, test = load_ml100k_fold(1, SHARED)
    assert (len(train["ratings"]), len(test["ratings"])) == (80_000, 20_000)
    (xt, yt), (xs, ys) = load_mnist(SHARED)
    assert xt.shape == (60_000, 28, 28) and xs.shape == (10_000, 28, 28)
    assert np.bincount(ys).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_missing_mnist_names_the_environment_variable_that_set_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="^KERNELZOO_DATA_DIR="):
        load_mnist()
