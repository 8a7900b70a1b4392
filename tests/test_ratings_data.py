"""MovieLens-1M from a local copy in GroupLens' format (ml-1m/ratings.dat), and the ratings recipe on it."""
import json

import numpy as np
import pytest

from kernelzoo.zoo.data import load_dataset, rating_matrix
from kernelzoo.zoo.data.ratings import load_ml1m
from kernelzoo.zoo.data.synthetic import planted_ratings

MOVIE_ID_STEP = 7  # ML-1M's movie ids run 1..3952 with gaps: item i is movie 1 + 7 i here


def _write_ml1m(root, ratings):
    """An `ml-1m` folder under `root` as GroupLens ships it: ratings.dat (`UserID::MovieID::Rating::Timestamp`,
    1-based ids, sparse movie ids), movies.dat (latin-1 titles) and users.dat."""
    folder = root / "ml-1m"
    folder.mkdir()
    movies = 1 + MOVIE_ID_STEP * ratings["items"]
    (folder / "ratings.dat").write_text("".join(
        f"{u + 1}::{m}::{int(r)}::{978300760 + k}\n" for k, (u, m, r) in
        enumerate(zip(ratings["users"], movies, ratings["ratings"]))), encoding="ascii")
    (folder / "movies.dat").write_bytes("".join(
        f"{m}::Misérables {m} (1995)::Drama\n" for m in np.unique(movies)).encode("latin-1"))
    (folder / "users.dat").write_text("".join(f"{u}::F::1::10::48067\n" for u in np.unique(ratings["users"]) + 1))
    return folder


def test_ml1m_ids_become_dense_indices(tmp_path):
    """Users and movies become 0-based indices in id order, one per rated movie: the gaps in the ids make no empty
    item rows (n_items is 40 rated movies, not the largest id)."""
    planted = planted_ratings(n_items=40, n_users=30)
    folder = _write_ml1m(tmp_path, planted)
    for data_dir in (tmp_path, folder):  # the folder under data_dir, or data_dir itself (as ml-100k)
        data = load_ml1m(data_dir)
        assert (data["n_users"], data["n_items"]) == (30, 40)
        for key in ("users", "items", "ratings"):
            np.testing.assert_array_equal(data[key], planted[key])
        assert rating_matrix(data)[1].sum(axis=1).min() > 0
    for name in ("ml-1m", "ML1M", "movielens-1m"):  # the one entry point routes its names to the ratings reader
        np.testing.assert_array_equal(load_dataset(name, tmp_path)["ratings"], planted["ratings"])


def test_ml1m_missing_or_malformed_names_the_file(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="ratings.dat"):
        load_ml1m(empty)
    monkeypatch.delenv("KERNELZOO_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="movielens/1m-ratings"):  # no local copy: tfds has ML-1M
        load_ml1m()
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    for text in ("1::2::3\n", "1\t2\t3\t4\n", "1::2::9::0\n"):
        (folder / "ratings.dat").write_text(text)
        with pytest.raises(ValueError, match="ratings.dat"):
            load_ml1m(tmp_path)


def test_train_cli_reads_a_local_ml1m_copy_with_a_random_split(tmp_path, capsys):
    from kernelzoo import cli

    planted = planted_ratings(n_items=40, n_users=30)
    _write_ml1m(tmp_path, planted)
    out = tmp_path / "run"

    def run(*argv):
        return cli.main(["train", "kernelnet_movielens_100k", "hidden=(4,)", "--dataset", "ml-1m", "--data-dir",
                         str(tmp_path), "--epochs", "1", "--iterations-per-epoch", "2", "--quiet", "--no-tensorboard",
                         *argv])

    assert run("--split", "random", "--out", str(out)) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["data"], config["options"]["test_fraction"]) == ("ml-1m", "ml-1m random", 0.1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == round(0.1 * len(planted["ratings"])) and 0 < metrics["test_rmse"] < 4
    capsys.readouterr()
    for argv in (("--split", "u2"), ()):  # the preset's split is u1
        assert run(*argv, "--out", str(tmp_path / "other")) == 2
        assert "ML-100K's canonical folds: 'ml-1m' has none; use --split random" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
