"""Small generated datasets that a model can learn in seconds (the families' contract tests).

`stripes`: three image classes (horizontal stripes, vertical stripes, a flat colour) plus noise;
`planted_ratings`: ratings of a planted low-rank item x user matrix, half of them observed;
`write_ml100k`: such ratings as a local `ml-100k` folder (u.data and the u1..u5 folds).
"""
import os

import numpy as np

from kernelzoo.ops.checks import positive_int


def stripes(count, size=10, channels=3, seed=0):
    """(uint8 images (count, size, size, channels), labels (count,)): class = index % 3."""
    count, size, channels = (positive_int(v, n) for v, n in ((count, "count"), (size, "size"),
                                                              (channels, "channels")))
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    grid = np.arange(size)
    patterns = [np.tile((grid[:, None] % 2) * 1.0, (1, size)), np.tile((grid[None, :] % 2) * 1.0, (size, 1)),
                np.full((size, size), 0.5)]
    colour = np.array([200.0, 150.0, 100.0])[:channels] if channels <= 3 else np.full(channels, 180.0)
    images = np.stack([patterns[label] for label in labels])[..., None] * colour
    images = images + rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def planted_ratings(n_items=120, n_users=80, rank=2, seed=0):
    """A ratings dict (users, items, ratings 1-5, n_users, n_items) of a planted rank-`rank` matrix."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_items, rank)) @ rng.normal(size=(rank, n_users))
    full = np.clip(np.round(3 + 1.2 * scores / scores.std()), 1, 5).astype(np.float32)
    items, users = np.nonzero(rng.random(full.shape) < 0.5)
    return {"items": items, "users": users, "ratings": full[items, users], "n_items": n_items, "n_users": n_users}


def write_ml100k(root, ratings=None, seed=0):
    """An `ml-100k` folder under `root` in MovieLens' format (tab-separated `user item rating timestamp`,
    1-based ids): u.data with `ratings` (default `planted_ratings()`) and five folds u1..u5 whose .test
    files partition a seeded permutation of the ratings (fold k: every fifth from the (k-1)-th) and whose
    .base files hold the rest. Returns the ratings dict."""
    ratings = planted_ratings() if ratings is None else ratings
    folder = os.path.join(os.fspath(root), "ml-100k")
    os.makedirs(folder, exist_ok=True)
    lines = np.array([f"{u + 1}\t{i + 1}\t{int(r)}\t0\n"
                      for u, i, r in zip(ratings["users"], ratings["items"], ratings["ratings"])])
    order = np.random.default_rng(seed).permutation(len(lines))

    def write(name, rows):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            handle.write("".join(lines[np.sort(rows)]))

    write("u.data", order)
    for fold in range(1, 6):
        test = order[fold - 1::5]
        write(f"u{fold}.test", test)
        write(f"u{fold}.base", np.setdiff1d(order, test))
    return ratings
