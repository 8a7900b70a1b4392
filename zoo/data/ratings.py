"""MovieLens ratings as (user, item, rating) triples and item x user matrices.

ML-100K is read from a local copy of the `ml-100k` folder (u.data and the
canonical u1..u5 base/test splits), ML-1M from a local copy of the `ml-1m`
folder (ratings.dat); any `movielens/*-ratings` dataset of TensorFlow
Datasets (e.g. ML-1M) is read through tfds. Ids become 0-based contiguous
indices.
"""
import os

import numpy as np

from kernelzoo.ops.checks import float_in_range, int_in_range
from kernelzoo.zoo.data._paths import ENV_VAR, local_dir


def _read_triples(path, separator=None):
    """`user item rating timestamp` lines (split at whitespace, or at `separator`) -> int arrays (1-based ids)."""
    try:
        with open(path, encoding="ascii") as handle:
            lines = handle if separator is None else (line.replace(separator, ",") for line in handle)
            table = np.loadtxt(lines, dtype=np.int64, ndmin=2, delimiter=None if separator is None else ",")
    except ValueError as err:  # UnicodeDecodeError too
        layout = "tab-separated" if separator is None else f"{separator!r}-separated"
        raise ValueError(f"{path!r} is not a {layout} user/item/rating/timestamp file: {err}")
    if table.shape[1] != 4 or len(table) == 0:
        raise ValueError(f"{path!r}: expected 4 columns (user item rating timestamp), "
                         f"got shape {table.shape}")
    users, items, ratings = table[:, 0], table[:, 1], table[:, 2]
    if users.min() < 1 or items.min() < 1 or ratings.min() < 1 or ratings.max() > 5:
        raise ValueError(f"{path!r}: ids must start at 1 and ratings lie in 1..5")
    return users - 1, items - 1, ratings.astype(np.float32)


def _local_copy(data_dir, name, marker, tfds_name):
    """The folder of the local copy of MovieLens dataset `name` (`local_dir`); ValueError when none is set."""
    folder = local_dir(data_dir, name, marker)
    if folder is None:
        raise ValueError(f"{name} needs a local copy: pass data_dir (a folder with {name}/{marker}) or set "
                         f"{ENV_VAR}; for tfds use load_tfds_ratings({tfds_name!r})")
    return folder


def _ml100k_dir(data_dir):
    return _local_copy(data_dir, "ml-100k", "u.data", "movielens/100k-ratings")


def load_ml100k(data_dir=None):
    """All 100,000 ratings: dict with users, items, ratings, n_users, n_items."""
    folder = _ml100k_dir(data_dir)
    users, items, ratings = _read_triples(os.path.join(folder, "u.data"))
    return {"users": users, "items": items, "ratings": ratings,
            "n_users": int(users.max()) + 1, "n_items": int(items.max()) + 1}


def load_ml100k_fold(fold, data_dir=None):
    """Canonical 80/20 split `fold` (1..5): (train, test) dicts as load_ml100k."""
    fold = int_in_range(fold, "fold", 1, 5)
    folder = _ml100k_dir(data_dir)
    full = load_ml100k(data_dir)
    parts = []
    for suffix in ("base", "test"):
        path = os.path.join(folder, f"u{fold}.{suffix}")
        if not os.path.isfile(path):
            raise ValueError(f"data_dir: missing {path!r} (the canonical u{fold} split)")
        users, items, ratings = _read_triples(path)
        parts.append({"users": users, "items": items, "ratings": ratings,
                      "n_users": full["n_users"], "n_items": full["n_items"]})
    return tuple(parts)


def load_ml1m(data_dir=None):
    """All ratings of a local `ml-1m` folder (ratings.dat, `UserID::MovieID::Rating::Timestamp` lines): dict as
    load_ml100k. Its movie ids have gaps (1..3952, 3,706 rated): ids become indices in id order, one per rated
    movie (`_indexed`), so no item row is empty."""
    folder = _local_copy(data_dir, "ml-1m", "ratings.dat", "movielens/1m-ratings")
    return _indexed(*_read_triples(os.path.join(folder, "ratings.dat"), separator="::"))


def load_ratings(name, data_dir=None):
    """Every rating of MovieLens dataset `name`: "ml-100k" or "ml-1m" (a local copy: `load_ml100k`, `load_ml1m`),
    else a tfds `movielens/*-ratings` name (`load_tfds_ratings`)."""
    local = {"ml-100k": load_ml100k, "ml-1m": load_ml1m}
    return local[name](data_dir) if name in local else load_tfds_ratings(name, data_dir=data_dir)


def random_split(data, test_fraction=0.1, seed=0):
    """Random (train, test) split of the ratings, `test_fraction` held out."""
    test_fraction = float_in_range(test_fraction, "test_fraction", 0.0, 1.0, "()")
    n = len(data["ratings"])
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    out = []
    for idx in (np.sort(order[n_test:]), np.sort(order[:n_test])):
        out.append({"users": data["users"][idx], "items": data["items"][idx],
                    "ratings": data["ratings"][idx],
                    "n_users": data["n_users"], "n_items": data["n_items"]})
    return tuple(out)


def rating_matrix(data):
    """(ratings, mask): float32 item x user matrices, 0 where unobserved."""
    shape = (data["n_items"], data["n_users"])
    matrix = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.float32)
    matrix[data["items"], data["users"]] = data["ratings"]
    mask[data["items"], data["users"]] = 1.0
    return matrix, mask


def triples_from_records(batches):
    """tfds `movielens/*-ratings` batches (dicts of arrays) -> ratings dict.

    Uses the `user_id`, `movie_id` (byte strings) and `user_rating` fields;
    ids are mapped to contiguous 0-based indices in sorted order.
    """
    users, items, ratings = [], [], []
    for batch in batches:
        missing = {"user_id", "movie_id", "user_rating"} - set(batch)
        if missing:
            raise ValueError(f"records lack the field(s) {sorted(missing)}")
        users.append(np.asarray(batch["user_id"]))
        items.append(np.asarray(batch["movie_id"]))
        ratings.append(np.asarray(batch["user_rating"], np.float32))
    if not ratings:
        raise ValueError("records are empty")
    return _indexed(np.concatenate(users), np.concatenate(items), np.concatenate(ratings))


def _indexed(users, items, ratings):
    """Ratings dict with user and item ids mapped to contiguous 0-based indices in sorted order."""
    user_ids, users = np.unique(users, return_inverse=True)
    item_ids, items = np.unique(items, return_inverse=True)
    return {"users": users.astype(np.int64), "items": items.astype(np.int64), "ratings": ratings,
            "n_users": len(user_ids), "n_items": len(item_ids)}


def load_tfds_ratings(name="movielens/1m-ratings", data_dir=None):
    """A TensorFlow Datasets `movielens/*-ratings` dataset as a ratings dict.

    With data_dir (or $KERNELZOO_DATA_DIR) the prepared tfds files are read
    from there and nothing is downloaded; otherwise tfds downloads them.
    """
    if not (isinstance(name, str) and name.startswith("movielens/")
            and name.endswith("-ratings")):
        raise ValueError(f"name must be a tfds 'movielens/*-ratings' dataset, got {name!r}")
    import tensorflow_datasets as tfds

    root = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    try:
        ds = tfds.load(name, split="train", data_dir=root, download=root is None)
    except (AssertionError, FileNotFoundError) as err:
        raise ValueError(f"data_dir={root!r}: no prepared tfds dataset {name!r} there ({err})")
    return triples_from_records(tfds.as_numpy(ds.batch(200_000)))
